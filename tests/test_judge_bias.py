"""Judge-bias diagnostics: planted position and length biases in synthetic judgments are recovered, their absence
gives intervals around "no bias", the leaderboard header, judge_bias.csv and the HTML page show them, and the
AlpacaEval evaluator's swapped-order re-ask measures a position-biased judge."""

from __future__ import annotations

import io
import math
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import yaml
from selbench.judge.alpaca_eval import model_shown_first
from selbench.judge.verdicts import OUTCOME_WS, combine_sum
from selbench.judge_bias import (
    board_agreement,
    board_judge_bias,
    cohen_kappa,
    judge_agreement,
    proportion,
    spearman,
)
from selbench.leaderboard import build_leaderboard
from selbench.protocol import load_protocol
from selbench.record import write_record


def covers(e, value) -> bool:
    return e is not None and e.ci_low <= value <= e.ci_high


def cell(root, row, seed, side, metrics=None, protocol_hash="h", budget=4):
    """One record with its side files (``{evaluator: rows}``), as the pipeline writes them."""
    path = root / row / str(budget) / f"seed{seed}.json"
    rec = {"protocol_hash": protocol_hash, "method": {"row": row, "family": "baseline"}, "budget": budget,
           "seed": seed, "metrics": metrics or {}, "timings": {"select_s": 1.0, "train_s": 2.0}}
    write_record(path, rec, side)
    return path, rec


# -- synthetic judgments ------------------------------------------------------------------------------------------

def mt_bench_rows(n, rho, rng):
    """Ratings and answer lengths from a bivariate normal with correlation ``rho`` (monotone transforms keep
    Spearman's rho at 6/pi * asin(rho/2))."""
    x, y = rng.multivariate_normal([0, 0], [[1, rho], [rho, 1]], size=n).T
    lengths, ratings = np.round(300 * np.exp(0.5 * x)).astype(int) + 1, np.clip(5.5 + 2 * y, 1, 10)
    return [{"item": f"{i}/turn1", "answer": "w" * int(k), "score": float(r), "error": None,
             "scores": {"score": float(r)}} for i, (k, r) in enumerate(zip(lengths, ratings))]


def pairwise_rows(n, bias, rng, baseline="full"):
    """Both orders of ``n`` comparisons by a judge that picks the answer shown first with probability ``bias`` and
    otherwise the truly better one (a coin flip): flip rate = bias, share of first-shown wins = (1 + bias) / 2."""
    rows = []
    for i in range(n):
        truth = 1 if rng.random() < 0.5 else -1
        s1 = 1 if rng.random() < bias else truth  # model shown first: a first-shown win is +1
        s2 = -1 if rng.random() < bias else truth  # model shown second: a first-shown win is -1
        outcome = combine_sum(s1, s2)
        rows.append({"baseline": baseline, "item": f"{baseline}/q{i}", "answer": "a" * int(rng.integers(20, 600)),
                     "baseline_answer": "b" * int(rng.integers(20, 600)),
                     "verdict_model_first": [8, 6] if s1 == 1 else [6, 8],
                     "verdict_model_second": [6, 8] if s2 == 1 else [8, 6],
                     "outcome": outcome, "scores": {f"ws_vs_{baseline}": OUTCOME_WS[outcome]}})
    return rows


def alpaca_rows(n, bias, slope, rng, swapped=0):
    """AlpacaEval annotations: the model's output is better with probability sigmoid(slope * length difference /
    300); the judge picks the output shown first (alpaca_eval's seeded order) with probability ``bias``. The first
    ``swapped`` items are also judged in the swapped order (flip rate = bias)."""
    rows = []
    for i in range(n):
        instr, d = f"Synthetic instruction number {i}", int(rng.normal(0, 300))
        better = rng.random() < 1 / (1 + math.exp(-slope * d / 300))

        def preference(model_first: bool, better: bool) -> float:
            return 2.0 if (model_first if rng.random() < bias else better) else 1.0

        first = model_shown_first(instr)
        row = {"item": f"a{i}", "instruction": instr, "output": "x" * (1000 + d), "reference_output": "y" * 1000,
               "preference": preference(first, better)}
        row["scores"] = {"win_rate": 100.0 * (row["preference"] - 1)}
        if i < swapped:
            row["preference_swapped"] = preference(not first, better)
        rows.append(row)
    return rows


# -- statistics -----------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("rho", [0.5, 0.0])
def test_planted_length_bias_is_recovered_and_none_covers_zero(tmp_path, rho):
    rng = np.random.default_rng(1)
    records = [cell(tmp_path, "random", s, {"mt_bench": mt_bench_rows(200, rho, rng)}) for s in (0, 1)]
    (b,) = board_judge_bias(records)
    assert (b.metric, b.cells, b.judged, b.parsed) == ("mt_bench/score", 2, 400, 400)
    planted = 6 / math.pi * math.asin(rho / 2)
    assert covers(b.length, planted) and b.length.n == 400
    if rho:
        assert b.length.ci_low > 0.3
    assert b.first_wins is None and b.flips is None  # single-answer grading shows no two positions
    assert "length ρ" in b.sentence() and "400 of 400 verdicts parsed, 2 cell(s)" in b.sentence()


