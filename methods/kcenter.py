"""k-center greedy coreset: Sener & Savarese 2018, "Active Learning for Convolutional Neural Networks: A Core-Set
Approach" (ICLR 2018), as applied to instruction data by Chen et al. 2023, "Maybe Only 0.5% Data is Needed"
(arXiv 2305.09246) and by MoDS (Du et al. 2023, arXiv 2311.15653) for its seed set.

Reference followed: MoDS ``diverse-data-selection/kcenter_greedy.py`` @7d179bd (Google's active-learning
``kCenterGreedy``): Euclidean distances, a first centre, then repeatedly the point farthest from its nearest centre
(``np.argmax``: ties to the lowest index); the first centre counts towards the ``budget``. Deviations:

* features: the shared sentence embeddings (``all-MiniLM-L6-v2`` over instruction+input+output, L2-normalised),
  not MoDS' ``bert-base-uncased`` [CLS] of the instruction; ``fields``/``model_name`` select other text;
* the first centre is ``first`` (a pool index) or by default drawn with the cell's seeded generator (MoDS:
  unseeded ``np.random.choice``); the record says which;
* picks are those of exact float64 distances ``||x - c||`` (:func:`kcenter_greedy_exact`), never of the Gram trick
  whose rounding yields NaNs (DiverseEvol) or wrong ties. For speed the scan uses float32 Gram-form squared
  distances (one matrix-vector product per pick) with a rigorous error bound; the points within the bound of the
  maximum get exact float64 distances to all centres (cached incrementally) and the pick is their exact argmax.
  Pick distances and the coverage radius are exact;
* already-selected points are masked out of the argmax: exact duplicates can never be picked twice (MoDS asserts).
* with ``fields`` free of the output, rows with an empty response are points too (they may become centres); the
  harness skips them in the pick order, so the selection is the first ``budget`` trainable picks (selbench.data).
"""

from __future__ import annotations

import numpy as np

from selbench.registry import register_method
from selbench.select import Selection

_U32, _U64 = 2.0 ** -24, 2.0 ** -53


def _dist_to(X: np.ndarray, c: np.ndarray) -> np.ndarray:
    """Exact float64 distances of the rows of ``X`` to ``c`` (the reference; per row independent of the shape)."""
    diff = X - c
    return np.sqrt(np.einsum("ij,ij->i", diff, diff))


def _check(n: int, k: int, already: list[int], first) -> None:
    if k < 0 or k + len(set(already)) > n:
        raise ValueError(f"k-center: cannot pick {k} new points from {n} with {len(already)} already selected")
    if k and not already and first is None:
        raise ValueError("k-center: need a first centre or already-selected points")


def kcenter_greedy_exact(X, k: int, first: int | None = None, already_selected=()):
    """The plain float64 algorithm (one full distance pass per pick): the reference ``kcenter_greedy`` equals."""
    X = np.asarray(X, dtype=np.float64)
    already = [int(i) for i in already_selected]
    _check(X.shape[0], k, already, first)
    taken, min_dist = np.zeros(X.shape[0], dtype=bool), np.full(X.shape[0], np.inf)
    for c in already:
        min_dist, taken[c] = np.minimum(min_dist, _dist_to(X, X[c])), True
    picks, pick_dist = [], []
    for _ in range(k):
        ind = int(first) if not picks and not already else int(np.argmax(np.where(taken, -1.0, min_dist)))
        picks.append(ind)  # argmax: ties -> lowest index
        pick_dist.append(float(min_dist[ind]))
        min_dist, taken[ind] = np.minimum(min_dist, _dist_to(X, X[ind])), True
    return picks, np.asarray(pick_dist), min_dist


