"""Paired statistics: calibration on synthetic per-item data with a known effect, and the leaderboard's intervals,
marks and noise floor built from per-item side files."""

from __future__ import annotations

import json

import numpy as np
import pytest
import yaml

from selbench.cache import atomic_write_json
from selbench.leaderboard import build_leaderboard
from selbench.protocol import load_protocol
from selbench.stats import adjust_pvalues, mark, paired_difference, pooled_seed_variance


def draw(rng, seeds: int, items: int, delta: float, seed_sd: float, item_sd: float = 0.3, noise: float = 0.5):
    """Scores of method A and baseline B on shared items: item difficulty (cancels in pairing), an item x method
    interaction (why items are resampled), a per-run (seed) offset and per-item noise. True difference: delta."""
    mu = rng.normal(0, 1, items)
    a = mu + delta + rng.normal(0, item_sd, items) + rng.normal(0, seed_sd, (seeds, 1)) + \
        rng.normal(0, noise, (seeds, items))
    b = mu + rng.normal(0, item_sd, items) + rng.normal(0, seed_sd, (seeds, 1)) + rng.normal(0, noise, (seeds, items))
    return a, b


@pytest.mark.parametrize("seeds,seed_sd", [(3, 0.2), (3, 0.02), (1, 0.0)])
def test_interval_covers_true_difference_and_null_is_rarely_significant(seeds, seed_sd):
    rng = np.random.default_rng(7)
    reps, delta = 200, 0.15
    covered = false_pos = 0
    for r in range(reps):
        a, b = draw(rng, seeds, 150, delta, seed_sd)
        d = paired_difference(a, b, n_boot=1000, seed=r)
        covered += d.ci_low <= delta <= d.ci_high
        a, b = draw(rng, seeds, 150, 0.0, seed_sd)
        false_pos += paired_difference(a, b, n_boot=1000, seed=r).p_value < 0.05
    # 95% nominal; binomial sd over 200 draws is ~1.5 points, and the few-seed t interval errs wide.
    assert 0.91 <= covered / reps <= 1.0
    assert false_pos / reps <= 0.08


def test_a_one_seed_row_against_three_seeds_borrows_the_seed_variance():
    """A row with one seed so far, against a 3-seed baseline, when seeds dominate the noise: without pooling, the
    single run's seed offset reads as an effect (far above 5% false positives); pooled, the rate stays nominal."""
    rng = np.random.default_rng(11)
    reps = 200
    naive = pooled = covered = 0
    for r in range(reps):
        a, b = draw(rng, 3, 150, 0.0, 0.2)
        a = a[:1]  # the row's first seed only
        naive += paired_difference(a, b, n_boot=1000, seed=r).p_value < 0.05
        d = paired_difference(a, b, n_boot=1000, seed=r, pool_seeds=True)
        pooled += d.p_value < 0.05
        covered += d.ci_low <= 0.0 <= d.ci_high
    assert naive / reps > 0.12  # the problem pooling fixes (18% here)
    assert pooled / reps <= 0.08 and covered / reps >= 0.92
    # with several runs on both sides, pooling changes nothing
    a, b = draw(rng, 3, 150, 0.1, 0.2)
    assert paired_difference(a, b, pool_seeds=True) == paired_difference(a, b)


def test_a_one_seed_row_borrows_the_boards_pooled_seed_variance():
    """A 3-seed baseline estimates its seed variance poorly (chi-squared with 2 df): borrowing it, a one-seed row's
    false-positive rate runs above nominal; the variance pooled over the board's rows (here 12 rows of 3 seeds) keeps
    it nominal, with the pool's degrees of freedom."""
    rng = np.random.default_rng(5)
    reps = 300
    own = pooled_fp = 0
    for r in range(reps):
        a, b = draw(rng, 3, 150, 0.0, 0.2)
        board = [draw(rng, 3, 150, 0.0, 0.2)[0] for _ in range(12)] + [b]
        pool = pooled_seed_variance(board)
        assert pool is not None and pool[1] == 26
        own += paired_difference(a[:1], b, n_boot=500, seed=r, pool_seeds=True).p_value < 0.05
        d = paired_difference(a[:1], b, n_boot=500, seed=r, pool_seeds=True, seed_variance=pool)
        pooled_fp += d.p_value < 0.05
        assert d.df > 2
    assert pooled_fp / reps <= 0.075 and pooled_fp < own  # 4% pooled; 7% with the baseline's own estimate
    assert pooled_seed_variance([np.zeros((1, 5))]) is None  # one-run rows carry no seed variance