@pytest.mark.parametrize("bias", [0.3, 0.0])
def test_planted_position_bias_pairwise(tmp_path, bias):
    rng = np.random.default_rng(2)
    records = [cell(tmp_path, "ifd", 0, {"pairwise": pairwise_rows(400, bias, rng) +
                                         pairwise_rows(50, bias, rng, baseline="random")})]
    full, rand = board_judge_bias(records)
    assert (full.metric, rand.metric) == ("pairwise/ws_vs_full", "pairwise/ws_vs_random")
    assert full.flips.n == 400 and full.first_wins.n == 800  # both orders of every comparison are decisive
    assert covers(full.flips, bias) and covers(full.first_wins, (1 + bias) / 2)
    if bias:
        assert full.first_wins.ci_low > 0.55 and full.flips.ci_low > 0.2
    else:
        assert full.flips.value == 0
    assert covers(full.length, 0.0)  # no length bias was planted
    assert "flip rate" in full.sentence() and "first-shown wins" in full.sentence()


@pytest.mark.parametrize("bias,slope", [(0.25, 3.0), (0.0, 0.0)])
def test_planted_position_and_length_bias_alpaca_eval(tmp_path, bias, slope):
    rng = np.random.default_rng(3)
    metrics = {"alpaca_eval/win_rate": {"value": 40.0}, "alpaca_eval/lc_win_rate_approx": {"value": 35.0}}
    records = [cell(tmp_path, "random", s, {"alpaca_eval": alpaca_rows(300, bias, slope, rng, swapped=150)},
                    metrics) for s in (0, 1)]
    (b,) = board_judge_bias(records)
    assert covers(b.first_wins, (1 + bias) / 2) and covers(b.flips, bias) and b.flips.n == 300
    assert b.win_rates == (40.0, 35.0, "lc_win_rate_approx", 2)
    if slope:
        assert b.length.ci_low > 0.2 and b.first_wins.ci_low > 0.5
    else:
        assert covers(b.length, 0.0) and b.flips.value == 0
    assert "win rate 40.0 vs length-controlled 35.0 (`lc_win_rate_approx`" in b.sentence()


def test_statistics_edge_cases():
    assert spearman([1, 2, 3], [3, 2, 1]) is None  # too few
    assert spearman([5] * 10, list(range(10))) is None  # constant verdicts: no correlation defined
    e = proportion(0, 20)
    assert e.value == 0 and e.ci_low == 0 and 0 < e.ci_high < 0.2
    assert proportion(0, 0) is None


def test_judge_agreement():
    rng = np.random.default_rng(4)
    a = {i: str(rng.choice(["win", "tie", "lose"])) for i in range(300)}
    assert judge_agreement(a, a, "categorical").value == pytest.approx(1.0)
    independent = {i: str(rng.choice(["win", "tie", "lose"])) for i in range(300)}
    assert covers(judge_agreement(a, independent, "categorical"), 0.0)
    # a second judge that agrees on 80% and guesses otherwise: kappa = 0.8 (chance agreement 1/3 on both sides)
    noisy = {i: v if rng.random() < 0.8 else str(rng.choice(["win", "tie", "lose"])) for i, v in a.items()}
    k = judge_agreement(a, noisy, "categorical")
    assert covers(k, 0.8)
    ratings = {i: float(rng.integers(1, 11)) for i in range(200)}
    close = {i: min(10.0, max(1.0, r + float(rng.integers(-1, 2)))) for i, r in ratings.items()}
    assert judge_agreement(ratings, close, "rating").ci_low > 0.8
    assert judge_agreement({1: "win"}, {2: "win"}, "categorical") is None  # no shared item
    assert cohen_kappa(["a"] * 10, ["a"] * 10).value == 0  # no variation: kappa undefined, reported as 0


def test_board_agreement_pairs_the_same_answers(tmp_path):
    """Two boards that differ only in their judge: verdicts pair up by cell, item and answer."""
    rng = np.random.default_rng(5)
    rows = pairwise_rows(60, 0.2, rng)
    other = [dict(r) for r in rows]
    for r in other[:10]:  # the second judge disagrees on 10 comparisons ...
        r["outcome"] = {"win": "lose", "lose": "tie", "tie": "win"}[r["outcome"]]
    other[-1]["answer"] += " (another answer)"  # ... and one item's answer differs: not paired
    a = [cell(tmp_path / "a", "ifd", 0, {"pairwise": rows})]
    b = [cell(tmp_path / "b", "ifd", 0, {"pairwise": other})]
    agreement = board_agreement(a, b, "pairwise")
    assert set(agreement) == {"pairwise/ws_vs_full"}
    k = agreement["pairwise/ws_vs_full"]
    assert k.n == 59 and 0.5 < k.value < 1


