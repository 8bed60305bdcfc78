"""Nuggets: Li et al. 2023, "One Shot Learning as Instruction Data Prospector for Large Language Models"
(arXiv 2312.10302).

Reference implementation: pldlgb/nuggets @c7e429f (``instruction_main.py``, ``tasks/alpaca.py``,
``kmeans_sample.py``). Golden score of candidate ``i`` = share of anchor tasks whose response log-likelihood
(sum over response tokens) is strictly higher one-shot, with ``i`` as the demonstration, than zero-shot
(``alpaca.py`` L114-131). Highest golden score selected.

Differences from the reference, on purpose:

* Demonstration: the reference pushes the demo's key/values into the KV cache (``kv_iter=1``, so its
  meta-optimizer is a no-op) and scores the anchor after it. We **concatenate**: the one-shot sequence is the chat
  conversation ``[user: demo prompt, assistant: demo response, user: anchor prompt]`` + generation header, and the
  anchor response is scored after it; zero-shot is ``[user: anchor prompt]``. Unlike the KV-cache injection the
  anchor's own template framing (and any system prompt) appears once, before the demo, and positions continue.
* Scored tokens: the anchor response as the chat template emits it (end-of-turn token included), the same tokens
  zero- and one-shot. Sequences over ``max_len`` drop context tokens from the left so the whole response is still
  scored (the reference truncates each text to 200 tokens).
* Anchors: ``anchors`` (default 8; the reference uses 100) pool examples nearest to ``KMeans(anchors,
  random_state=seed, n_init=10)`` centroids over all-MiniLM-L6-v2 sentence embeddings (the reference embeds with the
  base LLaMA, mean-pooled with padding). Anchors are also candidates, as in the reference.
* Count: exactly ``budget`` by golden score (the reference thresholds at 0.5..0.9); ties broken by the mean
  log-likelihood gain over anchors, then pool order. Cost: ``len(pool) * anchors`` forwards, batched.

``scores``: the golden score (share of anchors improved, 0..1).
"""

from __future__ import annotations

import numpy as np

from selbench.registry import register_method
from selbench.select import Selection
from selbench.signals import conversation_pair


def nearest_to_centroids(emb: np.ndarray, n: int, seed: int) -> list[int]:
    from sklearn.cluster import KMeans

    n = min(n, len(emb))
    km = KMeans(n_clusters=n, random_state=seed, n_init=10).fit(emb)
    chosen: list[int] = []
    for c in km.cluster_centers_:
        d = np.linalg.norm(emb - c, axis=1)
        for i in np.argsort(d, kind="stable"):
            if int(i) not in chosen:
                chosen.append(int(i))
                break
    return chosen


def _turns(e) -> list[dict[str, str]]:
    return [{"role": "user", "content": e.prompt}, {"role": "assistant", "content": e.output}]


@register_method("nuggets", family="indicator-based", aspect="importance",
                 description="Nuggets golden score: share of anchor tasks whose response log-likelihood improves "
                             "with the candidate as a one-shot demonstration.",
                 citation="Li et al. 2023, One Shot Learning as Instruction Data Prospector (arXiv 2312.10302)",
                 reference="pldlgb/nuggets @c7e429f (golden score, kv_iter=1), demo concatenated not KV-injected")
def select_nuggets(pool, budget, ctx, anchors=8):
    sig = ctx.signals
    tok = (sig.base_model or ctx.base_model).tokenizer
    emb = sig.sentence_embeddings(pool)
    anchor_idx = nearest_to_centroids(emb, int(anchors), int(ctx.seed))
    ex = pool.examples
    zero = [conversation_pair(tok, _turns(ex[a])) for a in anchor_idx]
    one = [conversation_pair(tok, _turns(ex[i]) + _turns(ex[a])) for i in range(len(pool)) for a in anchor_idx]
    sums = lambda ls: np.array([float(np.sum(x, dtype=np.float64)) for x in ls])  # noqa: E731 (NLL sums)
    nll0 = sums(sig.pair_token_losses(zero, truncation="left", name="nuggets[zero-shot]"))
    nll1 = sums(sig.pair_token_losses(one, truncation="left", name="nuggets[one-shot]"))
    nll1 = nll1.reshape(len(pool), len(anchor_idx))
    gain = nll0[None, :] - nll1  # log-likelihood one-shot minus zero-shot
    golden = (gain > 0).mean(axis=1)
    mean_gain = gain.mean(axis=1)
    order = sorted(range(len(pool)), key=lambda i: (-golden[i], -mean_gain[i], i))
    scores = {ex[i].id: float(golden[i]) for i in range(len(pool))}
    return Selection([ex[i].id for i in order[:budget]], scores=scores,
                     notes=[f"nuggets: {len(anchor_idx)} anchors (KMeans over all-MiniLM-L6-v2), one-shot demo "
                            "concatenated as a chat turn (reference: KV-cache injection)"],
                     extras={"anchors": [ex[a].id for a in anchor_idx]})