def test_planted_effect_is_found_and_interval_agrees_with_p():
    rng = np.random.default_rng(0)
    a, b = draw(rng, 3, 300, -0.4, 0.05)
    d = paired_difference(a, b)
    assert d.ci_high < 0 and d.p_value < 0.05 and abs(d.estimate - (-0.4)) < 0.2
    assert d.n_items == 300 and d.n_runs == (3, 3)
    with pytest.raises(ValueError, match="share items"):
        paired_difference(a, b[:, :10])


def test_marks_respect_direction_and_bh_correction():
    assert mark(-0.1, 0.01, higher_is_better=False) == "▲"  # lower NLL is better
    assert mark(-0.1, 0.01, higher_is_better=True) == "▼"
    assert mark(0.5, 0.2, higher_is_better=True) == ""
    adj = adjust_pvalues([0.01, 0.04, 0.03, 0.5])
    assert adj[0] == pytest.approx(0.04) and adj[3] == pytest.approx(0.5) and all(a >= p for a, p in
                                                                                 zip(adj, [0.01, 0.04, 0.03, 0.5]))


def write_cell(res, h, row, budget, seed, nll: np.ndarray, items: list[str]):
    path = res / "b" / row / str(budget) / f"seed{seed}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    side = path.with_name(f"seed{seed}.ref_likelihood.jsonl")
    side.write_text("".join(json.dumps({"item": i, "scores": {"nll": float(v)}}) + "\n" for i, v in zip(items, nll)))
    atomic_write_json(path, {"protocol_hash": h, "method": {"row": row, "family": "x"}, "budget": budget,
                             "seed": seed, "side_files": {"ref_likelihood": side.name},
                             "metrics": {"ref_likelihood/nll": {"value": float(nll.mean()), "stderr": None,
                                                                "higher_is_better": False}}})


def test_leaderboard_marks_planted_harm_and_reports_noise_floor(tmp_path):
    board = tmp_path / "leaderboards" / "b"
    board.mkdir(parents=True)
    (board / "protocol.yaml").write_text(yaml.safe_dump({"name": "b", "base_model": {"path": "m"},
                                                         "pool": {"path": "p.json"}, "budgets": [16],
                                                         "methods": [{"name": "random"}]}))
    protocol = load_protocol(board / "protocol.yaml")
    rng = np.random.default_rng(3)
    items = [f"alpaca_eval/{i:04d}" for i in range(120)]
    difficulty = rng.normal(2.0, 0.5, len(items))
    effects = {"random": 0.0, "harmful": 0.3, "neutral": 0.0}  # NLL: +0.3 is worse
    for row, eff in effects.items():
        for seed in range(3):
            nll = difficulty + eff + rng.normal(0, 0.02) + rng.normal(0, 0.05, len(items))
            write_cell(tmp_path / "results", protocol.hash, row, 16, seed, nll, items)
    # a row still being computed: one seed so far
    write_cell(tmp_path / "results", protocol.hash, "partial", 16, 0, difficulty + 0.3 + rng.normal(0, 0.05, 120),
               items)

    out = build_leaderboard(tmp_path / "results", board, "b", protocol)
    t = out["table"].set_index("method")
    assert t.loc["harmful", "ref_likelihood/nll:vs_random:mark"] == "▼"
    assert t.loc["harmful", "ref_likelihood/nll:vs_random:ci_low"] > 0.2
    assert t.loc["neutral", "ref_likelihood/nll:vs_random:mark"] == ""
    floor = out["noise_floor"]["ref_likelihood/nll"]
    assert floor["n_seeds"] == 3 and floor["n_items"] == 120 and 0 < floor["mdd"] < 0.2 and floor["seed_sd"] > 0
    md = (board / "LEADERBOARD.md").read_text()
    assert "Noise floor" in md and "differences below" in md and "Δr +0.3" in md and "▼" in md
    # the board says in words which rows differ from random and which do not
    assert "| `ref_likelihood/nll` | 16 | – | harmful, partial (1 seed) | 1: neutral |" in md
    # and in the terminal, the marked rows by name and the others by number
    from selbench.leaderboard import verdict_lines
    assert verdict_lines(out["table"], ["ref_likelihood/nll"]) == [
        "`ref_likelihood/nll` at 16: ▲ none; ▼ harmful, partial (1 seed); not distinguishable: 1"]
    assert (board / "comparisons.csv").read_text().count("\n") >= 5