def test_second_judge_agreement_on_the_board(tmp_path):
    """A protocol's second judge re-judges the same answers (side files ``<evaluator>.judge2``): each judged
    metric's line and judge_bias.csv give the two judges' agreement on the items both parsed."""
    rng = np.random.default_rng(7)
    recs = []
    for seed in (0, 1):
        rows = pairwise_rows(40, 0.2, rng)
        other = [dict(r) for r in rows]
        for r in other[:8]:  # the second judge disagrees on 8 of 40 comparisons per cell
            r["outcome"] = {"win": "lose", "lose": "tie", "tie": "win"}[r["outcome"]]
        ratings = mt_bench_rows(30, 0.3, rng)
        unparsed = [{**r, "score": None, "error": "parse"} for r in ratings]  # a second judge that never parses
        recs.append(cell(tmp_path, "ifd", seed, {"pairwise": rows, "pairwise.judge2": other, "mt_bench": ratings,
                                                 "mt_bench.judge2": unparsed}))
    bias = {b.metric: b for b in board_judge_bias(recs)}
    k = bias["pairwise/ws_vs_full"].agreement
    assert bias["pairwise/ws_vs_full"].second_judged == 80 and k.n == 80 and 0.5 < k.value < 0.9
    assert bias["pairwise/ws_vs_full"].parsed == 80  # the board's own verdicts are the first judge's only
    assert "agreement with the second judge Cohen's κ +" in bias["pairwise/ws_vs_full"].sentence()
    assert bias["mt_bench/score"].agreement is None and bias["mt_bench/score"].second_judged == 60
    assert "agreement with the second judge n/a (60 judged" in bias["mt_bench/score"].sentence()
    stats = {r["statistic"] for r in bias["pairwise/ws_vs_full"].rows()}
    assert "second_judge_agreement" in stats
    # without a second judge nothing is said about agreement
    plain = board_judge_bias([cell(tmp_path / "plain", "ifd", 0, {"pairwise": pairwise_rows(10, 0.2, rng)})])
    assert plain[0].second_judged == 0 and "second judge" not in plain[0].sentence()


# -- leaderboard, csv, page -----------------------------------------------------------------------------------------

def make_board(tmp_path):
    board = tmp_path / "leaderboards" / "b"
    board.mkdir(parents=True)
    (board / "protocol.yaml").write_text(yaml.safe_dump({
        "name": "b", "base_model": {"path": "m"}, "pool": {"path": "p.json"}, "budgets": [4],
        "methods": [{"name": "random"}, {"name": "ifd"}],
        "evaluation": {"mt_bench": {"turns": [1]}, "alpaca_eval": {"max_instances": 40}, "pairwise": {}}}))
    return board, load_protocol(board / "protocol.yaml")


def test_leaderboard_header_csv_and_page_show_judge_bias(tmp_path):
    board, protocol = make_board(tmp_path)
    res = tmp_path / "results"
    rng = np.random.default_rng(6)
    for row, seed in (("random", 0), ("random", 1), ("ifd", 0)):
        metrics = {"mt_bench/score": {"value": 6.0}, "alpaca_eval/win_rate": {"value": 40.0},
                   "alpaca_eval/lc_win_rate_approx": {"value": 35.0}, "pairwise/ws_vs_full": {"value": 1.0}}
        side = {"mt_bench": mt_bench_rows(30, 0.5, rng), "alpaca_eval": alpaca_rows(40, 0.2, 2.0, rng),
                "pairwise": pairwise_rows(20, 0.3, rng)}
        cell(res / "b", row, seed, side, metrics, protocol.hash)
    out = build_leaderboard(res, board, "b", protocol)
    assert "judge_bias.csv" in out["changed"] and len(out["judge_bias"]) == 3
    md = (board / "LEADERBOARD.md").read_text()
    assert "**Judge bias**" in md
    lines = {line.split("`")[1]: line for line in md.splitlines() if line.startswith("- `") and "ρ" in line}
    assert set(lines) == {"mt_bench/score", "alpaca_eval/win_rate", "pairwise/ws_vs_full"}
    assert "length ρ +" in lines["mt_bench/score"] and "90 of 90 verdicts parsed, 3 cell(s)" in lines["mt_bench/score"]
    assert "win rate 40.0 vs length-controlled 35.0" in lines["alpaca_eval/win_rate"]
    assert "flip rate not measured" in lines["alpaca_eval/win_rate"]
    assert "flip rate" in lines["pairwise/ws_vs_full"] and "first-shown wins" in lines["pairwise/ws_vs_full"]
    csv = pd.read_csv(io.StringIO((board / "judge_bias.csv").read_text()))
    assert set(csv["statistic"]) == {"parsed_share", "length_spearman", "first_position_win_share", "position_flip_rate",
                                     "win_rate_mean", "lc_win_rate_mean"}
    mt = csv[(csv["metric"] == "mt_bench/score") & (csv["statistic"] == "length_spearman")].iloc[0]
    assert mt["n"] == 90 and mt["ci_low"] < mt["value"] < mt["ci_high"]
    page = (board / "leaderboard.html").read_text()
    assert "<h2>Judge bias</h2>" in page and 'id="fig-judge-bias"' in page and "length ρ" in page
    assert "judge-bias" in out["figures"]
    assert build_leaderboard(res, board, "b", protocol)["changed"] == []  # deterministic


