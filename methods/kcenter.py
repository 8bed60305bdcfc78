"""k-center greedy coreset: Sener & Savarese 2018, "Active Learning for Convolutional Neural Networks: A Core-Set
Approach" (ICLR 2018), as applied to instruction data by Chen et al. 2023, "Maybe Only 0.5% Data is Needed"
(arXiv 2305.09246) and by MoDS (Du et al. 2023, arXiv 2311.15653) for its seed set.

Reference followed: MoDS ``diverse-data-selection/kcenter_greedy.py`` (a port of Google's active-learning
``kCenterGreedy``): Euclidean distances, a random first centre, then repeatedly the point whose distance to its
nearest centre is largest (``np.argmax``: ties go to the lowest index), updating the min-distances after each pick.
The first centre counts towards the ``budget`` as in MoDS. Deviations, all documented:

* features are the shared sentence embeddings (``all-MiniLM-L6-v2`` over instruction+input+output, L2-normalised)
  rather than MoDS' ``bert-base-uncased`` [CLS] of the instruction; ``fields``/``model_name`` select other text;
* the first centre is drawn with the cell's seeded generator (MoDS: unseeded ``np.random.choice``);
* distances are computed as ``||x - c||`` directly in float64, never with the Gram trick
  ``sqrt(|x|^2 + |c|^2 - 2 x.c)`` whose rounding yields NaNs (DiverseEvol) or tiny negatives;
* already-selected points are masked out of the argmax, so exact duplicates in the pool (all min-distances 0)
  can never be picked twice (MoDS would fail its assertion).
"""

from __future__ import annotations

import numpy as np

from selbench.registry import register_method
from selbench.select import Selection


def _dist_to(X: np.ndarray, c: np.ndarray) -> np.ndarray:
    diff = X - c
    return np.sqrt(np.einsum("ij,ij->i", diff, diff))


def kcenter_greedy(X: np.ndarray, k: int, first: int | None = None,
                   already_selected: list[int] | np.ndarray = ()) -> tuple[list[int], np.ndarray, np.ndarray]:
    """Greedy k-center over the rows of ``X``.

    Returns ``(picks, pick_dist, min_dist)``: the ``k`` new indices in pick order; for each, its distance to the
    nearest centre when it was picked (``inf`` for a first centre chosen without any existing centre); and every
    row's final distance to its nearest centre (its max is the coverage radius). Existing
    centres are ``already_selected`` (DiverseEvol's labelled set); with none, ``first`` is the first centre.
    """
    X = np.asarray(X, dtype=np.float64)
    n = X.shape[0]
    already = [int(i) for i in already_selected]
    if k < 0 or k + len(set(already)) > n:
        raise ValueError(f"k-center: cannot pick {k} new points from {n} with {len(already)} already selected")
    taken = np.zeros(n, dtype=bool)
    min_dist = np.full(n, np.inf)
    for c in already:
        min_dist = np.minimum(min_dist, _dist_to(X, X[c]))
        taken[c] = True
    picks: list[int] = []
    pick_dist: list[float] = []
    for _ in range(k):
        if not picks and not already:
            if first is None:
                raise ValueError("k-center: need a first centre or already-selected points")
            ind = int(first)
        else:
            masked = np.where(taken, -1.0, min_dist)
            ind = int(np.argmax(masked))  # ties -> lowest index
        pick_dist.append(float(min_dist[ind]))
        picks.append(ind)
        taken[ind] = True
        min_dist = np.minimum(min_dist, _dist_to(X, X[ind]))
    return picks, np.asarray(pick_dist), min_dist


def coverage_radius(X: np.ndarray, selected) -> float:
    """max over rows of ``X`` of the distance to the nearest selected row (the k-center objective)."""
    X = np.asarray(X, dtype=np.float64)
    min_dist = np.full(X.shape[0], np.inf)
    for c in selected:
        min_dist = np.minimum(min_dist, _dist_to(X, X[c]))
    return float(min_dist.max())


@register_method("kcenter", family="small-model", aspect="diversity",
                 description="k-center greedy coreset over sentence embeddings (Euclidean; seeded first centre).",
                 citation="Sener & Savarese 2018 (ICLR), core-set active learning; Chen et al. 2023, Maybe Only "
                          "0.5% Data is Needed (arXiv 2305.09246); MoDS (arXiv 2311.15653)",
                 reference="CASIA-LM/MoDS diverse-data-selection/kcenter_greedy.py @7d179bd",
                 model_name="all-MiniLM-L6-v2", fields="instruction+input+output")
def select_kcenter(pool, budget, ctx, model_name="all-MiniLM-L6-v2", fields="instruction+input+output"):
    if budget == 0:
        return Selection([])
    X = ctx.signals.sentence_embeddings(pool, model_name=model_name, fields=fields, normalize=True)
    first = int(ctx.rng.integers(len(pool)))
    picks, pick_dist, min_dist = kcenter_greedy(X, budget, first=first)
    radius = float(min_dist.max())
    return Selection([pool.examples[i].id for i in picks],
                     notes=[f"first centre: pool index {first} (seeded); final coverage radius {radius:.4f}"],
                     extras={"coverage_radius": radius, "first_centre": first,
                             "pick_distance": [None if not np.isfinite(d) else round(float(d), 6)
                                               for d in pick_dist]})
