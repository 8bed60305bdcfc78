"""The contamination report on a small pool with planted duplicates of evaluation items."""

from __future__ import annotations

import json
from math import comb

import pandas as pd
import pytest

from selbench.cache import ArtifactCache
from selbench.contamination import (EvalItem, build_report, format_report, ngrams, overlap_column,
                                    selection_stats)
from selbench.data import Example, Pool, example_id
from selbench.signals import SignalCache

LONG_ITEM = ("Write a short story about a lighthouse keeper who discovers that the light has been guiding ships "
             "to an island that does not appear on any map.")
SHORT_ITEM = "Name three primary colors."
ITEMS = [EvalItem("mt_bench/81", LONG_ITEM), EvalItem("alpaca_eval/0", SHORT_ITEM),
         EvalItem("gsm8k_local/3", "Tom has 3 apples and buys 5 more. How many apples does he have now?")]


def _ex(instruction: str, output: str = "An answer.", input: str = "") -> Example:
    messages = ({"role": "user", "content": f"{instruction}\n\n{input}" if input else instruction},
                {"role": "assistant", "content": output})
    return Example(id=example_id(messages), messages=messages, instruction=instruction, input=input, output=output)


@pytest.fixture(scope="module")
def pool():
    clean = [_ex(f"Explain topic number {i} about {t} in two sentences.", f"Topic {i} on {t} is simple.")
             for i, t in enumerate(["rivers", "owls", "bread", "chess", "tea", "bridges", "rain", "cats"] * 5)]
    planted = [
        _ex("Please help: " + LONG_ITEM.upper() + " Keep it under 300 words."),  # 13-gram (case, punctuation)
        _ex("Name 3 primary colours.", "Red, yellow and blue."),  # paraphrase: too short for a 13-gram
        _ex("Answer the question.", "Sure.", input="Tom has 3 apples and buys 5 more. How many apples does he "
                                                   "have now?"),
    ]
    return Pool(clean + planted, name="planted"), [e.id for e in planted], [e.id for e in clean]


@pytest.fixture(scope="module")
def report(pool, tmp_path_factory):
    p, planted, clean = pool
    cache = ArtifactCache(tmp_path_factory.mktemp("cache"))
    selections = [
        {"record": "r/picky", "method": "picky", "budget": 5, "seed": 0, "ids": planted + clean[:2]},
        {"record": "r/clean", "method": "clean", "budget": 5, "seed": 0, "ids": clean[:5]},
    ]
    return build_report(p, ITEMS, selections, cache, SignalCache(cache, None)), cache


def test_ngram_normalisation_is_lm_eval_janitors():
    a = ngrams("The Quick, brown fox -- jumps over the lazy dog near the quiet old river bank.")
    b = ngrams("the quick brown fox  jumps over the lazy dog near the quiet old river bank")
    assert a == b and len(a) == 3  # 15 words (the dashes vanish) -> three 13-grams
    assert ngrams("too short to have one") == set()


def test_planted_duplicates_found_and_counted(pool, report):
    (_, planted, _), (rep, _) = pool, report
    overlaps = rep["pool_overlaps"]
    assert set(overlaps["ngram"]) == {planted[0], planted[2]}
    assert overlaps["ngram"][planted[0]] == ["mt_bench/81"]
    assert overlaps["ngram"][planted[2]] == ["gsm8k_local/3"] or "gsm8k_local/3" in overlaps["embedding"].get(
        planted[2], {})
    assert "alpaca_eval/0" in overlaps["embedding"][planted[1]]  # the paraphrase, by MiniLM
    assert rep["pool"]["overlapping"] == 3 and rep["pool"]["size"] == 43
    assert rep["pool"]["base_rate"] == pytest.approx(3 / 43)
    assert rep["eval_sets"]["mt_bench"] == {"items": 1, "pool_examples_overlapping": 1}
    assert rep["eval_sets"]["alpaca_eval"] == {"items": 1, "pool_examples_overlapping": 1}


def test_selection_that_picked_them_is_flagged(report):
    rep, _ = report
    picky, clean = rep["selections"]
    assert (picky["overlapping"], picky["size"], picky["share"]) == (3, 5, 0.6)
    assert picky["flagged"] and picky["p_value"] < 0.01
    assert picky["items"] == ["alpaca_eval/0", "gsm8k_local/3", "mt_bench/81"]
    assert (clean["overlapping"], clean["flagged"], clean["p_value"]) == (0, False, 1.0)
    text = format_report(rep)
    assert "picky / 5 / 0" in text and "mt_bench/81" in text


def test_hypergeometric_test_against_base_rate():
    flagged = {f"e{i}": ["x/1"] for i in range(10)}  # 10 of 100 overlap
    at_rate = selection_stats([f"e{i}" for i in range(2)] + [f"c{i}" for i in range(18)], 100, flagged)
    assert at_rate["share"] == 0.1 and not at_rate["flagged"]  # 2 of 20 = the base rate
    above = selection_stats([f"e{i}" for i in range(6)] + [f"c{i}" for i in range(14)], 100, flagged)
    exact = sum(comb(10, k) * comb(90, 20 - k) for k in range(6, 11)) / comb(100, 20)  # P(X >= 6)
    assert above["flagged"] and above["p_value"] == pytest.approx(exact, rel=1e-9)


def test_pool_overlap_is_cached(pool, report):
    (p, _, _), (rep, cache) = pool, report
    files = list((cache.root / "contamination").glob("*.json"))
    assert len(files) == 1
    again = build_report(p, ITEMS, [], cache, signals=None)  # no signals needed: the overlap comes from the cache
    assert again["pool_overlaps"] == rep["pool_overlaps"]


def test_leaderboard_column(report, tmp_path):
    rep, _ = report
    (tmp_path / "contamination.json").write_text(json.dumps(rep))
    agg = pd.DataFrame([{"method": "picky", "budget": 5}, {"method": "clean", "budget": 5},
                        {"method": "base", "budget": None}])
    col = overlap_column(agg, tmp_path)["eval overlap"].tolist()
    assert col == ["60.0% *", "0.0%", "–"]
    assert overlap_column(agg, tmp_path / "none").equals(agg)