def test_boards_without_judged_verdicts(tmp_path):
    board, protocol = make_board(tmp_path)
    res = tmp_path / "results"
    cell(res / "b", "random", 0, {"lm_eval": [{"item": "arc/0", "scores": {"lm_eval/arc/acc": 1.0}}]},
         {"lm_eval/arc/acc": {"value": 1.0}}, protocol.hash)
    out = build_leaderboard(res, board, "b", protocol)
    md = (board / "LEADERBOARD.md").read_text()
    assert "Judge bias" not in md and not (board / "judge_bias.csv").exists() and out["judge_bias"] == []
    assert "fig-judge-bias" not in (board / "leaderboard.html").read_text()
    # a judge whose verdicts never parsed (the demo board's 135M judge) is named, not diagnosed
    cell(res / "b", "ifd", 0, {"mt_bench": [{"item": "81/turn1", "answer": "a", "score": None, "error": "parse",
                                             "scores": {}}]}, {}, protocol.hash)
    build_leaderboard(res, board, "b", protocol)
    md = (board / "LEADERBOARD.md").read_text()
    assert "- `mt_bench/score`: no parsed verdict to diagnose (0 of 1 verdicts parsed, 1 cell(s))" in md
    csv = pd.read_csv(board / "judge_bias.csv")
    assert list(csv["statistic"]) == ["parsed_share"] and csv["value"][0] == 0 and csv["n"][0] == 1
    assert "fig-judge-bias" not in (board / "leaderboard.html").read_text()


# -- the AlpacaEval swapped-order re-ask ----------------------------------------------------------------------------

def test_alpaca_eval_swapped_reask(tiny_model_dir, data_dir, tmp_path):
    """The fake judge always prefers the output shown second ([[2]]): every re-asked verdict flips and no
    first-shown output ever wins. The instruction that makes it answer garbage stays an error in both orders."""
    from fake_judge import FakeJudge
    from selbench.cache import ArtifactCache
    from selbench.evaluate import EvalContext, ModelUnderTest, load_evaluators
    from selbench.judge.client import JudgeClient
    from selbench.protocol import JudgeSpec

    garbage = "What are the names of some famous actors that started their careers on Broadway?"
    with FakeJudge(garbage_if=(garbage,)) as fake:
        cache = ArtifactCache(tmp_path / "cache")
        spec = JudgeSpec(kind="openai", model="fake-judge", base_url=fake.base_url, max_parse_retries=1)
        client = JudgeClient.from_spec(spec, fake.base_url, "fake-judge", {"kind": "openai", "model": "fake-judge"},
                                       cache, backoff_s=0.01)
        ctx = EvalContext(SimpleNamespace(judge=spec), cache, data_dir, judge_provider=lambda: client)
        model = ModelUnderTest("tiny/sel", str(tiny_model_dir), None, "tiny-sel")
        settings = {"reference": "text_davinci_003", "max_instances": 3, "max_new_tokens": 8}
        r = load_evaluators()["alpaca_eval"].fn(model, {**settings, "position_check": 3}, ctx)
    # 3 judgments + 1 re-ask of the garbage one, twice (original order, then swapped)
    assert r.counts["judge/calls"] == 8 and r.counts["judgments"] == 3 and r.counts["errors"] == 1
    assert (r.counts["position_checked"], r.counts["position_check_errors"], r.counts["position_flips"]) == (3, 1, 2)
    assert r.metrics["position_flip_rate"].value == 1.0
    assert r.details[0]["preference"] is None and r.details[0]["preference_swapped"] is None
    assert all(d["preference_swapped"] == 3 - d["preference"] for d in r.details[1:])
    (b,) = board_judge_bias([cell(tmp_path / "results", "random", 0, {"alpaca_eval": r.details})])
    assert (b.flips.value, b.flips.n) == (1.0, 2) and (b.first_wins.value, b.first_wins.n) == (0.0, 2)
