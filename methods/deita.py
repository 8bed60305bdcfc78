"""DEITA: Liu et al. 2023, "What Makes Good Data for Alignment? A Comprehensive Study of Automatic Data Selection in
Instruction Tuning" (ICLR 2024, arXiv 2312.15685).

Reference followed: hkust-nlp/deita, ``src/deita/selection/scorer/base.py`` @405d060 (scores) and
``src/deita/selection/filter/base.py`` @ac6b91a (Repr Filter), with ``filter/combined_filter.py`` (score):

* **Scores**: a scorer LM reads a complexity prompt (the query) and a quality prompt (query + response); of its
  next-token distribution only the tokens "1".."6" count: softmax over those six, score = sum_i p_i * i in [1, 6]
  (``selbench.rating.expected_score``). Every (user, assistant) turn is scored; an example's score is
  ``sum_t complexity_t * quality_t`` (one term for Alpaca rows).
* **Repr Filter** (:func:`repr_filter`): walk the pool by score, highest first; keep an example only if its cosine
  similarity to every kept one is <= ``tau`` (0.9; the first is always kept), until the budget. Upstream's default
  ``batch_size`` 1 (no comparison among a batch's own members).

Scorer (``scorer``; the record's ``extras["scorer"]`` and a note say which was used):

* ``"judge"``: the board's judge, one request per prompt with ``max_tokens=1, logprobs, top_logprobs``; digits
  outside the returned top ``top_logprobs`` get probability 0. Cached per judgment, counted in the judge ledger.
* ``"base"``: the board's base model (the offline substitute for DEITA's fine-tuned LLaMA scorers): the prompt under
  the protocol's chat template plus the assistant header, the next token's log-softmax at the six digit tokens
  (cached). A long prompt is cut in the response (then the query) to the signal cache's ``max_len``; counted.
* a local model directory or hub ID (e.g. ``hkust-nlp/deita-complexity-scorer``): as ``"base"`` with that model
  (its chat template, else ChatML); DEITA's released scorers expect their own prompt templates (not copied here).
* ``"auto"`` (default): ``"judge"`` when the board has a judge that can return logprobs (``kind: openai``, or a
  local judge with ``server: vllm``), else ``"base"``; if the judge's first answer carries no logprobs, ``"base"``.

Deviations (documented): the prompts are ours (upstream's are not copied); an unscorable prompt (no digit in the
top-k) is an error counted in the notes, ranked after all scored ones (upstream silently returns 3.0, its issue
#36); ties keep pool order (upstream: an unstable sort). Embeddings: the shared all-MiniLM-L6-v2 embeddings of
instruction+input+output (upstream: Mistral-7B's last-token state). Exactly ``budget``: when the filter runs out
first, the rest is filled with the filtered-out examples by score, with a note.
"""

from __future__ import annotations

import numpy as np
from selbench.judge.client import Ledger
from selbench.judged_selection import judge_cost, judge_top_logprobs, record_cost, require_judge
from selbench.rating import digit_logprobs, expected_score, fit_prompt, model_digit_logprobs, resolve_scorer
from selbench.registry import register_method
from selbench.select import Selection

DIGITS = ("1", "2", "3", "4", "5", "6")
SYSTEM = "You rate data used to train AI assistants. You answer with a single digit from 1 to 6."
COMPLEXITY = ("How complex and demanding is the following user query for an AI assistant? Rate it from 1 to 6: "
              "1 = trivial, 6 = very complex (many constraints, deep reasoning or expert knowledge).\n\n"
              "Query:\n{query}\n\nAnswer with one digit from 1 to 6.")
QUALITY = ("How good is the assistant's response to the following user query: correct, helpful, complete and "
           "clear? Rate it from 1 to 6: 1 = very poor, 6 = excellent.\n\nQuery:\n{query}\n\nResponse:\n"
           "{response}\n\nAnswer with one digit from 1 to 6.")


def turns(e) -> list[tuple[str, str]]:
    """(query, response) of every user turn answered in the conversation (the first uses the Alpaca prompt)."""
    msgs, out = list(e.messages), []
    for i, m in enumerate(msgs):
        if m["role"] == "user" and i + 1 < len(msgs) and msgs[i + 1]["role"] == "assistant":
            out.append((e.prompt if not out else m["content"], msgs[i + 1]["content"]))
    return out or [(e.prompt, e.output)]


def prompt_messages(kind: str, query: str, response: str = "") -> list[dict[str, str]]:
    text = COMPLEXITY.replace("{query}", query) if kind == "complexity" else \
        QUALITY.replace("{query}", query).replace("{response}", response)
    return [{"role": "system", "content": SYSTEM}, {"role": "user", "content": text}]


