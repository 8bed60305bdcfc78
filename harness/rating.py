"""Probability-weighted ratings: a scorer's next-token distribution over the rating digits, turned into an expected
score (DEITA's ``Scorer.infer_score``; G-Eval's probability-weighted summation). A shared service of the selection
methods that rate examples on a digit scale (``deita``).

The distribution comes from one of two places, chosen by :func:`resolve_scorer`:

* the board's judge: the top logprobs of its first answer token (OpenAI and vLLM endpoints return them), read by
  :func:`digit_logprobs`; the requests go through the judge client (cached per judgment, counted in a ledger);
* a local model (the board's base model, or a model path): the next token's log-softmax at the digit tokens after
  the prompt rendered with the model's chat template (:func:`model_digit_logprobs`, through the signal cache, so
  the scores are cached and batched like every other loss).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from .formatting import encode, render


def expected_score(logprobs, levels: Sequence[float] | None = None) -> np.ndarray:
    """[..., k] log-probabilities (or logits) of the k rating tokens -> sum_i softmax_i * level_i (levels 1..k by
    default); NaN where none is finite."""
    lp = np.asarray(logprobs, dtype=np.float64)
    levels = np.arange(1, lp.shape[-1] + 1) if levels is None else np.asarray(levels, dtype=np.float64)
    finite = np.isfinite(lp)
    m = np.where(finite, lp, -np.inf).max(-1, keepdims=True)
    w = np.where(finite, np.exp(lp - np.where(np.isfinite(m), m, 0.0)), 0.0)
    z = w.sum(-1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(z > 0, (w * levels).sum(-1) / z, np.nan)


def digit_logprobs(top: list | None, digits: Sequence[str]) -> np.ndarray:
    """Judge top-logprobs ``[[token, logprob], ...]`` -> [k] log-probabilities of ``digits`` (-inf when absent;
    tokens compared with whitespace stripped, variants of one digit summed)."""
    index = {d: i for i, d in enumerate(digits)}
    out = np.full(len(digits), -np.inf)
    for tok, lp in top or []:
        i = index.get(str(tok).strip())
        if i is not None and lp is not None and np.isfinite(lp):
            out[i] = np.logaddexp(out[i], float(lp))
    return out


def resolve_scorer(scorer: str, ctx) -> str:
    """``"auto"`` -> ``"judge"`` when the board has a judge that can return logprobs (``kind: openai``, or a local
    judge with ``server: vllm``), else ``"base"``; any other value is returned as given."""
    if scorer != "auto":
        return scorer
    if getattr(ctx, "judge", None) is None:
        return "base"
    spec = getattr(getattr(ctx, "protocol", None), "judge", None)
    if spec is not None and spec.kind == "local" and spec.server != "vllm":
        return "base"
    return "judge"


def fit_prompt(tok, messages: Callable[[list[str]], list[dict[str, str]]], texts: list[str], cut_order: Sequence[int],
               max_len: int) -> tuple[list[int], bool]:
    """Chat-template token IDs of ``messages(texts)`` plus the assistant header, within ``max_len``: the text at
    ``cut_order[0]`` is shortened first (then the next), by the excess and a margin. Returns (ids, whether cut)."""
    texts, cut = list(texts), False
    for _ in range(6):
        ids = encode(tok, render(tok, messages(texts), add_generation_prompt=True))
        over = len(ids) - max_len
        if over <= 0:
            return ids, cut
        cut = True
        j = next((j for j in cut_order if texts[j]), cut_order[-1])
        t_ids = tok(texts[j], add_special_tokens=False)["input_ids"]
        texts[j] = tok.decode(t_ids[: max(0, len(t_ids) - over - 8)])
    return ids[-max_len:], True


def model_digit_logprobs(handle, signals, contexts: list[list[int]], digits: Sequence[str], name: str) -> np.ndarray:
    """[n, k] next-token log-probabilities of ``digits`` after each context, under ``handle``'s model (cached by
    the signal cache under ``name``). Each digit must be one token of the model's tokenizer."""
    ids = []
    for d in digits:
        t = handle.tokenizer(d, add_special_tokens=False)["input_ids"]
        if len(t) != 1:
            raise ValueError(f"{name}: the scorer's tokenizer splits the rating {d!r} into {len(t)} tokens")
        ids.append(t[0])
    return np.asarray(signals.next_token_logprobs(contexts, ids, model=handle, name=name))
