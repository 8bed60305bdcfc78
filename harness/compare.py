"""Paired comparisons of a board's rows with its baselines, from the records' per-item side files.

For every row, budget and metric that has per-item scores: the row's mean with its 95% interval, its difference to
``random`` at the same budget and to ``full`` (the whole pool), each with a 95% interval, a p-value and the
Benjamini-Hochberg adjusted p-value over the board's rows, and the ▲/▼ mark. Per metric, the board's noise floor.
The statistics are in :mod:`selbench.stats`.
"""

from __future__ import annotations

import json
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from . import stats
from .record import BASE_ROW

BASELINES = ("random", "full")
BENCH_AVG = "bench_avg"

# (row, budget) -> seed -> metric -> item -> score
Scores = dict[tuple[str, int | None], dict[int, dict[str, dict[str, float]]]]


def read_item_scores(records: list[tuple[Path, dict[str, Any]]], primary: list[str]) -> tuple[Scores, dict]:
    """Per-item scores of every record, plus each metric's direction (``higher_is_better``). ``primary`` names
    the lm-eval headline metrics averaged into ``bench_avg`` (its items are theirs, tasks weighted equally)."""
    out: Scores = defaultdict(dict)
    direction: dict[str, bool] = {BENCH_AVG: True}
    for path, rec in records:
        per_metric: dict[str, dict[str, float]] = defaultdict(dict)
        for evaluator, name in (rec.get("side_files") or {}).items():
            side = path.with_name(name)
            if not side.is_file():
                continue
            for line in side.read_text(encoding="utf-8").splitlines():
                row = json.loads(line)
                if "item" not in row:
                    continue
                for metric, v in (row.get("scores") or {}).items():
                    if v is not None:
                        per_metric[f"{evaluator}/{metric}"][str(row["item"])] = float(v)
        for name, m in (rec.get("metrics") or {}).items():
            direction[name] = m.get("higher_is_better", True)
        bench = {f"{metric}::{item}": v for metric in primary for item, v in per_metric.get(metric, {}).items()}
        if bench:
            per_metric[BENCH_AVG] = bench
        out[(rec["method"]["row"], rec.get("budget"))][int(rec["seed"])] = dict(per_metric)
    return out, direction


def _matrix(runs: dict[int, dict[str, dict[str, float]]], metric: str, items: list[str]) -> np.ndarray:
    return np.array([[runs[s][metric][i] for i in items] for s in sorted(runs)])


def _common_items(*sides: dict[int, dict[str, dict[str, float]]], metric: str) -> list[str]:
    sets = [set(r.get(metric, {})) for side in sides for r in side.values()]
    return sorted(set.intersection(*sets)) if sets else []


def _weights(items: list[str], metric: str) -> np.ndarray | None:
    """``bench_avg`` weights each task equally whatever its item count; other metrics weight items equally."""
    if metric != BENCH_AVG:
        return None
    tasks = [i.split("::", 1)[0] for i in items]
    counts = {t: tasks.count(t) for t in set(tasks)}
    return np.array([1.0 / counts[t] for t in tasks])


@dataclass
class Comparison:
    row: str
    budget: int | None
    metric: str
    baseline: str  # "self" for the row's own mean, else the baseline row
    diff: stats.Difference
    p_adjusted: float | None = None
    mark: str = ""

    def as_dict(self) -> dict[str, Any]:
        d = self.diff
        return {"row": self.row, "budget": self.budget, "metric": self.metric, "baseline": self.baseline,
                "estimate": d.estimate, "ci_low": d.ci_low, "ci_high": d.ci_high, "se": d.se, "df": d.df,
                "p_value": d.p_value, "p_adjusted": self.p_adjusted, "mark": self.mark, "n_items": d.n_items,
                "n_runs": d.n_runs[0], "n_runs_baseline": d.n_runs[1]}


