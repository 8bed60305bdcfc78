"""Paired statistics for the leaderboard: is a method's difference from a baseline real, and what is noise here?

Every evaluator stores per-item scores under a stable item ID, so two cells of a board can be compared on the same
items. A comparison of method A with baseline B (e.g. ``random``) at one budget uses the per-item score matrices
``A[s, i]`` and ``B[t, i]`` (runs s, t = seeds; i = the items both were scored on):

- the estimate is ``mean(A) - mean(B)`` (item weights allowed, so a benchmark average weights tasks equally);
- its standard error comes from a *hierarchical* paired bootstrap: each replicate resamples the runs of A and of B
  (seeds, independently: seed k of one method is not paired with seed k of another; run deviations are scaled by
  sqrt(S/(S-1)) so that resampling few runs does not shrink their variance) and, jointly for both, the items (the
  same item draws for A and B: the comparison is paired on items);
- the 95% interval and the two-sided p-value use Student's t on that standard error, with Satterthwaite's degrees
  of freedom from the item and seed variance components: with 3 seeds a seed-dominated difference has few degrees
  of freedom, and a plain percentile interval would cover far less than 95% (simulated in ``tests/test_stats.py``);
  ``p < alpha`` exactly when the interval excludes zero;
- with one run per side the seed level cannot be resampled and the interval covers item noise only; the board's
  header says so. When one side has a single run and the other several (a row still being computed against a
  3-seed ``random``), ``pool_seeds`` gives the single run the seed variance of the board (``seed_variance``: pooled
  over every row with several seeds at that budget, with its degrees of freedom; see
  :func:`pooled_seed_variance`), or without one the other side's estimate (the usual equal-variance assumption):
  one seed is then not mistaken for a reproducible effect. The board's pool is the safer one: three seeds of one
  row estimate its seed variance poorly (on alpaca-smol, ``random``'s came out zero at one budget while the pool
  of 13 rows said SD 0.006).

p-values of one metric across the board's methods are corrected with Benjamini-Hochberg (false discovery rate,
``scipy.stats.false_discovery_control``).

The noise floor per metric is what the board can resolve at its size: the seed-to-seed standard deviation of one
method (the baseline's), the signal-to-noise ratio across the board's methods (Heineman et al. 2025: spread of the
method means over the seed noise), and the minimum detectable difference, ``(z_{1-a/2} + z_{power}) * SE`` with SE
the median bootstrap standard error of the board's paired differences.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np
from scipy import stats as sps

ALPHA = 0.05
POWER = 0.8
N_BOOT = 4000


@dataclass(frozen=True)
class Difference:
    estimate: float
    ci_low: float
    ci_high: float
    p_value: float
    se: float
    n_items: int
    n_runs: tuple[int, int]
    df: float

    def as_dict(self) -> dict:
        return asdict(self)


def _weighted_means(x: np.ndarray, run_counts: np.ndarray, item_w: np.ndarray) -> np.ndarray:
    """Replicate means of ``x[s, i]`` with run multiplicities ``run_counts[b, s]`` and item weights
    ``item_w[b, i]`` (bootstrap multiplicities times the items' own weights)."""
    per_run = item_w @ x.T / item_w.sum(axis=1, keepdims=True)  # (B, S): each replicate's item mean per run
    return (per_run * run_counts).sum(axis=1) / run_counts.sum(axis=1)


def _inflate_runs(x: np.ndarray) -> np.ndarray:
    """Run deviations scaled by sqrt(S/(S-1)): resampling S runs otherwise shrinks their variance by (S-1)/S."""
    s = x.shape[0]
    if s < 2:
        return x
    centre = x.mean(axis=0, keepdims=True)
    return centre + (x - centre) * math.sqrt(s / (s - 1))


def _seed_variance(x: np.ndarray) -> float:
    """Method-of-moments variance of a run's effect on all items (beyond per-item noise), for the df estimate."""
    s, n = x.shape
    if s < 2:
        return 0.0
    between = np.var(x.mean(axis=1), ddof=1)
    within = np.mean(np.var(x, axis=0, ddof=1))
    return max(0.0, (n * between - within) / max(n - 1, 1))


def paired_difference(a: np.ndarray, b: np.ndarray, weights: np.ndarray | None = None, *, n_boot: int = N_BOOT,
                      alpha: float = ALPHA, seed: int = 0, pool_seeds: bool = False,
                      seed_variance: tuple[float, int] | None = None) -> Difference:
    """Difference of means of ``a`` (runs x items) and ``b`` (runs x items, same item order), with a hierarchical
    paired bootstrap interval and p-value. NaN entries are not allowed: pass only items both sides scored.

    The bootstrap gives the standard error; the interval and p-value use Student's t with Satterthwaite's degrees
    of freedom from the item and seed variance components. With 3 seeds a percentile interval would treat the seed
    variance as known and cover far less than 95% when seeds dominate the noise (checked by simulation in
    ``tests/test_stats.py``)."""
    a, b = np.atleast_2d(np.asarray(a, float)), np.atleast_2d(np.asarray(b, float))
    if a.shape[1] != b.shape[1]:
        raise ValueError(f"paired_difference: {a.shape[1]} items vs {b.shape[1]}: the sides must share items")
    if a.shape[1] == 0 or np.isnan(a).any() or np.isnan(b).any():
        raise ValueError("paired_difference needs at least one item and no missing scores")
    n_items, (sa, sb) = a.shape[1], (a.shape[0], b.shape[0])
    w = np.ones(n_items) if weights is None else np.asarray(weights, float)
    rng = np.random.default_rng(seed)
    item_w = rng.multinomial(n_items, np.full(n_items, 1 / n_items), size=n_boot) * w
    runs_a = rng.multinomial(sa, np.full(sa, 1 / sa), size=n_boot)
    runs_b = rng.multinomial(sb, np.full(sb, 1 / sb), size=n_boot)
    reps = _weighted_means(_inflate_runs(a), runs_a, item_w) - _weighted_means(_inflate_runs(b), runs_b, item_w)
    estimate = float(np.average(a.mean(axis=0) - b.mean(axis=0), weights=w))
    se = float(reps.std(ddof=1))
    # Satterthwaite: item component (n_items - 1 df) and each side's seed component (runs - 1 df).
    d = a.mean(axis=0) - b.mean(axis=0)
    parts = [(float(np.var(d, ddof=1)) / n_items if n_items > 1 else 0.0, n_items - 1),
             (_seed_variance(a) / sa, sa - 1), (_seed_variance(b) / sb, sb - 1)]
    if pool_seeds and min(sa, sb) == 1 < max(sa, sb):  # the single run's seed variance, borrowed
        many = max(sa, sb)
        if seed_variance is not None:  # the board's pooled estimate, and the many-run side's own
            borrowed, k = seed_variance
            parts = [parts[0], (borrowed, k), parts[1] if sa > 1 else parts[2]]
        else:  # the other side's: one estimate scaled for both sides, one component with its df
            borrowed = _seed_variance(a if sa > 1 else b)
            parts = [parts[0], (borrowed * (1 / many + 1), many - 1)]
        se = math.sqrt(se * se + borrowed)
    num = sum(v for v, _ in parts) ** 2
    den = sum(v * v / k for v, k in parts if k > 0 and v > 0)
    df = max(1.0, num / den) if den > 0 else max(1.0, n_items - 1.0)
    if se == 0:
        p = float(estimate == 0)
        lo = hi = estimate
    else:
        half = float(sps.t.ppf(1 - alpha / 2, df)) * se
        lo, hi = estimate - half, estimate + half
        p = float(2 * sps.t.sf(abs(estimate) / se, df))
    return Difference(estimate, lo, hi, p, se, n_items, (sa, sb), float(df))


def pooled_seed_variance(runs: list[np.ndarray]) -> tuple[float, int] | None:
    """The seed variance pooled over several rows' score matrices (runs x items; rows with one run add nothing),
    each row's estimate weighted by its degrees of freedom (runs - 1), with the summed df; None without any."""
    parts = [(_seed_variance(x), x.shape[0] - 1) for x in runs if x.shape[0] > 1]
    df = sum(k for _, k in parts)
    return (sum(v * k for v, k in parts) / df, df) if df else None


def adjust_pvalues(p_values: list[float]) -> list[float]:
    """Benjamini-Hochberg adjusted p-values (false discovery rate across the methods of one metric)."""
    if not p_values:
        return []
    return [float(p) for p in sps.false_discovery_control(np.asarray(p_values, float), method="bh")]


def mark(diff: float, p_adjusted: float, higher_is_better: bool, alpha: float = ALPHA) -> str:
    """▲ significantly better than the baseline, ▼ significantly worse, '' otherwise."""
    if not (p_adjusted < alpha) or diff == 0 or math.isnan(diff):
        return ""
    return "▲" if (diff > 0) == higher_is_better else "▼"


@dataclass(frozen=True)
class NoiseFloor:
    seed_sd: float | None  # seed-to-seed SD of the baseline's run means
    snr: float | None  # SD of the method means across the board / seed SD
    mdd: float | None  # minimum detectable difference at this board's items and seeds
    n_items: int
    n_seeds: int

    def as_dict(self) -> dict:
        return asdict(self)

    def sentence(self) -> str:
        if self.mdd is None:
            return "no paired comparison yet"
        s = f"differences below {self.mdd:.3g} are noise at this size ({self.n_items} items, {self.n_seeds} seed(s)"
        s += f"; seed SD {self.seed_sd:.3g}" if self.seed_sd is not None else "; seed SD unknown with one seed"
        s += f"; SNR {self.snr:.2f})" if self.snr is not None else ")"
        return s


def min_detectable_difference(se: float, alpha: float = ALPHA, power: float = POWER) -> float:
    return float((sps.norm.ppf(1 - alpha / 2) + sps.norm.ppf(power)) * se)
