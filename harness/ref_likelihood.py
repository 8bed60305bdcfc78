"""Reference-answer likelihood: how probable a strong model's answers are under the fine-tuned model.

Per item, the mean per-token negative log-likelihood (nats) of a reference answer given its instruction, both in
the model's chat template (the answer is the assistant turn), and the answer's bits per UTF-8 byte. Lower is better.
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


@register_evaluator("ref_likelihood", version="1", settings=RefLikelihoodSettings,
                    headline=("nll", "bpb"))
def ref_likelihood(model: ModelUnderTest, spec: Any, ctx: EvalContext) -> EvalResult:
    from .models import BaseModelHandle, ResolvedModel
    from .signals import SignalCache

    s = RefLikelihoodSettings.model_validate(spec or {})
    items = reference_items(ctx, s)
    handle = BaseModelHandle(ResolvedModel(model.base_path, model.identity, model.name), model.dtype,
                             model.chat_template, adapter=model.adapter, adapter_identity=model.identity)
    signals = SignalCache(ctx.cache, None, batch_size=s.batch_size, max_len=s.max_len)
    tok = handle.tokenizer
    pairs = [fit(*prompt_and_response_ids(tok, it["instruction"], it["reference"]), s.max_len) for it in items]
    losses = signals.pair_token_losses(pairs, model=handle, truncation="right", name="ref_likelihood")
    details, by_set = [], {}
    for it, (_, resp), nll in zip(items, pairs, losses):
        n_bytes = len(tok.decode(resp[: len(nll)], skip_special_tokens=True).encode("utf-8")) if len(nll) else 0
        row = {"set": it["set"], "item": it["item"], "tokens": int(len(nll)), "scores": {}}
        if len(nll) and n_bytes:
            mean = float(np.mean(nll, dtype=np.float64))
            bpb = float(np.sum(nll, dtype=np.float64) / (math.log(2) * n_bytes))
            row["scores"] = {"nll": mean, "bpb": bpb, f"nll/{it['set']}": mean}
            by_set.setdefault(it["set"], []).append((mean, bpb))
        details.append(row)
    scored = [v for vs in by_set.values() for v in vs]
    metrics = {}
    if scored:
        arr = np.array(scored)
        sem = arr.std(axis=0, ddof=1) / math.sqrt(len(arr)) if len(arr) > 1 else [None, None]
        metrics = {"nll": Metric(float(arr[:, 0].mean()), _f(sem[0]), higher_is_better=False),
                   "bpb": Metric(float(arr[:, 1].mean()), _f(sem[1]), higher_is_better=False)}
        for name, vs in by_set.items():
            metrics[f"nll/{name}"] = Metric(float(np.mean([v[0] for v in vs])), higher_is_better=False)
    counts = {"items": len(items), "scored": len(scored), "unscored": len(items) - len(scored)}
    return EvalResult(metrics, details, counts, {"sets": s.sets, "per_set": s.per_set, "max_len": s.max_len})


def fit(prompt: list[int], answer: list[int], max_len: int) -> tuple[list[int], list[int]]:
    """At most ``max_len`` tokens: the answer's first tokens, after the prompt's last ones (the prompt keeps at
    most half when both are long), so every item scores some answer tokens in the same context in every cell."""
    keep_prompt = min(len(prompt), max(max_len // 2, max_len - len(answer)))
    return list(prompt[len(prompt) - keep_prompt:]), list(answer[: max_len - keep_prompt])


def _f(x) -> float | None:
    return None if x is None else float(x)
