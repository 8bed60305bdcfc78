"""Perplexity filtering: keep examples by the base model's perplexity of the response given the prompt.

Perplexity-based selection as a baseline for instruction data: Active Instruction Tuning's High/LowPerplexity
baselines (Kung et al. 2023, arXiv 2311.00288; PlusLabNLP/Active-IT @5807f2b) take the highest or lowest, and
Marion et al. 2023 ("When Less is More: Investigating Data Pruning for Pretraining LLMs at Scale",
arXiv 2309.04564) compare top / middle / bottom perplexity subsets. Cherry LLM's pre-experience step keeps the
25th-75th percentile per cluster. Variant followed: response perplexity ``exp(mean token NLL)`` of the response
after the chat-template prompt under the board's base model (Active-IT scores the model's own generation under
T5; we score the dataset response, which is what is trained on).

``variant``: ``top`` = highest perplexity, ``bottom`` = lowest, ``middle`` = the ``budget`` examples closest to the
median in perplexity rank (a contiguous window of the sorted order centred on the median). Ties go to the
earlier pool index. Examples without a scored token (prompt >= max_len) have no perplexity, get no score and are
used only when the budget exceeds the scored examples (with a note).
"""

from __future__ import annotations

import numpy as np

from selbench.registry import register_method
from selbench.select import Selection

VARIANTS = ("top", "middle", "bottom")


@register_method("perplexity", family="indicator-based", aspect="quality",
                 description="Response perplexity under the base model: top, middle or bottom of the ranking.",
                 citation="Kung et al. 2023, Active Instruction Tuning (arXiv 2311.00288); Marion et al. 2023, "
                          "When Less is More (arXiv 2309.04564)",
                 reference="paper formula (exp of mean response NLL), no reference script")
def select_perplexity(pool, budget, ctx, variant="middle", template="chat"):
    if variant not in VARIANTS:
        raise ValueError(f"perplexity: variant must be one of {VARIANTS}, got {variant!r}")
    ppl = ctx.signals.perplexity(pool, conditioned=True, template=template)
    finite = np.isfinite(ppl)
    scored = [i for i in range(len(pool)) if finite[i]]
    asc = sorted(scored, key=lambda i: (ppl[i], i))  # lowest perplexity first
    if variant == "bottom":
        order = asc
    elif variant == "top":
        order = sorted(scored, key=lambda i: (-ppl[i], i))
    else:
        k = min(budget, len(asc))
        start = max(0, (len(asc) - k) // 2)
        order = asc[start:start + k]
    chosen = order[:budget]
    notes = [f"perplexity ({variant}): {len(scored)} of {len(pool)} examples scored"]
    if len(chosen) < budget:
        rest = [i for i in range(len(pool)) if not finite[i]][: budget - len(chosen)]
        chosen += rest
        notes.append(f"only {len(scored)} examples have a perplexity; topped up with {len(rest)} unscored ones "
                     "in pool order")
    scores = {pool.examples[i].id: float(ppl[i]) for i in scored}
    return Selection([pool.examples[i].id for i in chosen], scores=scores, notes=notes)