def kcenter_greedy(X, k: int, first: int | None = None,
                   already_selected: list[int] | np.ndarray = ()) -> tuple[list[int], np.ndarray, np.ndarray]:
    """Greedy k-center over the rows of ``X``: the picks of :func:`kcenter_greedy_exact`, at memory speed.

    Returns ``(picks, pick_dist, min_dist)``: the ``k`` new indices in pick order; each one's exact distance to its
    nearest centre when picked (``inf`` for a first centre without existing centres); every row's final distance to
    its nearest centre, exact near the maximum (``max`` = the exact coverage radius), else its square to float32.
    Existing centres are ``already_selected`` (DiverseEvol's labelled set); with none, ``first`` is the first."""
    X = np.asarray(X)
    n, d = X.shape
    already = list(dict.fromkeys(int(i) for i in already_selected))
    _check(n, k, already, first)
    Xf = np.ascontiguousarray(X, dtype=np.float32)
    norm = np.sqrt(sq := np.einsum("ij,ij->i", X, X, dtype=np.float64))
    # |approx - exact| <= A |x||c| + B (|x| + |c|)^2 on squared distances: float32 dot product (any summation
    # order, gamma_d), the float32 cast of float64 input, float64 norms and the reference's own float64 rounding,
    # each doubled; the B term also separates values that float64 sqrt could round to one tie.
    gam = d * _U32 / (1 - d * _U32)
    A, B = 4 * (gam * (1 + _U32) ** 2 + 4 * _U32), 2 * (2 * d * _U64 + 8 * _U64)
    approx = np.full(n, np.inf)  # min squared distance (float64 combination of the float32 dot), -inf = taken
    centres = np.empty((len(already) + k, d))
    n_c, cmax, bound, ex_val, ex_n = 0, -1.0, None, np.full(n, np.inf), np.zeros(n, dtype=np.int64)

    def add_centre(i: int) -> None:
        nonlocal n_c, cmax, bound
        s = sq + sq[i] - 2.0 * (Xf @ Xf[i]).astype(np.float64)
        np.minimum(approx, s, out=approx)
        approx[i] = -np.inf
        centres[n_c] = X[i]
        n_c += 1
        if norm[i] > cmax:
            cmax = norm[i]
            bound = A * norm * cmax + B * (norm + cmax) ** 2

    def exact(cand: np.ndarray) -> np.ndarray:  # exact min distance over all centres, cached incrementally
        for i in cand:
            if ex_n[i] < n_c:
                ex_val[i] = min(ex_val[i], _dist_to(centres[ex_n[i]:n_c], X[i].astype(np.float64)).min())
                ex_n[i] = n_c
        return ex_val[cand]

    def candidates() -> np.ndarray:
        return np.flatnonzero(approx + bound >= np.max(approx - bound))

    for c in already:
        add_centre(c)
    picks, pick_dist = [], []
    for _ in range(k):
        if n_c == 0:
            ind, dist = int(first), np.inf
        else:
            cand = candidates()
            vals = exact(cand)
            j = int(np.argmax(vals))  # ties -> lowest index (cand is ascending)
            ind, dist = int(cand[j]), float(vals[j])
        picks.append(ind)
        pick_dist.append(dist)
        add_centre(ind)
    min_dist = np.where(approx == -np.inf, 0.0, np.sqrt(np.maximum(approx, 0.0))) if n_c else np.full(n, np.inf)
    if n_c and np.isfinite(approx).any():
        cand = candidates()
        min_dist[cand] = exact(cand)
    return picks, np.asarray(pick_dist), min_dist


def coverage_radius(X: np.ndarray, selected) -> float:
    """max over rows of ``X`` of the distance to the nearest selected row (the k-center objective), exact."""
    return float(kcenter_greedy_exact(X, 0, already_selected=list(selected))[2].max())


@register_method("kcenter", needs_output=lambda p: "output" in p["fields"],
                 family="small-model", aspect="diversity",
                 description="k-center greedy coreset over sentence embeddings (Euclidean; given or seeded first).",
                 citation="Sener & Savarese 2018 (ICLR), core-set active learning; Chen et al. 2023, Maybe Only "
                          "0.5% Data is Needed (arXiv 2305.09246); MoDS (arXiv 2311.15653)",
                 reference="CASIA-LM/MoDS diverse-data-selection/kcenter_greedy.py @7d179bd")
def select_kcenter(pool, budget, ctx, model_name="all-MiniLM-L6-v2", fields="instruction+input+output",
                   first: int | None = None):
    if budget == 0:
        return Selection([])
    if first is not None and not (isinstance(first, int) and 0 <= first < len(pool)):
        raise ValueError(f"kcenter: first must be a pool index in [0, {len(pool)}), got {first!r}")
    X = ctx.signals.sentence_embeddings(pool, model_name=model_name, fields=fields, normalize=True)
    how, first = ("seeded", int(ctx.rng.integers(len(pool)))) if first is None else ("given", first)
    picks, pick_dist, min_dist = kcenter_greedy(X, budget, first=first)
    radius = float(min_dist.max())
    return Selection([pool.examples[i].id for i in picks],
                     notes=[f"first centre: pool index {first} ({how}); final coverage radius {radius:.4f}"],
                     extras={"coverage_radius": radius, "first_centre": first, "first_centre_source": how,
                             "pick_distance": [None if not np.isfinite(d) else round(float(d), 6)
                                               for d in pick_dist]})
