"""LLM-rated and reward-model methods: alpagasus, deita, instag, reward, mods.

Pure parts (prompt building, parsing malformed judge output, DEITA's expected score, the Repr Filter, InsTag's
normalisation and sampling) on hand-made inputs with known answers; every method end to end on the tiny random
llama against the loopback fake judge (tests/fake_judge.py): exact budget, deterministic, costs recorded, and a
second run asks the judge nothing (every judge answer is cached).
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from types import SimpleNamespace

import numpy as np
import pytest
from conftest import alpaca_rows
from fake_judge import FakeJudge, alpagasus_score, deita_top_logprobs, instag_tags
from selbench.cache import ArtifactCache
from selbench.data import Pool, normalise_row
from selbench.judge.client import JudgeClient
from selbench.judge.verdicts import parse_string_list
from selbench.leaderboard import selection_judge_tokens
from selbench.methods.alpagasus import load_prompt, parse_score, rank_by_score, rating_messages
from selbench.methods.deita import DIGITS, prompt_messages, repr_filter, turns
from selbench.methods.instag import complexity_first_diverse, normalise_tags, parse_tags, rule_normalise
from selbench.models import BaseModelHandle, ResolvedModel
from selbench.protocol import JudgeSpec
from selbench.rating import digit_logprobs, expected_score, fit_prompt, resolve_scorer
from selbench.registry import get_method, load_all
from selbench.select import SelectionContext, cached_selection, selection_inputs
from selbench.signals import SignalCache

MAX_LEN = 128
METHODS = ("alpagasus", "deita", "instag", "reward")


# ------------------------------------------------------------------------------------------------ AlpaGasus
@pytest.mark.parametrize("text, score", [
    ("4.5\nAccurate.", 4.5), ("5", 5.0), ("  3 \n", 3.0), ("Score: 4\nok", 4.0), ("**4.5**\nfine", 4.5),
    ("4/5\nmostly", 4.0), ("Rating: 2.5 out of 5", 2.5), ("The answer is fine.\nscore: 3.5", 3.5),
    ("0\nwrong", 0.0)])
def test_alpagasus_parses_scores(text, score):
    assert parse_score(text) == score


@pytest.mark.parametrize("text", [None, "", "   ", "8\ntoo high", "-1", "I would rather not say.",
                                  "The response is good", "Score: 12"])
def test_alpagasus_malformed_ratings_are_errors_not_scores(text):
    assert parse_score(text) is None


def test_alpagasus_prompt_and_prompt_file(tmp_path):
    e = normalise_row({"instruction": "Add {x} and 2.", "input": "", "output": "It is 4."}, "alpaca", "t:0")
    msgs = rating_messages(e)
    assert msgs[0]["role"] == "system" and "Add {x} and 2." in msgs[1]["content"]
    assert "(none)" in msgs[1]["content"] and "It is 4." in msgs[1]["content"]
    f = tmp_path / "p.json"
    f.write_text(json.dumps({"system": "S", "user": "I={instruction} O={output}"}))
    assert rating_messages(e, *load_prompt(str(f))) == [{"role": "system", "content": "S"},
                                                        {"role": "user", "content": "I=Add {x} and 2. O=It is 4."}]
    bad = tmp_path / "bad.txt"
    bad.write_text("no placeholders")
    with pytest.raises(ValueError, match="placeholders"):
        load_prompt(str(bad))


def test_alpagasus_threshold_then_fill_by_score_ties_seeded():
    scores = {0: 5.0, 1: 4.5, 2: 3.0, 3: 4.5, 5: 1.0}  # 4 unrated
    rank = [5, 1, 4, 0, 3, 2]  # seeded tie order: 3 before 1
    chosen, info = rank_by_score(6, scores, 4.5, 3, rank)
    assert chosen == [0, 3, 1] and info["above_threshold"] == 3 and info["filled_below_threshold"] == 0
    chosen, info = rank_by_score(6, scores, 4.5, 6, rank)
    assert chosen == [0, 3, 1, 2, 5, 4] and info["filled_below_threshold"] == 2 and info["filled_unrated"] == 1


# ------------------------------------------------------------------------------------------------ DEITA
def test_deita_expected_score_from_logprobs():
    assert expected_score(np.zeros(6)) == pytest.approx(3.5)
    assert expected_score(np.log([1e-12, 1e-12, 1.0, 1e-12, 1e-12, 1e-12])) == pytest.approx(3.0, abs=1e-9)
    # log-probabilities from the whole vocabulary: only the six digits count, renormalised among themselves
    p = np.array([0.05, 0.05, 0.1, 0.1, 0.1, 0.1])
    assert expected_score(np.log(p)) == pytest.approx((p * np.arange(1, 7)).sum() / p.sum())
    batch = expected_score(np.stack([np.zeros(6), np.full(6, -np.inf)]))
    assert batch[0] == pytest.approx(3.5) and math.isnan(batch[1])


def test_deita_digit_logprobs_from_judge_top_logprobs():
    top = [["4", math.log(0.5)], [" 4", math.log(0.1)], ["5", math.log(0.2)], ["The", math.log(0.1)],
           ["7", math.log(0.05)]]
    lp = digit_logprobs(top, DIGITS)
    assert np.exp(lp[3]) == pytest.approx(0.6) and np.exp(lp[4]) == pytest.approx(0.2)
    assert np.isneginf(lp[[0, 1, 2, 5]]).all()
    assert expected_score(lp) == pytest.approx((0.6 * 4 + 0.2 * 5) / 0.8)
    assert math.isnan(expected_score(digit_logprobs([["The", -0.1]], DIGITS)))  # no digit in the top-k: an error
    assert math.isnan(expected_score(digit_logprobs(None, DIGITS)))


def test_deita_repr_filter_on_hand_made_embeddings():
    E = np.array([[1.0, 0.0], [0.99, 0.141], [0.0, 1.0], [0.6, 0.8], [0.8, 0.6], [-1.0, 0.0]])
    order = [0, 1, 2, 3, 4, 5]  # by score
    # cos(0,1)=0.99 > 0.9 rejected; 2 kept; cos(3,2)=0.8, cos(3,0)=0.6 kept; cos(4,3)=0.96 rejected; 5 kept
    picks, n = repr_filter(order, E, 0.9, 6)
    assert picks[:4] == [0, 2, 3, 5] and n == 4 and picks[4:] == [1, 4]  # filled by score
    picks, n = repr_filter(order, E, 0.9, 3)
    assert picks == [0, 2, 3] and n == 3
    picks, n = repr_filter([0, 1, 2], np.array([[1.0, 0.0], [0.0, 2.0], [3.0, 0.0]]), 0.0, 3)
    assert picks == [0, 1, 2] and n == 2  # similarity exactly at tau (0) is kept; 2 duplicates 0: filled


def test_rating_levels_scorer_choice_and_prompt_fitting(smollm_tokenizer_dir):
    assert expected_score(np.zeros(3), levels=[0, 5, 10]) == pytest.approx(5.0)
    assert digit_logprobs([["0", 0.0]], ("0", "1")).tolist() == [0.0, -np.inf]
    ctx = SimpleNamespace(judge=None, protocol=None)
    assert resolve_scorer("auto", ctx) == "base" and resolve_scorer("/some/model", ctx) == "/some/model"
    ctx.judge, ctx.protocol = object(), SimpleNamespace(judge=JudgeSpec(kind="local", model="m", server="transformers"))
    assert resolve_scorer("auto", ctx) == "base"  # a local judge without logprobs
    ctx.protocol = SimpleNamespace(judge=JudgeSpec(kind="local", model="m", server="vllm"))
    assert resolve_scorer("auto", ctx) == "judge"
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(smollm_tokenizer_dir)
    msgs = lambda t: prompt_messages("quality", *t)  # noqa: E731
    q, r = "short query " * 3, "a long response " * 200
    whole, cut = fit_prompt(tok, msgs, [q, r], (1, 0), 10_000)
    assert not cut and len(whole) > 600
    ids, cut = fit_prompt(tok, msgs, [q, r], (1, 0), 120)
    text = tok.decode(ids)
    assert cut and len(ids) <= 120 and "short query short query short query" in text  # the response was cut
    assert text.rstrip().endswith("assistant")  # the assistant header stays: the next token is the rating
    ids, cut = fit_prompt(tok, msgs, ["q " * 400, ""], (1, 0), 120)  # nothing to cut in the response: the query
    assert cut and len(ids) <= 120


def test_deita_turns_and_prompts():
    e = normalise_row({"instruction": "Q", "input": "ctx", "output": "A"}, "alpaca", "t:0")
    assert turns(e) == [("Q\n\nctx", "A")]
    conv = normalise_row({"conversations": [{"from": "human", "value": "hi"}, {"from": "gpt", "value": "hello"},
                                            {"from": "human", "value": "more"}, {"from": "gpt", "value": "sure"}]},
                         "sharegpt", "t:1")
    assert turns(conv) == [("hi", "hello"), ("more", "sure")]
    assert "Query:\nhi" in prompt_messages("complexity", "hi")[1]["content"]
    assert "Response:\nhello" in prompt_messages("quality", "hi", "hello")[1]["content"]


# ------------------------------------------------------------------------------------------------ InsTag
@pytest.mark.parametrize("text, tags", [
    ('["math", "Word problem"]', ["math", "Word problem"]),
    ('Sure! Tags: ["a", "b"] hope this helps', ["a", "b"]),
    ('```json\n[{"tag": "coding", "explanation": "x"}, {"tag": "python"}]\n```', ["coding", "python"]),
    ('{"tags": ["x y"]}', ["x y"]),
    ("- creative writing\n- poetry", ["creative writing", "poetry"]),
    ("1. math\n2) logic", ["math", "logic"]),
])
def test_instag_parses_tag_lists(text, tags):
    assert parse_tags(text) == tags


@pytest.mark.parametrize("text", [None, "", "I would rather not say.", "[]", '["unterminated',
                                  "[1, 2]", "math, logic and other things here"])
def test_instag_malformed_tag_lists_are_failures(text):
    assert parse_tags(text) is None


@pytest.mark.parametrize("text, items", [
    ('["a", "b"]', ["a", "b"]), ('{"tags": ["x"]}', ["x"]), ('[{"tag": "t"}]', ["t"]), ("[]", []),
    ("- one\n* two\n3) three", ["one", "two", "three"]), ("-\n- x", None), ('[1, "a"]', None), ("", None),
])
def test_judge_string_lists(text, items):
    assert parse_string_list(text, key="tags", item_key="tag") == items


def test_instag_normalisation():
    assert rule_normalise("Math-Problems!") == "math problem"
    raw = [["Math Problems", "Poetry"], ["math problem", "Cooking"], ["Poems"], ["cooking", "Poem"], ["rare one"]]

    def embed(names):  # hand-made: "poetry" and "poem" are near-duplicates, the rest orthogonal
        vec = {"poetry": [1, 0, 0, 0], "rare one": [0, 1, 0, 0], "poem": [0.96, 0.28, 0, 0],
           "poems": [0.96, 0.28, 0, 0],
               "math problems": [0, 0, 1, 0], "math problem": [0, 0, 1, 0], "cooking": [0, 0, 0, 1]}
        return np.array([vec[n] for n in names], dtype=float)

    sets, info = normalise_tags(raw, min_freq=2, merge_threshold=0.9, embed=embed)
    # "rare one" is on one query: filtered; "poetri" (1 query) filtered before merging; "poem" on 2 queries
    assert sets == [{"math problem"}, {"math problem", "cook"}, {"poem"}, {"cook", "poem"}, set()]
    assert info["after_freq"] == 3 and info["after_merge"] == 3
    sets, info = normalise_tags(raw, min_freq=1, merge_threshold=0.9, embed=embed)
    assert sets[0] == {"math problem", "poem"} and info["after_merge"] == info["after_freq"] - 1


def test_instag_complexity_first_diverse_sampling():
    tags = [{"a", "b", "c"}, {"a"}, {"b"}, {"d"}, {"a", "b"}, set(), {"c", "d"}]
    # order by tag count: 0, 4, 6, 1, 2, 3, 5; pass 1: 0 (abc), 6 (adds d); pass 2: 4, 3; pass 3: 1 ...
    assert complexity_first_diverse(tags, 5)[0] == [0, 6, 4, 3, 1]
    picks, info = complexity_first_diverse(tags, 7)
    assert picks == [0, 6, 4, 3, 1, 2, 5] and info["filled"] == 1  # the tagless one fills the rest
    assert complexity_first_diverse(tags, 0)[0] == []


# ------------------------------------------------------------------------------------------------ end to end
@pytest.fixture(scope="module")
def pool() -> Pool:
    return Pool([normalise_row(r, "alpaca", f"row {i}") for i, r in enumerate(alpaca_rows(24))])


@pytest.fixture(scope="module")
def fake():
    with FakeJudge(garbage_if=("(#5)", "(#9)")) as f:
        yield f


@pytest.fixture(scope="module")
def handle(tiny_model_dir):
    return BaseModelHandle(ResolvedModel(str(tiny_model_dir), "tiny", "tiny"), chat_template="model")


def make_judge(fake, cache) -> JudgeClient:
    spec = JudgeSpec(kind="openai", model="fake-judge", max_parse_retries=1, timeout_s=10, max_concurrency=3)
    return JudgeClient.from_spec(spec, fake.base_url, "fake-judge",
                                 {"kind": "openai", "model": "fake-judge", "base_url": fake.base_url}, cache,
                                 backoff_s=0.01)


def make_ctx(cache, handle, judge=None, seed=0) -> SelectionContext:
    return SelectionContext(seed=seed, cache=cache, base_model=handle, judge=judge,
                            signals=SignalCache(cache, handle, batch_size=8, max_len=MAX_LEN, progress=False))


def select(name, pool, budget, ctx, **params):
    spec = get_method(name)
    inputs = selection_inputs(pool, spec, params, budget, ctx.seed, "tiny", "model")
    return cached_selection(spec, pool, budget, ctx, params, inputs)


@pytest.mark.parametrize("name", METHODS)
def test_method_end_to_end_budget_determinism_cost(name, pool, fake, handle, tmp_path):
    cache = ArtifactCache(tmp_path / "cache")
    params = {"tau": 0.5} if name == "deita" else {}
    sel, meta = select(name, pool, 10, make_ctx(cache, handle, make_judge(fake, cache)), **params)
    assert len(sel.ids) == len(set(sel.ids)) == 10 and not meta["cached"]
    assert meta["wall_s"] >= 0 and meta["cpu_s"] >= 0
    if name != "reward":
        cost = sel.extras["judge"]
        assert cost["calls"] > 0 and cost["prompt_tokens"] > 0 and any("judge cost" in n for n in sel.notes)
        assert meta["stats"]["judge"] == cost
    # a second cache directory (signals and judgments computed again): the same selection
    cache2 = ArtifactCache(tmp_path / "cache2")
    again, _ = select(name, pool, 10, make_ctx(cache2, handle, make_judge(fake, cache2)), **params)
    assert again.ids == sel.ids


def test_alpagasus_against_the_fake_judge(pool, fake, handle, tmp_path):
    cache = ArtifactCache(tmp_path / "cache")
    sel, _ = select("alpagasus", pool, 8, make_ctx(cache, handle, make_judge(fake, cache)))
    expected = {e.id: alpagasus_score(m) for e in pool
                if "(#5)" not in e.instruction and "(#9)" not in e.instruction
                for m in ["\n".join(x["content"] for x in rating_messages(e))]}
    assert sel.scores == expected  # every parsed rating, and the garbage ones are not scores
    garbage = {pool.examples[5].id, pool.examples[9].id}
    assert not garbage & set(sel.scores) and sel.extras["errors"] == {"parse": 2, "other": 0}
    assert sel.extras["judge"]["parse_errors"] == 2 and sel.extras["judge"]["parse_retries"] == 2
    ranked = sorted(sel.scores.values(), reverse=True)
    assert [sel.scores[i] for i in sel.ids] == ranked[:8]
    above = sum(s >= 4.5 for s in expected.values())
    assert sel.extras["above_threshold"] == above


def test_judge_answers_are_cached_across_runs_and_methods(pool, fake, handle, tmp_path):
    cache = ArtifactCache(tmp_path / "cache")
    first, _ = select("alpagasus", pool, 6, make_ctx(cache, handle, make_judge(fake, cache)))
    assert first.extras["judge"]["calls"] > 0 and first.extras["judge"]["cached"] == 0
    n_requests = len(fake.requests)
    # another threshold (a new selection, not a cached one) and a new client on the same cache: nothing asked
    judge = make_judge(fake, cache)
    second, meta = select("alpagasus", pool, 6, make_ctx(cache, handle, judge), threshold=4.0)
    assert not meta["cached"]
    assert second.extras["judge"]["calls"] == 0 and second.extras["judge"]["cached"] > 0
    assert judge.ledger.calls == 0 and len(fake.requests) == n_requests
    # the judgments' cost stays the method's cost when they come from the cache: the same tokens, none sent now
    cost = [sel.extras["judge"] for sel in (first, second)]
    assert cost[1]["prompt_tokens"] == cost[1]["completion_tokens"] == 0 and cost[0]["prompt_tokens"] > 0
    assert selection_judge_tokens({"selection": {"cost": {"judge": cost[1]}}}) == \
        selection_judge_tokens({"selection": {"cost": {"judge": cost[0]}}}) == 13 * first.extras["judge"]["calls"]
    assert f"{13 * cost[1]['cached']} of them in cached answers" in " ".join(second.notes)
    for name, params in (("instag", {}), ("deita", {"scorer": "judge"})):
        select(name, pool, 6, make_ctx(cache, handle, make_judge(fake, cache)), **params)
        judge = make_judge(fake, cache)
        n_requests = len(fake.requests)
        sel, _ = select(name, pool, 7, make_ctx(cache, handle, judge), **params)
        assert sel.extras["judge"]["calls"] == 0 and sel.extras["judge"]["cached"] > 0, name
        assert judge.ledger.calls == 0 and len(fake.requests) == n_requests, name


def test_deita_judge_logprobs_and_base_model_scorer(pool, fake, handle, tmp_path):
    cache = ArtifactCache(tmp_path / "cache")
    sel, _ = select("deita", pool, 12, make_ctx(cache, handle, make_judge(fake, cache)), tau=0.95)
    assert sel.extras["scorer"]["kind"] == "judge" and "scorer: judge" in sel.notes[0]
    for i, e in enumerate(pool.examples[:5]):
        c = expected_score(digit_logprobs(deita_top_logprobs(
            "\n".join(m["content"] for m in prompt_messages("complexity", e.prompt)))[:20], DIGITS))
        q = expected_score(digit_logprobs(deita_top_logprobs(
            "\n".join(m["content"] for m in prompt_messages("quality", e.prompt, e.output)))[:20], DIGITS))
        assert sel.scores[e.id] == pytest.approx(c * q)
    assert fake.requests[-1]["logprobs"] is True and fake.requests[-1]["max_tokens"] == 1
    # the offline substitute: the base model's next-token distribution over the six digits
    base, _ = select("deita", pool, 12, make_ctx(cache, handle, None), tau=0.95)
    assert base.extras["scorer"]["kind"] == "base model" and base.extras["scorer"]["identity"] == "tiny"
    assert all(1 <= base.scores[i] <= 36 for i in base.ids) and "judge" not in base.extras
    assert any("Repr Filter" in n for n in base.notes)


def test_instag_against_the_fake_judge(pool, fake, handle, tmp_path):
    cache = ArtifactCache(tmp_path / "cache")
    sel, _ = select("instag", pool, 24, make_ctx(cache, handle, make_judge(fake, cache)), min_freq=1)
    assert sel.extras["parse_failures"] == 2  # the garbage rows: counted, no tags
    assert sel.extras["raw_tags"] == len({t for e in pool for t in instag_tags(e.prompt)
                                          if "(#5)" not in e.prompt and "(#9)" not in e.prompt})
    counts = [len(t) for t in sel.extras["tags_of_selected"]]
    assert counts[0] == max(counts) and counts[-2:] == [0, 0]  # complexity first
    assert set(sel.ids[-2:]) == {pool.examples[5].id, pool.examples[9].id}  # tagless last


def test_reward_substitute_is_named_and_a_local_reward_model_loads(pool, handle, tmp_path, tiny_model_dir):
    cache = ArtifactCache(tmp_path / "cache")
    ctx = make_ctx(cache, handle)
    sel, _ = select("reward", pool, 5, ctx)  # offline: the hub reward model cannot load
    who = sel.extras["reward_model"]
    assert who["kind"] == "substitute" and who["substitute"] == "base_loglik" and "SUBSTITUTE" in sel.notes[0]
    loglik = -ctx.signals.response_losses(pool, conditioned=True)
    assert sel.ids == [pool.examples[i].id for i in np.argsort(-loglik, kind="stable")[:5]]
    with pytest.raises(RuntimeError, match="cannot be loaded"):
        select("reward", pool, 5, make_ctx(cache, handle), substitute="")
    # a local sequence-classification model (a tiny random llama head): loaded with AutoModelForSequenceClassification
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForSequenceClassification

    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                      num_attention_heads=2, num_key_value_heads=1, num_labels=1,
                      pad_token_id=tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id)
    rm = tmp_path / "rm"
    LlamaForSequenceClassification(cfg).save_pretrained(rm)
    tok.save_pretrained(rm)
    sel, _ = select("reward", pool, 5, make_ctx(cache, handle), model=str(rm), substitute="")
    assert sel.extras["reward_model"]["kind"] == "reward model" and len(sel.scores) == len(pool)
    assert [sel.scores[i] for i in sel.ids] == sorted(sel.scores.values(), reverse=True)[:5]


def test_cli_lists_the_llm_rated_methods():
    load_all()
    for name in METHODS:
        spec = get_method(name)
        assert spec.citation and spec.reference and "@" in spec.reference
    out = subprocess.run([sys.executable, "-m", "selbench", "methods"], capture_output=True, text=True,
                         env={"COLUMNS": "250", "PATH": ""}, check=True).stdout
    for name in (*METHODS, "strong-LLM / quality", "strong-LLM / diversity", "AlpaGasus", "DEITA", "InsTag"):
        assert name in out


def test_selection_cache_key_names_the_judge(pool, fake, handle, tmp_path):
    cache = ArtifactCache(tmp_path / "cache")
    _, meta = select("alpagasus", pool, 6, make_ctx(cache, handle, make_judge(fake, cache)))
    _, again = select("alpagasus", pool, 6, make_ctx(cache, handle, make_judge(fake, cache)))
    assert again["cached"] and again["key"] == meta["key"]
    other = make_judge(fake, cache)
    other.identity = {**other.identity, "model": "another-judge"}
    _, third = select("alpagasus", pool, 6, make_ctx(cache, handle, other))
    assert not third["cached"] and third["key"] != meta["key"]  # another judge: not the cached selection


def test_mods_end_to_end(pool, handle, tmp_path):
    cache = ArtifactCache(tmp_path / "cache")
    sel, meta = select("mods", pool, 8, make_ctx(cache, handle), max_new_tokens=6)
    assert len(set(sel.ids)) == 8 and meta["wall_s"] > 0
    assert sel.extras["reward_model"]["kind"] == "substitute" and any("SUBSTITUTE" in n for n in sel.notes)
    assert sel.extras["seed"] == 4 and sel.extras["high_quality"] == 12  # the median splits 24 scores in two
    need = sel.extras["necessity"]
    assert need["candidates"] == 8 and need["kept"] == 4
    assert (tmp_path / "cache" / "mods" / need["seed_model"]).is_dir()
    hq = {i for i, s in sel.scores.items() if s > sel.extras["quality_threshold"]}
    assert set(sel.ids) <= hq and sel.extras["filled"] == 0
    # a second cell (another seed of the same budget would differ): the same cell reruns to the same selection,
    # reusing the seed model's adapter and its answers
    again, _ = select("mods", pool, 8, make_ctx(ArtifactCache(tmp_path / "cache"), handle), max_new_tokens=6,
                      seed_fraction=0.5000001)
    assert again.ids == sel.ids and len(list((tmp_path / "cache" / "mods").iterdir())) == 1
