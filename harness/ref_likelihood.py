"""Reference-answer likelihood: how probable a strong model's answers are under the fine-tuned model.

Per item, the mean per-token negative log-likelihood (nats) of a reference answer given its instruction, both in
the model's chat template (the answer is the assistant turn), and the answer's bits per UTF-8 byte; lower is better.
With ``contrast`` (the default), also ``instruction_gain``: the same answer's mean NLL after *another* item's
instruction (a fixed rotation within the set) minus its NLL after its own, i.e. how much the model's belief in the
right answer depends on the instruction; higher is better. Plain NLL mostly measures the answer's style and
fluency; the gain isolates instruction following: a model tuned on instructions paired with the wrong answers
(the ``shuffled_responses`` control) loses it while its plain NLL barely moves.
Unlike a judged score it needs no judge and no generation, and it moves with every fine-tune, so at small scale it
separates models that the judged and multiple-choice metrics cannot (an item "flips" continuously).

Reference sets (``evaluation.ref_likelihood.sets``):
- ``alpaca_eval``: AlpacaEval 2.0's baseline outputs (GPT-4-Turbo) for its 805 instructions;
- ``alpaca_eval_davinci``: AlpacaEval 1.0's text-davinci-003 outputs for the same instructions;
- ``mt_bench``: GPT-4's reference answers to MT-Bench's first turns (math, reasoning, coding; 30 questions).

Items are taken in file order after a fixed seeded shuffle (``shuffle_seed``), ``per_set`` of each, so every cell
of a board scores the same items. Losses are computed by the shared signal cache on the base model plus the cell's
adapter, so they are cached and batched like every other loss.
"""

from __future__ import annotations

import json
import math
import random
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from .cache import read_jsonl, stable_hash
from .evaluate import EvalContext, EvalResult, Metric, ModelUnderTest, register_evaluator
from .formatting import prompt_and_response_ids

SetName = Literal["alpaca_eval", "alpaca_eval_davinci", "mt_bench"]


