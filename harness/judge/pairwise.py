"""Pairwise win score against the full-pool and random-subset baselines (Cherry/AlpaGasus protocol).

Every comparison is judged in both orders. ``format: review`` asks for two 1-10 scores on the first line (our own
prompt in ``harness/templates/pairwise_review.json``); ``format: pair-v2`` uses MT-Bench's ``[[A]]/[[B]]/[[C]]``
prompt from the data files. Orders combine by the papers' sum rule (``ws_*``) and FastChat's strict rule
(``ws_strict_*``); WS = (W - L) / N + 1, pooled over all sets as in the papers. Unparseable verdicts are errors,
excluded from N and counted.
"""

from __future__ import annotations

import json
from importlib import resources
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from ..cache import stable_hash
from ..evaluate import EvalResult, Metric, register_evaluator
from ..generate import Decoding, generate
from ..vllm_engine import engine_setting, resolve_engine
from .client import Ledger
from .common import chat, mt_bench_judge_prompts, open_ended_dir, parse_section, read_jsonl
from .verdicts import (OUTCOME_WS, Tally, judge_pair, pair_v2_constraint, pair_v2_or_none, pair_v2_sign,
                       parse_two_scores, scores_sign, two_scores_constraint)

SetName = Literal["vicuna", "koala", "wizardlm", "self_instruct", "lima"]
ALL_SETS: tuple[str, ...] = ("vicuna", "koala", "wizardlm", "self_instruct", "lima")


