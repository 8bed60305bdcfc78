"""Instruction-Following Difficulty (IFD): Li et al. 2023, "From Quantity to Quality: Boosting LLM Performance
with Self-Guided Data Selection for Instruction Tuning" (Cherry LLM, NAACL 2024, arXiv 2308.12032).

Reference implementation: tianyi-lab/Cherry_LLM @01fac8d, ``cherry_seletion/data_analysis.py --mod cherry`` (per-token
losses) and ``data_by_IFD.py`` (selection): the **loss ratio**
``IFD = mean NLL(response | instruction prompt) / mean NLL(response | response header only)`` (not Superfiltering's
perplexity ratio), scored by the board's base model. Two variants, ``variant`` (the record names the one used):

* ``"chat"`` (default): the protocol's chat template (``template``: ``"chat"``, or Superfiltering's ``"none"``).
  "Direct" = the response after only the assistant generation header (the analogue of Cherry's ``### Response:``);
  see ``harness/signals.py``. Examples with ``IFD >= threshold`` (1.0) are dropped; Cherry drops ``IFD > 1``
  (L106-107), which differs only for an IFD of exactly 1.
* ``"cherry"``: exactly Cherry's ``--prompt alpaca`` scoring (signal template ``"cherry"``): the Alpaca prompt + output,
  direct = ``### Response:`` + output, truncated to ``max_length`` = the signal cache's ``max_len`` (Cherry's
  ``scripts/cherry_selection.sh``: 512) and ``max_length - instruct_len + 4``; scored span from the token count of
  the text before the output. Skipped as ``data_by_IFD.py`` skips (L92-101): ``instruct_len >= max_length``, an empty
  span, ``instruct_len + len_direct > max_length``; ``IFD > 1`` dropped, ``IFD == 1`` kept; ``threshold`` is not used.

Both: examples with no IFD (skipped, or a zero direct loss) are dropped. Count: exactly ``budget`` (Cherry's
``sample_number``), the highest IFD first; ties go to the later pool index, as Cherry's ascending ``(ifd, idx)``
sort taken from the end. When fewer than ``budget`` survive the filter the selection is topped up (a deviation:
the harness needs exactly ``budget``) with the filtered examples nearest the threshold, then the unscored ones in
pool order, with a note. ``scores``: the IFD of every example that has one.
"""

from __future__ import annotations

import numpy as np

from selbench.registry import register_method
from selbench.select import Selection
from selbench.signals import alpaca_prompt


def select_by_ifd(pool, budget: int, ifd: np.ndarray, threshold: float, *, strict_keep: bool = True,
                  label: str = "IFD") -> Selection:
    """Shared by ifd and superfilter: keep ``ifd < threshold``, highest first (ties -> later index), top up."""
    n = len(pool)
    finite = np.isfinite(ifd)
    keep = finite & ((ifd < threshold) if strict_keep else (ifd <= threshold))
    idx = np.arange(n)
    kept = sorted(idx[keep].tolist(), key=lambda i: (-ifd[i], -i))
    chosen = kept[:budget]
    rel = "<" if strict_keep else "<="
    notes = [f"{label}: {int(keep.sum())} of {n} examples have {label} {rel} {threshold:g}; "
             f"{int((~finite).sum())} have no {label} (no scored token, skipped, or zero direct loss)"]
    if len(chosen) < budget:
        over = sorted(idx[finite & ~keep].tolist(), key=lambda i: (ifd[i], i))
        rest = idx[~finite].tolist()
        extra = (over + rest)[: budget - len(chosen)]
        chosen += extra
        notes.append(f"threshold left {len(kept)} examples for a budget of {budget}; topped up with {len(extra)} "
                     f"filtered examples, lowest {label} first, then unscored ones in pool order")
    scores = {pool.examples[i].id: float(ifd[i]) for i in idx[finite]}
    return Selection([pool.examples[i].id for i in chosen], scores=scores, notes=notes,
                     extras={"n_kept_by_threshold": int(keep.sum())})


def cherry_ifd(pool, ctx) -> np.ndarray:
    """Cherry's IFD per example (NaN where ``data_by_IFD.py`` skips it), from the "cherry" loss signals."""
    cond = ctx.signals.token_losses(pool, conditioned=True, template="cherry")
    direct = ctx.signals.token_losses(pool, conditioned=False, template="cherry")
    tok, max_len = ctx.base_model.tokenizer, ctx.signals.max_len
    ifd = np.full(len(pool), np.nan)
    for i, (e, c, d) in enumerate(zip(pool, cond, direct)):
        instruct_len = len(tok(alpaca_prompt(e.instruction, e.input), truncation=True, max_length=max_len)
                           ["input_ids"])
        if instruct_len >= max_len or not len(c) or not len(d) or instruct_len + len(d) > max_len:
            continue
        m_cond, m_direct = np.mean(c, dtype=np.float64), np.mean(d, dtype=np.float64)
        ifd[i] = m_cond / m_direct if m_direct > 0 else np.nan
    return ifd


@register_method("ifd", family="indicator-based", aspect="quality",
                 description="Cherry LLM Instruction-Following Difficulty: highest loss ratio cond/direct under the "
                             "base model, IFD >= 1 dropped (variant 'chat') or Cherry's exact Alpaca scoring "
                             "(variant 'cherry', IFD > 1 dropped).",
                 citation="Li et al. 2023, From Quantity to Quality (Cherry LLM, arXiv 2308.12032)",
                 reference="tianyi-lab/Cherry_LLM @01fac8d data_analysis.py + data_by_IFD.py (loss-ratio IFD)")
def select_ifd(pool, budget, ctx, template="chat", threshold=1.0, variant="chat"):
    if variant == "cherry":
        sel = select_by_ifd(pool, budget, cherry_ifd(pool, ctx), 1.0, strict_keep=False)
        sel.notes.append(f"variant 'cherry': Cherry_LLM @01fac8d Alpaca prompt, '### Response:' direct prefix, "
                         f"max_length {ctx.signals.max_len}, IFD > 1 dropped")
        sel.extras.update(variant="cherry", template="cherry", max_length=ctx.signals.max_len)
        return sel
    if variant != "chat" or template not in ("chat", "none"):
        raise ValueError(f"ifd: variant must be 'chat' (template 'chat' or 'none') or 'cherry', got variant "
                         f"{variant!r}, template {template!r}")
    cond = ctx.signals.response_losses(pool, conditioned=True, template=template)
    direct = ctx.signals.response_losses(pool, conditioned=False, template=template)
    with np.errstate(divide="ignore", invalid="ignore"):
        ifd = np.where(direct > 0, cond / direct, np.nan)
    sel = select_by_ifd(pool, budget, ifd, threshold)
    sel.notes.append(f"variant 'chat' (default): template {template!r}, IFD >= {threshold:g} dropped")
    sel.extras.update(variant="chat", template=template, threshold=threshold)
    return sel