def _pooled_seed_variances(scores: Scores, metrics: list[str]) -> dict[tuple[str, int | None], tuple[float, int]]:
    """One run's seed variance per (metric, budget), pooled over the rows with several seeds: what a one-seed row
    borrows in :func:`selbench.stats.paired_difference`."""
    by_key: dict[tuple[str, int | None], list[np.ndarray]] = defaultdict(list)
    for (row, budget), runs in scores.items():
        if row == BASE_ROW or len(runs) < 2:
            continue
        for metric in metrics:
            items = _common_items(runs, metric=metric)
            if items:
                by_key[(metric, budget)].append(_matrix(runs, metric, items))
    return {k: v for k, x in by_key.items() if (v := stats.pooled_seed_variance(x)) is not None}


def compare_board(scores: Scores, direction: dict[str, bool], metrics: list[str]
                  ) -> tuple[list[Comparison], dict[str, stats.NoiseFloor]]:
    comps: list[Comparison] = []
    full_key = next((k for k in scores if k[0] == "full"), None)
    pooled = _pooled_seed_variances(scores, metrics)
    for (row, budget), runs in sorted(scores.items(), key=lambda kv: (kv[0][0], kv[0][1] or -1)):
        for metric in metrics:
            items = _common_items(runs, metric=metric)
            if not items:
                continue
            a = _matrix(runs, metric, items)
            comps.append(Comparison(row, budget, metric, "self",
                                    stats.paired_difference(a, np.zeros((1, len(items))), _weights(items, metric))))
            if row == BASE_ROW:
                continue
            for base in BASELINES:
                key = full_key if base == "full" else (base, budget)
                if key is None or key not in scores or key[0] == row:
                    continue
                shared = _common_items(runs, scores[key], metric=metric)
                if not shared:
                    continue
                diff = stats.paired_difference(_matrix(runs, metric, shared), _matrix(scores[key], metric, shared),
                                               _weights(shared, metric), pool_seeds=True,
                                               seed_variance=pooled.get((metric, budget if len(runs) == 1 else key[1])))
                comps.append(Comparison(row, budget, metric, base, diff))
    by_test: dict[tuple[str, str], list[Comparison]] = defaultdict(list)
    for c in comps:
        if c.baseline != "self":
            by_test[(c.metric, c.baseline)].append(c)
    for (metric, _), group in by_test.items():
        for c, p in zip(group, stats.adjust_pvalues([c.diff.p_value for c in group])):
            c.p_adjusted = p
            c.mark = stats.mark(c.diff.estimate, p, direction.get(metric, True))
    return comps, noise_floors(scores, comps, metrics)


def noise_floors(scores: Scores, comps: list[Comparison], metrics: list[str]) -> dict[str, stats.NoiseFloor]:
    out = {}
    for metric in metrics:
        vs_random = [c for c in comps if c.metric == metric and c.baseline == "random"]
        if not vs_random:
            continue
        run_means, seeds = [], 1
        for (row, _), runs in scores.items():
            if row == "random":
                means = [float(np.mean(list(r[metric].values()))) for r in runs.values() if r.get(metric)]
                run_means += [m - np.mean(means) for m in means]  # centred per budget, pooled
                seeds = max(seeds, len(means))
        n_groups = sum(1 for k in scores if k[0] == "random")
        seed_sd = float(np.sqrt(np.sum(np.square(run_means)) / (len(run_means) - n_groups))) \
            if seeds > 1 and len(run_means) > n_groups else None
        # Signal (Heineman et al. 2025): the spread of the rows' differences from random (each at its own budget,
        # so budget effects cancel), over the seed noise.
        snr = None
        if seed_sd and len(vs_random) > 1:
            snr = float(np.std([c.diff.estimate for c in vs_random], ddof=1) / seed_sd)
        mdd = stats.min_detectable_difference(float(np.median([c.diff.se for c in vs_random])))
        out[metric] = stats.NoiseFloor(seed_sd, snr, mdd, int(np.median([c.diff.n_items for c in vs_random])),
                                       seeds)
    return out
