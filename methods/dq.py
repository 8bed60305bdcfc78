"""Dataset Quantization: Zhou et al. 2023, "Dataset Quantization" (ICCV 2023, arXiv 2308.10524), language path.

Reference followed: magic-research/Dataset_Quantization @24a2a77, ``alpaca_sample.py`` with
``dq/methods/methods_utils/submodular_function.py`` (GraphCut) and ``submodular_optimizer.py`` (NaiveGreedy):

* ``k`` bins of ``N // k`` examples are built one after another, each on the examples no earlier bin took, by
  naive greedy maximisation of GraphCut with ``lambda = 1`` and dot-product similarity ``s`` over the remaining
  pool R: the gain of e given the bin S so far is ``lambda * sum_{i in R} s(i, e) - 2 * sum_{j in S} s(j, e)``
  (the ``- s(e, e)`` term is omitted, as upstream); ``argmax`` ties go to the first remaining index;
* then ``budget // k`` examples are drawn uniformly without replacement inside every bin.

Deviations (documented): embeddings are the shared ``all-MiniLM-L6-v2`` sentence embeddings (L2-normalised, so dot
= cosine, as with the unit-norm ``text-embedding-ada-002`` upstream), computed in float64; sampling uses the cell's
seeded generator (upstream: unseeded ``np.random.choice``). Upstream returns only ``k * (budget // k)`` examples;
to return exactly ``budget`` the remaining ``budget % k`` draws go one each to distinct bins chosen with the seeded
generator among bins with room left. Only when the bins cannot hold the budget (budget > k * (N // k)) do the
``N % k`` examples that upstream leaves outside every bin supply the rest (seeded). ``bins`` defaults to 10 (the
reference's default; its released Alpaca files use 5); with a budget below ``bins``, ``k = budget`` so that every
bin contributes exactly one example.
"""

from __future__ import annotations

import numpy as np

from selbench.registry import register_method
from selbench.select import Selection


def graphcut_bin(E: np.ndarray, size: int, lam: float = 1.0) -> list[int]:
    """Naive-greedy GraphCut selection of ``size`` rows of ``E`` (positions into ``E``), in pick order."""
    S = E @ E.T
    col = lam * S.sum(0)
    acc = np.zeros(len(E))  # sum over the selected rows of s(j, e)
    taken = np.zeros(len(E), dtype=bool)
    picks = []
    for _ in range(size):
        gain = np.where(taken, -np.inf, col - 2.0 * acc)
        j = int(np.argmax(gain))
        picks.append(j)
        taken[j] = True
        acc += S[j]
    return picks


def dq_bins(E: np.ndarray, k: int, lam: float = 1.0) -> tuple[list[np.ndarray], np.ndarray]:
    """The ``k`` bins (pool indices) built sequentially on the remaining pool, and the leftover indices."""
    E = np.asarray(E, dtype=np.float64)
    n = len(E)
    size = n // k
    remaining = np.arange(n)
    bins = []
    for _ in range(k):
        local = graphcut_bin(E[remaining], size, lam)
        bins.append(remaining[local])
        remaining = np.setdiff1d(remaining, remaining[local])  # keeps pool order, as np.delete upstream
    return bins, remaining


def dq_sample(bins: list[np.ndarray], leftover: np.ndarray, budget: int, rng: np.random.Generator
              ) -> tuple[list[int], list[int]]:
    """Seeded uniform draws: ``budget // k`` per bin, the remainder spread over distinct bins with room (then the
    leftover). Returns the selected pool indices (bin by bin) and the count drawn from each bin."""
    k = len(bins)
    per = [budget // k] * k
    extra = budget - sum(per)
    room = [b for b in range(k) if len(bins[b]) > per[b]]
    if extra and room:
        for b in rng.choice(room, size=min(extra, len(room)), replace=False).tolist():
            per[b] += 1
    extra = budget - sum(per)
    out = []
    for b in range(k):
        out += rng.choice(bins[b], size=per[b], replace=False).tolist()
    if extra:
        if extra > len(leftover):
            raise ValueError(f"DQ: cannot draw {budget} examples from the bins and leftover")
        out += rng.choice(leftover, size=extra, replace=False).tolist()
    return [int(i) for i in out], per


@register_method("dq", family="small-model", aspect="diversity",
                 description="Dataset Quantization: GraphCut bins over sentence embeddings, uniform draws per bin.",
                 citation="Zhou et al. 2023, Dataset Quantization (ICCV 2023, arXiv 2308.10524)",
                 reference="magic-research/Dataset_Quantization @24a2a77 alpaca_sample.py (GraphCut, NaiveGreedy)")
def select_dq(pool, budget, ctx, bins=10, lam=1.0, model_name="all-MiniLM-L6-v2",
              fields="instruction+input+output"):
    if budget == 0:
        return Selection([])
    k = max(1, min(int(bins), budget, len(pool)))
    E = ctx.signals.sentence_embeddings(pool, model_name=model_name, fields=fields, normalize=True)
    bin_idx, leftover = dq_bins(E, k, lam)
    picked, per = dq_sample(bin_idx, leftover, budget, ctx.rng)
    bin_of = {int(i): b for b, idx in enumerate(bin_idx) for i in idx}
    notes = [f"{k} bins of {len(pool) // k}; draws per bin {per}"
             + (f"; {budget - sum(per)} from the {len(leftover)} unbinned examples" if budget > sum(per) else "")]
    if k != bins:
        notes.append(f"bins lowered from {bins} to {k} (budget or pool smaller than bins)")
    return Selection([pool.examples[i].id for i in picked], notes=notes,
                     extras={"bins": k, "per_bin": per, "bin_of_selected": [bin_of.get(i, -1) for i in picked]})
