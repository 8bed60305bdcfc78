"""Superfiltering: Li et al. 2024, "Superfiltering: Weak-to-Strong Data Filtering for Fast Instruction-Tuning"
(ACL 2024, arXiv 2402.00530).

Reference implementation: tianyi-lab/Superfiltering @f0764af, ``code_ifd/data_analysis.py`` (losses from a small
proxy model, GPT-2 by default), ``code_ifd/put_analysis_to_data.py`` (score) and ``code_ifd/select_data.py``
(keep ``ifd < 1``, highest first). Variant followed:

* Proxy model: ``proxy_model`` (any spec ``SignalCache.handle_for`` resolves: hub ID, directory, .gguf,
  ``pkg://``). ``None`` (default) uses the board's base model, because the reference's ``gpt2`` needs the hub;
  an online board sets ``proxy_model: gpt2``.
* Prompt format ``template="none"``: Superfiltering's plain ``instruction\\n`` (+ ``input\\n``) with the output
  right after it; the direct loss is the output alone (after BOS if the tokenizer adds one, else its first token is
  unscored, as with GPT-2), cut as the reference cuts it (``max_length - prompt_len + 1`` tokens). Per-example
  losses, ``ifd_ppl`` and selections agree with the reference's own code on SmolLM2-135M
  (tests/test_conformance.py). ``template="chat"`` uses the protocol's chat template instead.
* Score ``score="ppl_ratio"`` (default, the reference's ``ifd_ppl = ppl_cond / ppl_direct = exp(L_cond - L_direct)``)
  or ``"loss_ratio"`` (Cherry's ``L_cond / L_direct``). Both keep the same examples under the ``< 1`` filter but
  rank them differently.
* Count: exactly ``budget`` (the reference hard-codes Alpaca's 52,002 in ``int(52002 * rate)``); examples with
  ``score >= 1`` are dropped (the reference keeps ``< 1`` strictly, L32); a shortfall is topped up as in ``ifd``
  (lowest filtered score first, then unscored examples), with a note. The reference returns 0 for examples that
  raise; we leave them unscored (NaN) and never select them before scored ones.

``scores``: the proxy score of every example that has one.
"""

from __future__ import annotations

import numpy as np

from selbench.registry import register_method
from selbench.methods.ifd import select_by_ifd


@register_method("superfilter", family="small-model", aspect="quality",
                 description="Superfiltering: IFD (perplexity ratio) from a small proxy model, score >= 1 dropped, "
                             "highest kept.",
                 citation="Li et al. 2024, Superfiltering (ACL 2024, arXiv 2402.00530)",
                 reference="tianyi-lab/Superfiltering @f0764af code_ifd (ifd_ppl, template 'none')")
def select_superfilter(pool, budget, ctx, proxy_model=None, template="none", score="ppl_ratio", threshold=1.0):
    if score not in ("ppl_ratio", "loss_ratio"):
        raise ValueError(f"superfilter: score must be 'ppl_ratio' or 'loss_ratio', got {score!r}")
    handle = ctx.signals.handle_for(proxy_model) if proxy_model else None
    cond = ctx.signals.response_losses(pool, conditioned=True, model=handle, template=template)
    direct = ctx.signals.response_losses(pool, conditioned=False, model=handle, template=template)
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        if score == "ppl_ratio":
            s = np.exp(cond - direct)
        else:
            s = np.where(direct > 0, cond / direct, np.nan)
    sel = select_by_ifd(pool, budget, s, threshold, label=score)
    sel.notes.append(f"proxy model: {proxy_model or 'the base model (proxy_model is null)'}; template {template!r}")
    return sel
