"""MT-Bench, AlpacaEval and pairwise evaluators end to end: the tiny model generates, a fake judge answers."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest

from selbench.cache import ArtifactCache
from selbench.evaluate import EvalContext, ModelUnderTest, evaluate_cached, load_evaluators
from selbench.judge.client import JudgeClient
from selbench.protocol import JudgeSpec

from fake_judge import FakeJudge

GARBAGE_TRIGGERS = ("Hawaii", "How can I improve my time management skills?",
                    "What are the names of some famous actors that started their careers on Broadway?")


@pytest.fixture(scope="module")
def fake():
    with FakeJudge(garbage_if=GARBAGE_TRIGGERS) as f:
        yield f


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return ArtifactCache(tmp_path_factory.mktemp("judged") / "cache")  # shared: later tests reuse generations


@pytest.fixture
def setup(fake, tiny_model_dir, data_dir, cache):
    spec = JudgeSpec(kind="openai", model="fake-judge", base_url=fake.base_url, max_parse_retries=1)
    client = JudgeClient.from_spec(spec, fake.base_url, "fake-judge", {"kind": "openai", "model": "fake-judge"},
                                   cache, backoff_s=0.01)
    model = ModelUnderTest("tiny/sel", str(tiny_model_dir), None, "tiny-sel")
    full = ModelUnderTest("tiny/full", str(tiny_model_dir), None, "tiny-full")
    ctx = EvalContext(SimpleNamespace(judge=spec), cache, data_dir, judge_provider=lambda: client,
                      baselines={"full": full, "random": model})  # "random" is the model itself -> skipped
    return SimpleNamespace(model=model, ctx=ctx, client=client, evaluators=load_evaluators(), fake=fake)


def test_mt_bench(setup):
    ev = setup.evaluators["mt_bench"]
    spec = {"question_ids": [81, 101, 111], "max_new_tokens": 8, "turns": [1, 2]}
    r, cached = evaluate_cached(ev, setup.model, spec, setup.ctx)
    assert not cached
    assert r.counts["judgments"] == 6 and r.counts["errors"] == 2 and r.counts["parse_errors"] == 2
    assert r.counts["scored"] == 4 and r.counts["judge/parse_retries"] == 2
    assert {"score", "turn1", "turn2", "category/reasoning", "category/math"} <= set(r.metrics)
    assert "category/writing" not in r.metrics  # its only question was unparseable in both turns: omitted
    assert all(1 <= d["score"] <= 10 for d in r.details if d["error"] is None)
    assert 1 <= r.metrics["score"].value <= 10
    r2, cached = evaluate_cached(ev, setup.model, spec, setup.ctx)
    assert cached and r2.metrics["score"].value == r.metrics["score"].value
    with pytest.raises(ValueError, match="evaluation.mt_bench.turns"):
        ev.fn(setup.model, {"turns": [3]}, setup.ctx)


@pytest.mark.parametrize("fmt", ["review", "pair-v2"])
def test_pairwise(setup, fmt):
    ev = setup.evaluators["pairwise"]
    spec = {"per_set": 2, "max_new_tokens": 8, "format": fmt}
    r = ev.fn(setup.model, spec, setup.ctx)
    # the fake judge always prefers the answer shown first (or [[A]]): every parsed pair is a flip and a tie
    assert r.info["skipped"] == {"random": "model under test is this baseline"}
    assert "ws_vs_random" not in r.metrics
    assert r.counts["vs_full/error"] == 1 and r.counts["vs_full/vicuna/error"] == 1
    assert (r.counts["vs_full/win"], r.counts["vs_full/tie"], r.counts["vs_full/lose"]) == (0, 9, 0)
    assert r.metrics["ws_vs_full"].value == pytest.approx(1.0)
    assert r.metrics["ws_strict_vs_full"].value == pytest.approx(1.0)
    assert r.metrics["flip_rate_vs_full"].value == pytest.approx(1.0)
    assert set(f"ws_vs_full/{s}" for s in ("vicuna", "koala", "wizardlm", "self_instruct", "lima")) <= set(r.metrics)
    assert len(r.details) == 10
    calls = setup.client.ledger.calls
    r2 = ev.fn(setup.model, spec, setup.ctx)  # generations and judgments both come from the cache now
    assert setup.client.ledger.calls == calls and r2.metrics["ws_vs_full"].value == r.metrics["ws_vs_full"].value


def test_alpaca_eval(setup):
    ev = setup.evaluators["alpaca_eval"]
    r = ev.fn(setup.model, {"reference": "text_davinci_003", "max_instances": 3, "max_new_tokens": 8},
              setup.ctx)
    assert r.counts["instructions"] == 3 and r.counts["annotated"] == 2 and r.counts["errors"] == 1
    # asked through the harness's judge client: 3 judgments and one re-ask of the unparseable one, in its ledger
    assert (r.counts["judge/calls"], r.counts["judge/parse_retries"], r.counts["judge/parse_errors"]) == (4, 1, 1)
    assert 0 <= r.metrics["win_rate"].value <= 100
    assert not math.isnan(r.metrics["lc_win_rate_approx"].value) and "lc_win_rate" not in r.metrics  # offline
    assert r.info["lc_method"] == "length_logistic_fallback" and r.info["lc_unavailable"]
    assert r.details[0]["preference"] is None and all(d["preference"] in (1.0, 2.0) for d in r.details[1:])
    assert all("[[2]]" in d["judgment"] for d in r.details[1:])  # the judge's own text is kept per example
    cfg_dir = setup.ctx.cache.root / "alpaca_eval"
    assert any(cfg_dir.rglob("annotations.json"))  # alpaca_eval's cache lives under ours, not site-packages
    # a second run (e.g. another cell with the same answers) reloads alpaca_eval's annotation cache from disk
    n_requests = len(setup.fake.requests)
    again = ev.fn(setup.model, {"reference": "text_davinci_003", "max_instances": 3, "max_new_tokens": 8},
                  setup.ctx)
    assert again.metrics["win_rate"].value == r.metrics["win_rate"].value
    # and the judgment cache holds every verdict it might ask for again: the judge gets no new request
    assert len(setup.fake.requests) == n_requests and again.counts["judge/calls"] == 0


def test_alpaca_eval_weighted_by_logprobs(setup):
    """verdict: logprobs is alpaca_eval's own weighted annotator: its template and logprob parser, the preference
    2 - P(m) / (P(m) + P(M)) from the judge's first-token top-5 logprobs (a number, not a 1/2 vote)."""
    from selbench.judge.alpaca_eval import model_shown_first, weighted_annotator

    ev = setup.evaluators["alpaca_eval"]
    spec = {"reference": "text_davinci_003", "max_instances": 4, "max_new_tokens": 8, "verdict": "logprobs"}
    r = ev.fn(setup.model, spec, setup.ctx)
    assert r.info["verdict"] == "logprobs" and r.info["verdict_constraint"] is None
    assert r.counts["annotated"] == 4 and r.counts["errors"] == 0
    official = weighted_annotator()
    assert official["completion_parser_kwargs"]["numerator_token"] == "m" and "m or M" in official["template"]
    asked = [q for q in setup.fake.requests if "## Best Model Identifier" in str(q.get("messages"))]
    assert asked and all(q["max_tokens"] == 1 and q["top_logprobs"] == 5 for q in asked)
    for d in r.details:  # each item's judgment keeps the judge's logprobs; the preference is computed from them
        top = {t["token"]: t["logprob"] for t in d["judgment"]["logprobs"]["content"][0]["top_logprobs"]}
        assert set(top) == {"m", "M", "The"}
        p_m = math.exp(top["m"]) / (math.exp(top["m"]) + math.exp(top["M"]))
        # alpaca_eval shows the model first ("m") on some instructions; its preference is for the model's side
        want = 1 + p_m if model_shown_first(d["instruction"]) else 2 - p_m
        assert d["preference"] == pytest.approx(want, abs=1e-6) and 1 < d["preference"] < 2
    assert r.metrics["win_rate"].value == pytest.approx(
        100 * sum(d["preference"] - 1 for d in r.details) / 4, abs=1e-6)
    assert {model_shown_first(d["instruction"]) for d in r.details} == {True, False}  # both orders occur
    calls = setup.client.ledger.calls
    again = ev.fn(setup.model, spec, setup.ctx)  # alpaca_eval's annotation cache and the judgment cache
    assert setup.client.ledger.calls == calls
    assert again.metrics["win_rate"].value == pytest.approx(r.metrics["win_rate"].value, abs=1e-6)