def repr_filter(order: list[int], E: np.ndarray, tau: float, budget: int) -> tuple[list[int], int]:
    """DEITA's Repr Filter over ``order``: (picks, how many the filter itself kept); filled up by ``order``."""
    E = np.asarray(E, dtype=np.float64)
    E = E / np.maximum(np.linalg.norm(E, axis=1, keepdims=True), 1e-12)
    best = np.full(len(E), -np.inf)  # max cosine similarity to a kept example
    kept = []
    for i in order:
        if len(kept) == budget:
            break
        if not kept or best[i] <= tau:
            kept.append(i)
            np.maximum(best, E @ E[i], out=best)
    n_filter = len(kept)
    chosen = set(kept)
    kept += [i for i in order if i not in chosen][: budget - len(kept)]
    return kept, n_filter


def model_scores(handle, signals, items: list[tuple[str, str, str]]) -> tuple[np.ndarray, int]:
    ctxs, n_cut = [], 0
    for kind, q, r in items:
        c, cut = fit_prompt(handle.tokenizer, lambda t, k=kind: prompt_messages(k, *t), [q, r],
                            (1, 0) if kind == "quality" else (0,), signals.max_len)
        ctxs.append(c)
        n_cut += cut
    return expected_score(model_digit_logprobs(handle, signals, ctxs, DIGITS, "deita")), n_cut


@register_method("deita", uses_judge=True, family="strong-LLM", aspect="quality",
                 description="DEITA: complexity x quality as expected 1-6 scores from a scorer's next-token "
                             "probabilities (judge logprobs, or the base model offline), then the Repr Filter "
                             "(cosine <= tau to every kept example).",
                 citation="Liu et al. 2023, What Makes Good Data for Alignment? (DEITA, ICLR 2024, arXiv 2312.15685)",
                 reference="hkust-nlp/deita @405d060 selection/scorer/base.py + @ac6b91a selection/filter/base.py")
def select_deita(pool, budget, ctx, tau=0.9, scorer="auto", top_logprobs=20, embed_model="all-MiniLM-L6-v2",
                 embed_fields="instruction+input+output"):
    per = [turns(e) for e in pool]
    items = [(k, q, r) for ts in per for q, r in ts for k in ("complexity", "quality")]
    used, notes, ledger = resolve_scorer(scorer, ctx), [], None
    if used == "judge":
        ledger = Ledger()
        tops, n_rejected = judge_top_logprobs(require_judge(ctx, "deita"), [prompt_messages(*it) for it in items],
                                              top_logprobs, ledger)
        if tops == [None] and items:
            if scorer == "judge":
                raise RuntimeError("deita: the judge endpoint returned no logprobs (scorer 'judge')")
            notes.append("the judge endpoint returned no logprobs: scored by the base model instead")
            used = "base"
        else:
            flat = expected_score(np.stack([digit_logprobs(t, DIGITS) for t in tops]))
            info = {"kind": "judge", "identity": ctx.judge.identity, "top_logprobs": top_logprobs}
            if n_rejected:
                notes.append(f"{n_rejected} scorer prompts rejected by the judge (errors: those examples unscored)")
    if used != "judge":
        handle = ctx.base_model if used == "base" else ctx.signals.handle_for(used)
        flat, n_cut = model_scores(handle, ctx.signals, items)
        info = {"kind": "base model" if used == "base" else "local model", "identity": handle.identity,
                "path": str(handle.path)}
        if n_cut:
            notes.append(f"{n_cut} scorer prompts cut to the signal cache's max_len {ctx.signals.max_len}")
    comp, qual, combined, k = [], [], np.full(len(pool), np.nan), 0
    for i, ts in enumerate(per):
        c, q = flat[k:k + 2 * len(ts):2], flat[k + 1:k + 2 * len(ts):2]
        k += 2 * len(ts)
        comp.append([round(float(x), 4) if np.isfinite(x) else None for x in c])
        qual.append([round(float(x), 4) if np.isfinite(x) else None for x in q])
        combined[i] = float(np.sum(c * q))
    ok = np.isfinite(combined)
    order = sorted(np.flatnonzero(ok).tolist(), key=lambda i: -combined[i]) + np.flatnonzero(~ok).tolist()
    E = ctx.signals.sentence_embeddings(pool, model_name=embed_model, fields=embed_fields, normalize=True)
    picks, n_filter = repr_filter(order, E, tau, budget)
    notes.insert(0, f"scorer: {info['kind']} ({info['identity']}); {int(ok.sum())} of {len(pool)} examples scored, "
                    f"{int((~ok).sum())} with an unscorable prompt (errors, ranked last)")
    notes.append(f"Repr Filter (cosine <= {tau:g}) kept {n_filter}"
                 + (f"; ran out before the budget: {budget - n_filter} filled by score from the filtered-out"
                    if n_filter < budget else ""))
    sel = Selection([pool.examples[i].id for i in picks],
                    scores={pool.examples[i].id: float(combined[i]) for i in np.flatnonzero(ok)}, notes=notes,
                    extras={"scorer": info, "tau": tau, "kept_by_filter": n_filter, "unscored": int((~ok).sum()),
                            "complexity": comp, "quality": qual})
    if ledger is not None:
        record_cost(sel, ctx, "judge", *judge_cost(ledger, len(items), ctx.judge, "logprob requests"))
    return sel
