"""InstructMining: Cao et al. 2023, "Instruction Mining: Instruction Data Selection for Tuning Large Language
Models" (arXiv 2307.06290).

No official code is known; we apply the paper's published linear rule for LLaMA-2-7B (the later version):

    log L_eval  ~  1.0694 - 0.1498 * Rew + 8.257e-5 * Len - 0.9350 * Knn6

and select the ``budget`` examples with the **lowest** predicted loss (ties -> earlier pool index). The paper
then picks the subset size with BlendSearch; the board fixes the budget instead.

Indicators:

* ``Len``: response length in base-model tokens (the rule's length indicator; the paper counts response tokens).
* ``Knn6``: mean Euclidean distance to the 6 nearest other examples in all-MiniLM-L6-v2 embedding space
  (L2-normalised, instruction + input + output); the paper uses SentenceBERT embeddings.
* ``Rew``: the paper uses the OpenAssistant DeBERTa reward model, which is not available offline. It is replaced
  by ``reward_substitute`` and the substitution is recorded in ``Selection.notes``:
  ``"neg_ppl_z"`` (default) = standardised negative response perplexity under the base model (z-score over the
  pool), ``"neg_loss_z"`` = standardised negative mean response NLL, ``"none"`` = the term is dropped (Rew = 0).
  Examples without a perplexity (prompt >= max_len) get Rew = 0, the pool mean. The substitute's scale (unit
  variance) differs from the reward model's logits, so the rule's weighting between terms is only approximate.

``scores``: the predicted log evaluation loss (lower is better).
"""

from __future__ import annotations

import numpy as np

from selbench.registry import register_method
from selbench.select import Selection

INTERCEPT, W_REW, W_LEN, W_KNN = 1.0694, -0.1498, 8.257e-5, -0.9350
SUBSTITUTES = ("neg_ppl_z", "neg_loss_z", "none")


def knn_mean_distance(emb: np.ndarray, k: int = 6) -> np.ndarray:
    from sklearn.neighbors import NearestNeighbors

    kk = min(k + 1, len(emb))
    if kk < 2:
        return np.zeros(len(emb))
    dist, _ = NearestNeighbors(n_neighbors=kk).fit(emb).kneighbors(emb)
    return dist[:, 1:].mean(axis=1)  # column 0 is the example itself


def _zscore(x: np.ndarray) -> np.ndarray:
    out = np.zeros_like(x, dtype=np.float64)
    ok = np.isfinite(x)
    if ok.sum() > 1 and np.std(x[ok]) > 0:
        out[ok] = (x[ok] - x[ok].mean()) / x[ok].std()
    return out


@register_method("instructmining", family="indicator-based", aspect="quality",
                 description="InstructMining linear rule (LLaMA-2 fit) over reward, length and kNN-6 distance; "
                             "lowest predicted eval loss kept. Reward model replaced by a substitute.",
                 citation="Cao et al. 2023, Instruction Mining (arXiv 2307.06290)",
                 reference="paper rule 1.0694 - 0.1498 Rew + 8.257e-5 Len - 0.9350 Knn6 (no official code)")
def select_instructmining(pool, budget, ctx, reward_substitute="neg_ppl_z", knn=6):
    if reward_substitute not in SUBSTITUTES:
        raise ValueError(f"instructmining: reward_substitute must be one of {SUBSTITUTES}")
    sig = ctx.signals
    tok = (sig.base_model or ctx.base_model).tokenizer
    outputs = [e.output for e in pool]
    length = np.array([len(x) for x in tok(outputs, add_special_tokens=False)["input_ids"]], dtype=np.float64)
    knn_d = knn_mean_distance(sig.sentence_embeddings(pool), int(knn))
    if reward_substitute == "none":
        rew = np.zeros(len(pool))
    else:
        loss = sig.response_losses(pool, conditioned=True, template="chat")
        with np.errstate(over="ignore"):
            rew = _zscore(-(np.exp(loss) if reward_substitute == "neg_ppl_z" else loss))
    pred = INTERCEPT + W_REW * rew + W_LEN * length + W_KNN * knn_d
    order = sorted(range(len(pool)), key=lambda i: (pred[i], i))
    scores = {e.id: float(p) for e, p in zip(pool.examples, pred)}
    notes = [f"reward model (OpenAssistant DeBERTa) unavailable offline; Rew substituted by {reward_substitute!r}",
             f"Knn{knn}: mean distance to {knn} nearest neighbours in all-MiniLM-L6-v2 space; Len in response tokens"]
    return Selection([pool.examples[i].id for i in order[:budget]], scores=scores, notes=notes)