class RefLikelihoodSettings(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    sets: list[SetName] = ["alpaca_eval"]
    per_set: int = Field(200, gt=0)
    shuffle_seed: int = 0
    max_len: int = Field(1024, gt=16)  # prompt + answer tokens (see `fit`)
    contrast: bool = True  # also score each answer after another item's instruction: `instruction_gain`
    batch_size: int = Field(8, gt=0)


def reference_pairs(open_ended: Path, name: str, shuffle_seed: int) -> list[tuple[str, str]]:
    """All (instruction, reference answer) pairs of one set, in the set's fixed shuffled order."""
    if name in ("alpaca_eval", "alpaca_eval_davinci"):
        ref = "gpt4_1106_preview" if name == "alpaca_eval" else "text_davinci_003"
        rows = json.loads((open_ended / "alpaca_eval" / "reference_outputs" / ref / "model_outputs.json")
                          .read_text(encoding="utf-8"))
        pairs = [(r["instruction"], r["output"]) for r in rows]
    else:
        questions = {q["question_id"]: q for q in read_jsonl(open_ended / "mt_bench" / "question.jsonl")}
        pairs = [(questions[r["question_id"]]["turns"][0], r["choices"][0]["turns"][0])
                 for r in read_jsonl(open_ended / "mt_bench" / "reference_answer" / "gpt-4.jsonl")]
    pairs = [(q, a) for q, a in pairs if q.strip() and a.strip()]
    random.Random(shuffle_seed).shuffle(pairs)
    return pairs


def reference_items(ctx: EvalContext, s: RefLikelihoodSettings) -> list[dict[str, Any]]:
    from .judge.common import open_ended_dir

    root = open_ended_dir(ctx)
    return [{"set": name, "item": f"{name}/{stable_hash([q, a])[:16]}", "instruction": q, "reference": a}
            for name in s.sets for q, a in reference_pairs(root, name, s.shuffle_seed)[: s.per_set]]


def _mean_nll(losses: list[np.ndarray]) -> list[float | None]:
    return [float(np.mean(x, dtype=np.float64)) if len(x) else None for x in losses]


def _metric(values: list[float], higher_is_better: bool) -> Metric:
    sem = float(np.std(values, ddof=1) / math.sqrt(len(values))) if len(values) > 1 else None
    return Metric(float(np.mean(values)), sem, higher_is_better)


def check_data(spec: Any, ctx: EvalContext) -> str:
    s = RefLikelihoodSettings.model_validate(spec or {})
    return f"{len(reference_items(ctx, s))} reference answers ({', '.join(s.sets)})"


@register_evaluator("ref_likelihood", version="2", settings=RefLikelihoodSettings,
                    headline=("nll", "instruction_gain", "bpb"), preflight=check_data)
def ref_likelihood(model: ModelUnderTest, spec: Any, ctx: EvalContext) -> EvalResult:
    from .models import BaseModelHandle, ResolvedModel
    from .signals import SignalCache

    s = RefLikelihoodSettings.model_validate(spec or {})
    items = reference_items(ctx, s)
    handle = BaseModelHandle(ResolvedModel(model.base_path, model.identity, model.name), model.dtype,
                             model.chat_template, device=model.device, adapter=model.adapter,
                             adapter_identity=model.identity)
    signals = SignalCache(ctx.cache, None, batch_size=s.batch_size, max_len=s.max_len)
    tok = handle.tokenizer
    pairs = [fit(*prompt_and_response_ids(tok, it["instruction"], it["reference"]), s.max_len) for it in items]
    nll = signals.pair_token_losses(pairs, model=handle, truncation="right", name="ref_likelihood")
    if s.contrast:  # the same answer after another item's instruction of its set: a fixed rotation
        other = {i: j for idxs in _by_set(items).values() for i, j in zip(idxs, idxs[1:] + idxs[:1])}
        swapped = [fit(*prompt_and_response_ids(tok, items[other[i]]["instruction"], it["reference"]), s.max_len)
                   for i, it in enumerate(items)]
        mismatched = _mean_nll(signals.pair_token_losses(swapped, model=handle, truncation="right",
                                                         name="ref_likelihood_contrast"))
    details, values = [], {"nll": [], "bpb": [], "instruction_gain": []}
    per_set: dict[str, list[float]] = {}
    for i, (it, (_, resp), losses) in enumerate(zip(items, pairs, nll)):
        row = {"set": it["set"], "item": it["item"], "tokens": int(len(losses)), "scores": {}}
        n_bytes = len(tok.decode(resp[: len(losses)], skip_special_tokens=True).encode("utf-8"))
        if len(losses) and n_bytes:
            mean = float(np.mean(losses, dtype=np.float64))
            row["scores"] = {"nll": mean, f"nll/{it['set']}": mean,
                             "bpb": float(np.sum(losses, dtype=np.float64) / (math.log(2) * n_bytes))}
            if s.contrast and mismatched[i] is not None:
                row["scores"]["instruction_gain"] = mismatched[i] - mean
            for k in values:
                if k in row["scores"]:
                    values[k].append(row["scores"][k])
            per_set.setdefault(it["set"], []).append(mean)
        details.append(row)
    metrics = {k: _metric(v, higher_is_better=k == "instruction_gain") for k, v in values.items() if v}
    metrics.update({f"nll/{name}": _metric(v, False) for name, v in per_set.items()})
    counts = {"items": len(items), "scored": len(values["nll"]), "unscored": len(items) - len(values["nll"])}
    return EvalResult(metrics, details, counts, {"sets": s.sets, "per_set": s.per_set, "max_len": s.max_len,
                                                 "contrast": s.contrast})


def _by_set(items: list[dict[str, Any]]) -> dict[str, list[int]]:
    out: dict[str, list[int]] = {}
    for i, it in enumerate(items):
        out.setdefault(it["set"], []).append(i)
    return out


def fit(prompt: list[int], answer: list[int], max_len: int) -> tuple[list[int], list[int]]:
    """At most ``max_len`` tokens: the answer's first tokens, after the prompt's last ones (the prompt keeps at
    most half when both are long), so every item scores some answer tokens in the same context in every cell."""
    keep_prompt = min(len(prompt), max(max_len // 2, max_len - len(answer)))
    return list(prompt[len(prompt) - keep_prompt:]), list(answer[: max_len - keep_prompt])
