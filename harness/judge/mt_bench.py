"""MT-Bench single-answer grading (FastChat llm_judge logic on openai>=1): a 1-10 rating per turn.

Turn 1 uses ``single-v1``, turn 2 the ``*-multi-turn`` template (the whole conversation shown, the second answer
judged); math, reasoning and coding use the reference-guided ``single-math-*`` templates with the gpt-4 reference
answers. All prompt text comes from the data files.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from ..evaluate import EvalResult, Metric, register_evaluator
from ..generate import Decoding, generate
from ..vllm_engine import engine_setting, resolve_engine
from .client import Ledger
from .common import chat, mean_sem, mt_bench_judge_prompts, open_ended_dir, parse_section, read_jsonl
from .verdicts import rating_constraint, rating_or_none

NEED_REF_CATS = ("math", "reasoning", "coding")


class MTBenchSettings(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    questions: int | None = Field(None, gt=0, description="first N questions of each category; null = all 80")
    question_ids: list[int] | None = None
    categories: list[str] | None = None
    turns: list[Literal[1, 2]] = [1, 2]
    reference: str = "gpt-4"
    max_new_tokens: int = Field(1024, gt=0)
    temperature: float = Field(0.0, ge=0)
    batch_size: int = Field(8, gt=0)
    judge_max_tokens: int | None = Field(None, gt=0)

    @model_validator(mode="after")
    def _check(self):
        if self.questions is not None and self.question_ids is not None:
            raise ValueError("give either `questions` (first N per category) or `question_ids`, not both")
        if not self.turns:
            raise ValueError("`turns` must list 1 and/or 2")
        return self


def select_questions(rows: list[dict], s: MTBenchSettings) -> list[dict]:
    if s.question_ids is not None:
        by_id = {r["question_id"]: r for r in rows}
        missing = [q for q in s.question_ids if q not in by_id]
        if missing:
            raise ValueError(f"evaluation.mt_bench.question_ids: unknown question ids {missing}")
        return [by_id[q] for q in s.question_ids]
    if s.categories is not None:
        rows = [r for r in rows if r["category"] in s.categories]
    if s.questions is None:
        return rows
    seen: dict[str, int] = defaultdict(int)
    out = []
    for r in rows:
        if seen[r["category"]] < s.questions:
            out.append(r)
            seen[r["category"]] += 1
    return out


def judge_messages(q: dict, answers: list[str], turn: int, prompts: dict, refs: dict) -> list[dict[str, str]]:
    ref = q["category"] in NEED_REF_CATS
    name = ("single-math-v1" if ref else "single-v1") + ("-multi-turn" if turn == 2 else "")
    p = prompts[name]
    if turn == 1:
        kw = {"question": q["turns"][0], "answer": answers[0]}
    else:
        kw = {"question_1": q["turns"][0], "question_2": q["turns"][1], "answer_1": answers[0],
              "answer_2": answers[1]}
    if ref:
        r = refs.get(q["question_id"])
        if r is None:
            raise ValueError(f"no reference answer for MT-Bench question {q['question_id']}")
        kw.update({f"ref_answer_{i + 1}": t for i, t in enumerate(r)})
    return chat(p["system_prompt"], p["prompt_template"].format(**kw))


def load_data(ctx, s: MTBenchSettings) -> tuple[list[dict], dict[int, list[str]], dict[str, dict]]:
    """(questions, reference answers by question ID, judge prompts by name)."""
    root = open_ended_dir(ctx) / "mt_bench"
    questions = select_questions(read_jsonl(root / "question.jsonl"), s)
    refs = {r["question_id"]: r["choices"][0]["turns"]
            for r in read_jsonl(root / "reference_answer" / f"{s.reference}.jsonl")}
    return questions, refs, mt_bench_judge_prompts(ctx)


def check_data(spec, ctx) -> str:
    questions, refs, _ = load_data(ctx, parse_section(MTBenchSettings, spec, "mt_bench"))
    missing = [q["question_id"] for q in questions if q["category"] in NEED_REF_CATS and q["question_id"] not in refs]
    if missing:
        raise ValueError(f"no reference answers for MT-Bench questions {missing}")
    return f"{len(questions)} questions"


@register_evaluator("mt_bench", needs_judge=True, version="2", settings=MTBenchSettings,
                    headline=("score",), preflight=check_data)
def mt_bench(model, spec, ctx) -> EvalResult:
    s = parse_section(MTBenchSettings, spec, "mt_bench")
    questions, refs, prompts = load_data(ctx, s)
    n_turns = max(s.turns)
    dec = Decoding(max_new_tokens=s.max_new_tokens, temperature=s.temperature, batch_size=s.batch_size,
                   seed=ctx.seed, engine=engine_setting(ctx.protocol))
    answers = generate(model, [q["turns"][:n_turns] for q in questions], dec, ctx.cache, desc="MT-Bench")

    jobs = [(q, a, t) for q, a in zip(questions, answers) for t in s.turns]
    judge = ctx.judge
    ledger = Ledger()
    constraint = judge.constraint(rating_constraint(s.judge_max_tokens or judge.max_tokens))
    verdicts = judge.judge_many([judge_messages(q, a, t, prompts, refs) for q, a, t in jobs], rating_or_none,
                                ledger, desc="MT-Bench judging", max_tokens=s.judge_max_tokens, constraint=constraint)

    by_turn: dict[int, list[float]] = defaultdict(list)
    by_cat: dict[str, list[float]] = defaultdict(list)
    details = []
    for (q, a, t), v in zip(jobs, verdicts):
        details.append({"question_id": q["question_id"], "category": q["category"], "turn": t,
                        "item": f"{q['question_id']}/turn{t}", "answer": a[t - 1], "score": v.value,
                        "error": v.error, "judgment": v.text, "attempts": v.attempts,
                        "scores": {"score": v.value, f"turn{t}": v.value} if v.ok else {}})
        if v.ok:
            by_turn[t].append(v.value)
            by_cat[q["category"]].append(v.value)
    all_scores = [x for t in sorted(by_turn) for x in by_turn[t]]
    # a mean over zero parsed ratings is omitted, not NaN: the error counts say why
    groups = {"score": all_scores, **{f"turn{t}": by_turn[t] for t in s.turns},
              **{f"category/{c}": by_cat[c] for c in sorted(by_cat)}}
    metrics = {k: Metric(*mean_sem(v)) for k, v in groups.items() if v}
    n_err = sum(1 for v in verdicts if not v.ok)
    counts = {"questions": len(questions), "judgments": len(jobs), "scored": len(all_scores),
              "errors": n_err, "parse_errors": sum(1 for v in verdicts if v.error == "parse"), **ledger.as_counts()}
    info = {"question_ids": [q["question_id"] for q in questions], "reference": s.reference,
            "judge": judge.identity, "rule": "mean of 1-10 ratings; unparseable ratings excluded and counted",
            "engine": resolve_engine(dec.engine), "verdict_constraint": constraint}
    return EvalResult(metrics, details, counts, info)
