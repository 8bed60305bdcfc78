"""`diversity`: two diversity selectors without a trained model, one method with a ``variant`` parameter.

``variant: vendi``: greedy maximisation of the Vendi score (Friedman & Dieng 2023, TMLR, arXiv 2210.02410). The
score follows vertaix/Vendi-Score @c791c30 ``vendi.score_K`` with q = 1: ``exp(-sum p log p)`` over the positive
eigenvalues ``p`` of ``K / n``, here with the cosine kernel ``K = X X^T`` over L2-normalised sentence embeddings
(the kernel DiverseEvol's ``eval.py`` uses for its Vendi numbers). Greedy: start from a seeded random example (every
singleton scores 1), then repeatedly add the candidate whose addition gives the highest Vendi score (ties: lowest
pool index). Efficient exact evaluation of a candidate: with ``X_S^T X_S = U diag(mu) U^T``, the non-zero
eigenvalues of ``K_{S+e}`` are those of the (r+1)x(r+1) matrix ``diag(mu_r, 0) + w w^T``, ``w = (U_r^T x_e, ||x_e -
U_r U_r^T x_e||)``. To keep CPU pools tractable each step evaluates a seeded random sample of ``ceil(N/k *
ln(1/eps))`` remaining candidates (stochastic greedy, Mirzasoleiman et al. 2015, "Lazier Than Lazy Greedy"; ``eps``
default 0.01), or all of them when that is as many or ``eps = 0`` (plain greedy). The Vendi paper defines the score,
not a selection rule: this greedy is the benchmark's own selector.

``variant: mtld``: rank by MTLD lexical diversity of the response (McCarthy & Jarvis 2010, Behavior Research Methods
42(2)), as used among InstructMining's indicators (Cao et al. 2023, arXiv 2307.06290). Words are lowercase ``\\w+``
tokens (apostrophes joined). Forward pass: the running type-token ratio is tracked; when it falls to the threshold
0.72 or below a factor is counted and the count restarts; the leftover segment adds the partial factor ``(1 - TTR) /
(1 - 0.72)``; MTLD = words / factors. The reported value is the mean of the forward and backward (reversed text)
passes. A pass with zero factors (every word unique) has no finite MTLD: we use the word count, a lower bound of its
factor length. Empty responses score 0. Highest MTLD first; ties: lower pool index.
"""

from __future__ import annotations

import math
import re

import numpy as np

from selbench.registry import register_method
from selbench.select import Selection

# ------------------------------------------------------------------------------------------------- Vendi
def vendi_score(X: np.ndarray) -> float:
    """Vendi score (q = 1) of the rows of ``X`` under the cosine kernel."""
    X = np.asarray(X, dtype=np.float64)
    X = X / np.maximum(np.linalg.norm(X, axis=1, keepdims=True), 1e-12)
    n = len(X)
    w = np.linalg.eigvalsh(X @ X.T / n)
    p = w[w > 0]
    return float(np.exp(-(p * np.log(p)).sum()))