class PairwiseSettings(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    sets: list[SetName] = list(ALL_SETS)
    per_set: int | None = Field(None, gt=0, description="first N prompts of each set; null = all")
    format: Literal["review", "pair-v2"] = "review"
    baselines: list[Literal["full", "random"]] = ["full", "random"]
    max_new_tokens: int = Field(512, gt=0)
    batch_size: int = Field(8, gt=0)
    judge_max_tokens: int | None = Field(None, gt=0)


def load_set(ctx, name: str) -> list[str]:
    root = open_ended_dir(ctx)
    if name == "vicuna":
        return [r["text"] for r in read_jsonl(root / "vicuna80" / "question.jsonl")]
    if name == "koala":
        return [r["prompt"] for r in read_jsonl(root / "koala" / "koala_test_set.jsonl")]
    if name == "wizardlm":
        return [r["Instruction"] for r in read_jsonl(root / "wizardlm" / "wizardlm_test_set.cherry_format.jsonl")]
    if name == "self_instruct":
        out = []
        for r in read_jsonl(root / "self_instruct_252" / "user_oriented_instructions.jsonl"):
            inp = r["instances"][0]["input"] if r.get("instances") else ""
            out.append(f"{r['instruction']}\n\n{inp}" if inp else r["instruction"])
        return out
    if name == "lima":
        return [r["conversations"] for r in read_jsonl(root / "lima" / "lima_test_set.jsonl")]
    raise ValueError(f"unknown pairwise set {name!r}")


def review_template() -> dict[str, str]:
    return json.loads(resources.files("selbench").joinpath("templates/pairwise_review.json").read_text("utf-8"))


def make_prompt(fmt: str, templates: dict, question: str, first: str, second: str) -> list[dict[str, str]]:
    if fmt == "review":
        t = templates["review"]
        return chat(t["system"], t["user"].format(question=question, answer_1=first, answer_2=second))
    t = templates["pair-v2"]
    return chat(t["system_prompt"], t["prompt_template"].format(question=question, answer_a=first, answer_b=second))


def _sign(fmt: str, value, model_first: bool) -> int | None:
    if fmt == "review":
        return scores_sign(value, model_first)
    return pair_v2_sign(value, model_first)


def _tally_metrics(tag: str, main: Tally, strict: Tally, metrics: dict, counts: dict) -> None:
    if main.n:  # with no parsed comparison there is no score (the error count says why)
        metrics[f"ws_vs_{tag}"] = Metric(main.ws, main.ws_stderr)
        metrics[f"ws_strict_vs_{tag}"] = Metric(strict.ws, strict.ws_stderr)
        metrics[f"flip_rate_vs_{tag}"] = Metric(main.flip_rate)
    for k in ("win", "tie", "lose", "error"):
        counts[f"vs_{tag}/{k}"] = getattr(main, k)
    for k in ("win", "tie", "lose"):
        counts[f"vs_{tag}/strict_{k}"] = getattr(strict, k)


def check_data(spec, ctx) -> str:
    s = parse_section(PairwiseSettings, spec, "pairwise")
    n = sum(len(load_set(ctx, name)[: s.per_set]) for name in s.sets)
    if s.format == "pair-v2":
        mt_bench_judge_prompts(ctx)["pair-v2"]
    return f"{n} prompts ({', '.join(s.sets)})"


@register_evaluator("pairwise", needs_judge=True, needs_baselines=("full", "random"), version="3",
                    settings=PairwiseSettings, preflight=check_data,
                    headline=("ws_vs_full", "ws_vs_random", "flip_rate_vs_full", "flip_rate_vs_random"))
def pairwise(model, spec, ctx) -> EvalResult:
    s = parse_section(PairwiseSettings, spec, "pairwise")
    prompts = {name: load_set(ctx, name)[: s.per_set] for name in s.sets}
    flat = [(name, q) for name in s.sets for q in prompts[name]]
    dec = Decoding(max_new_tokens=s.max_new_tokens, batch_size=s.batch_size, seed=ctx.seed,
                   engine=engine_setting(ctx.protocol))
    templates = {"review": review_template()} if s.format == "review" else \
        {"pair-v2": mt_bench_judge_prompts(ctx)["pair-v2"]}
    parse = parse_two_scores if s.format == "review" else pair_v2_or_none

    metrics, counts, details, info = {}, {}, [], {"format": s.format, "skipped": {}, "sets": s.sets,
                                                   "per_set": s.per_set}
    compared = [(tag, ctx.baselines.get(tag)) for tag in s.baselines]
    todo = []
    for tag, base in compared:
        if base is None:
            info["skipped"][tag] = "baseline not available"
        elif base.identity == model.identity:
            info["skipped"][tag] = "model under test is this baseline"
        else:
            todo.append((tag, base))
    if not todo:
        return EvalResult({}, [], {"comparisons": 0}, info)

    ours = [a[0] for a in generate(model, [[q] for _, q in flat], dec, ctx.cache, desc="pairwise sets")]
    judge = ctx.judge
    ledger = Ledger()
    constraint = judge.constraint(two_scores_constraint() if s.format == "review" else
                                  pair_v2_constraint(s.judge_max_tokens or judge.max_tokens))
    for tag, base in todo:
        theirs = [a[0] for a in generate(base, [[q] for _, q in flat], dec, ctx.cache, desc=f"pairwise ({tag})")]
        items = []
        for (_, q), a, b in zip(flat, ours, theirs):
            items += [make_prompt(s.format, templates, q, a, b), make_prompt(s.format, templates, q, b, a)]
        verdicts = judge.judge_many(items, parse, ledger, desc=f"pairwise judging vs {tag}",
                                    max_tokens=s.judge_max_tokens, constraint=constraint)
        per_set = {name: (Tally(), Tally()) for name in s.sets}
        for i, ((name, q), a, b) in enumerate(zip(flat, ours, theirs)):
            v1, v2 = verdicts[2 * i], verdicts[2 * i + 1]
            s1, s2 = _sign(s.format, v1.value, True), _sign(s.format, v2.value, False)
            outcome, strict = judge_pair(s1, s2, *per_set[name])
            details.append({"baseline": tag, "set": name, "item": f"{tag}/{name}/{stable_hash(q)[:16]}",
                            "scores": {f"ws_vs_{tag}": OUTCOME_WS[outcome], f"ws_vs_{tag}/{name}": OUTCOME_WS[outcome]}
                            if outcome in OUTCOME_WS else {},
                            "question": q, "answer": a, "baseline_answer": b,
                            "verdict_model_first": v1.value, "verdict_model_second": v2.value,
                            "judgment_model_first": v1.text, "judgment_model_second": v2.text,
                            "errors": [v.error for v in (v1, v2) if v.error], "outcome": outcome,
                            "outcome_strict": strict})
        pooled = (Tally(), Tally())
        for name, (main, strict) in per_set.items():
            if main.n:
                metrics[f"ws_vs_{tag}/{name}"] = Metric(main.ws, main.ws_stderr)
                metrics[f"ws_strict_vs_{tag}/{name}"] = Metric(strict.ws, strict.ws_stderr)
            counts[f"vs_{tag}/{name}/error"] = main.error
            pooled = (pooled[0].merge(main), pooled[1].merge(strict))
        _tally_metrics(tag, *pooled, metrics, counts)
        info[f"baseline_{tag}"] = {"name": base.name, "identity": base.identity}
    # a comparison (two orders) is one judged item; it is an error when either order has no usable verdict
    counts.update({"comparisons": len(details), "judgments": len(details),
                   "errors": sum(1 for d in details if d["errors"]), **ledger.as_counts()})
    info.update({"judge": judge.identity, "engine": resolve_engine(dec.engine), "verdict_constraint": constraint})
    return EvalResult(metrics, details, counts, info)
