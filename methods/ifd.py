"""Instruction-Following Difficulty (IFD): Li et al. 2023, "From Quantity to Quality: Boosting LLM Performance
with Self-Guided Data Selection for Instruction Tuning" (Cherry LLM, NAACL 2024, arXiv 2308.12032).

Reference implementation: tianyi-lab/Cherry_LLM @01fac8d, ``cherry_seletion/data_analysis.py --mod cherry`` (per-token
losses) and ``data_by_IFD.py`` (selection). Variant followed: the **loss ratio**
``IFD = mean NLL(response | instruction prompt) / mean NLL(response | response header only)`` of ``data_by_IFD.py``
(not Superfiltering's perplexity ratio), scored by the board's base model.

Differences from the reference, on purpose:

* Prompt format: the protocol's chat template instead of the Alpaca prompt. "Direct" = the response after only the
  assistant generation header (the analogue of Cherry's ``### Response:`` + output); see ``harness/signals.py``.
* Filter: examples with ``IFD >= threshold`` (1.0) are dropped, as the issue specifies; Cherry drops ``IFD > 1``
  (L106-107), which differs only for an IFD of exactly 1. Examples with no scored token (prompt >= max_len) or a
  zero direct loss have no IFD and are dropped, as Cherry skips them.
* Count: exactly ``budget`` examples, the highest IFD first; ties go to the later pool index, as Cherry's
  ascending ``(ifd, idx)`` sort taken from the end. When fewer than ``budget`` survive the filter the selection is
  topped up with the filtered examples nearest the threshold (lowest IFD >= threshold) and then the unscored ones in
  pool order, with a note.

``scores``: the IFD of every example that has one (examples without an IFD get no score).
"""

from __future__ import annotations

import numpy as np

from selbench.registry import register_method
from selbench.select import Selection


def select_by_ifd(pool, budget: int, ifd: np.ndarray, threshold: float, *, strict_keep: bool = True,
                  label: str = "IFD") -> Selection:
    """Shared by ifd and superfilter: keep ``ifd < threshold``, highest first (ties -> later index), top up."""
    n = len(pool)
    finite = np.isfinite(ifd)
    keep = finite & (ifd < threshold)
    idx = np.arange(n)
    kept = sorted(idx[keep].tolist(), key=lambda i: (-ifd[i], -i))
    chosen = kept[:budget]
    notes = [f"{label}: {int(keep.sum())} of {n} examples have {label} < {threshold:g}; "
             f"{int((~finite).sum())} have no {label} (no scored token or zero direct loss)"]
    if len(chosen) < budget:
        over = sorted(idx[finite & ~keep].tolist(), key=lambda i: (ifd[i], i))
        rest = idx[~finite].tolist()
        extra = (over + rest)[: budget - len(chosen)]
        chosen += extra
        notes.append(f"threshold left {len(kept)} examples for a budget of {budget}; topped up with {len(extra)} "
                     f"filtered examples, lowest {label} >= {threshold:g} first, then unscored ones in pool order")
    scores = {pool.examples[i].id: float(ifd[i]) for i in idx[finite]}
    return Selection([pool.examples[i].id for i in chosen], scores=scores, notes=notes,
                     extras={"n_kept_by_threshold": int(keep.sum())})


@register_method("ifd", family="indicator-based", aspect="quality",
                 description="Cherry LLM Instruction-Following Difficulty: highest loss ratio "
                             "cond/direct under the base model, IFD >= 1 dropped.",
                 citation="Li et al. 2023, From Quantity to Quality (Cherry LLM, arXiv 2308.12032)",
                 reference="tianyi-lab/Cherry_LLM @01fac8d data_analysis.py + data_by_IFD.py (loss-ratio IFD)",
                 template="chat", threshold=1.0)
def select_ifd(pool, budget, ctx, template="chat", threshold=1.0):
    cond = ctx.signals.response_losses(pool, conditioned=True, template=template)
    direct = ctx.signals.response_losses(pool, conditioned=False, template=template)
    with np.errstate(divide="ignore", invalid="ignore"):
        ifd = np.where(direct > 0, cond / direct, np.nan)
    return select_by_ifd(pool, budget, ifd, threshold)