def _entropies(mu: np.ndarray, U: np.ndarray, Xc: np.ndarray, n_new: int, chunk_elems: int = 2_000_000
               ) -> np.ndarray:
    """Eigenvalue entropy of K_{S+e}/n_new for each candidate row of ``Xc`` (see module docstring)."""
    r = len(mu)
    z = Xc @ U  # [m, r]
    rho = np.sqrt(np.maximum((Xc * Xc).sum(1) - (z * z).sum(1), 0.0))
    w = np.concatenate([z, rho[:, None]], axis=1)  # [m, r+1]
    base = np.diag(np.concatenate([mu, [0.0]]))
    out = np.empty(len(Xc))
    step = max(1, chunk_elems // (r + 1) ** 2)
    for a in range(0, len(Xc), step):
        wb = w[a:a + step]
        lam = np.linalg.eigvalsh(base[None] + wb[:, :, None] * wb[:, None, :]) / n_new
        lam = np.where(lam > 0, lam, 1.0)  # p log p -> 0 for p <= 0 (upstream keeps p > 0)
        out[a:a + step] = -(lam * np.log(lam)).sum(1)
    return out


def vendi_greedy(X: np.ndarray, k: int, first: int, rng: np.random.Generator | None = None, eps: float = 0.01
                 ) -> tuple[list[int], list[float]]:
    """Greedy Vendi maximisation. Returns the picks in order and the Vendi score after each pick."""
    X = np.asarray(X, dtype=np.float64)
    X = X / np.maximum(np.linalg.norm(X, axis=1, keepdims=True), 1e-12)
    n, d = X.shape
    picks, traj = [int(first)], [1.0]
    taken = np.zeros(n, dtype=bool)
    taken[first] = True
    C = np.outer(X[first], X[first])
    m = n if eps <= 0 else math.ceil(n / k * math.log(1.0 / eps))
    while len(picks) < k:
        remaining = np.flatnonzero(~taken)
        cand = remaining if m >= len(remaining) or rng is None else \
            np.sort(rng.choice(remaining, size=m, replace=False))
        mu, U = np.linalg.eigh(C)
        keep = mu > max(mu.max(), 1e-300) * 1e-10
        H = _entropies(mu[keep], U[:, keep], X[cand], len(picks) + 1)
        j = int(cand[int(np.argmax(H))])  # ties -> lowest pool index (cand is sorted)
        picks.append(j)
        traj.append(float(np.exp(H.max())))
        taken[j] = True
        C += np.outer(X[j], X[j])
    return picks, traj


def select_vendi(pool, budget, ctx, eps, model_name, fields):
    if budget == 0:
        return Selection([])
    X = ctx.signals.sentence_embeddings(pool, model_name=model_name, fields=fields, normalize=True)
    rng = ctx.rng
    first = int(rng.integers(len(pool)))
    picks, traj = vendi_greedy(X, budget, first, rng=rng, eps=eps)
    final = vendi_score(X[picks])
    return Selection([pool.examples[i].id for i in picks],
                     notes=[f"Vendi score of the selection {final:.3f} (seeded first pick: pool index {first})"],
                     extras={"vendi": final, "vendi_trajectory": [round(v, 6) for v in traj]})


# ------------------------------------------------------------------------------------------------- MTLD
_WORD = re.compile(r"\w+(?:'\w+)*")


def _mtld_pass(words: list[str], threshold: float) -> float:
    factors, types, count, ttr = 0.0, set(), 0, 1.0
    for w in words:
        count += 1
        types.add(w)
        ttr = len(types) / count
        if ttr <= threshold:
            factors += 1
            types, count, ttr = set(), 0, 1.0
    if count:
        factors += (1.0 - ttr) / (1.0 - threshold)
    return len(words) / factors if factors > 0 else float(len(words))


def mtld(text: str, threshold: float = 0.72) -> float:
    words = _WORD.findall(text.lower())
    if not words:
        return 0.0
    return (_mtld_pass(words, threshold) + _mtld_pass(words[::-1], threshold)) / 2.0


def select_mtld(pool, budget, threshold):
    vals = np.array([mtld(e.output, threshold) for e in pool])
    order = np.lexsort((np.arange(len(vals)), -vals))[:budget]
    return Selection([pool.examples[i].id for i in order],
                     scores={e.id: float(v) for e, v in zip(pool.examples, vals)})


# ------------------------------------------------------------------------------------------------- the method
@register_method("diversity", family="small-model", aspect="diversity",
                 description="Diversity selectors: greedy Vendi-score maximisation over sentence embeddings "
                             "(variant vendi) or the responses with the highest MTLD lexical diversity (variant mtld).",
                 citation="Friedman & Dieng 2023, The Vendi Score (TMLR, arXiv 2210.02410); McCarthy & Jarvis 2010, "
                          "MTLD (Behavior Research Methods 42(2)), an InstructMining indicator (arXiv 2307.06290)",
                 reference="vendi: vertaix/Vendi-Score @c791c30 vendi.score_K (q=1), stochastic greedy "
                           "(Mirzasoleiman et al. 2015), greedy selector ours; mtld: paper, no reference "
                           "selection code")
def select_diversity(pool, budget, ctx, variant="vendi", eps=0.01, model_name="all-MiniLM-L6-v2",
                     fields="instruction+input+output", threshold=0.72):
    if variant == "vendi":
        return select_vendi(pool, budget, ctx, float(eps), model_name, fields)
    if variant == "mtld":
        return select_mtld(pool, budget, float(threshold))
    raise ValueError(f"diversity: params.variant must be 'vendi' or 'mtld', got {variant!r}")
