"""Evaluation stage: a registry of evaluators, each turning one model into metrics.

``@register_evaluator("name")`` registers ``fn(model, spec, ctx) -> EvalResult``; the protocol's
``evaluation.<name>`` section is ``spec``. lm-eval benchmarks live in :mod:`selbench.lm_eval_runner`; the
LLM-judged suites (MT-Bench, AlpacaEval, pairwise win score) in :mod:`selbench.judge`.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from .cache import ArtifactCache, stable_hash

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ModelUnderTest:
    """One model to evaluate: the base weights plus an optional LoRA adapter (or a full fine-tuned directory)."""

    name: str  # leaderboard cell, e.g. "random/32/seed0", or "base"
    base_path: str  # base model directory or hub ID (for full fine-tuning: the fine-tuned directory)
    adapter: str | None
    identity: str  # hash of the weights; cache keys of generations/evaluations use it
    dtype: str = "float32"
    chat_template: str = "model"


@dataclass(frozen=True)
class Metric:
    value: float
    stderr: float | None = None


@dataclass
class EvalResult:
    metrics: dict[str, Metric]  # keys without the evaluator prefix, e.g. "arc_easy/acc"
    details: list[dict[str, Any]] = field(default_factory=list)  # per-example rows, written as a side file
    counts: dict[str, int] = field(default_factory=dict)  # e.g. judge calls, parse errors
    info: dict[str, Any] = field(default_factory=dict)  # e.g. which LC formula was used
    tables: dict[str, Any] = field(default_factory=dict)  # name -> pandas DataFrame, logged to wandb

    def to_json(self) -> dict[str, Any]:
        return {"metrics": {k: {"value": m.value, "stderr": m.stderr} for k, m in self.metrics.items()},
                "details": self.details, "counts": self.counts, "info": self.info,
                "tables": {k: v.to_dict(orient="split") for k, v in self.tables.items()}}

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> "EvalResult":
        import pandas as pd

        return cls({k: Metric(v["value"], v.get("stderr")) for k, v in d["metrics"].items()}, d.get("details", []),
                   d.get("counts", {}), d.get("info", {}),
                   {k: pd.DataFrame(**v) for k, v in d.get("tables", {}).items()})


@dataclass
class EvalContext:
    protocol: Any
    cache: ArtifactCache
    data_dir: Path | None
    seed: int = 0
    judge_provider: Callable[[], Any] | None = None  # returns a started judge client (lazy: started on first use)
    baselines: dict[str, ModelUnderTest] = field(default_factory=dict)  # "full"/"random" of the same budget+seed

    @property
    def judge(self):
        if self.judge_provider is None:
            raise RuntimeError("this evaluator needs an LLM judge but none is configured")
        return self.judge_provider()


@dataclass(frozen=True)
class EvaluatorSpec:
    name: str
    fn: Callable[[ModelUnderTest, Any, EvalContext], EvalResult]
    needs_judge: bool = False
    needs_baselines: tuple[str, ...] = ()  # cells that must be trained before this evaluator runs
    version: str = "1"


EVALUATORS: dict[str, EvaluatorSpec] = {}


def register_evaluator(name: str, *, needs_judge: bool = False, needs_baselines: tuple[str, ...] = (),
                       version: str = "1"):
    def deco(fn):
        EVALUATORS[name] = EvaluatorSpec(name, fn, needs_judge, needs_baselines, version)
        return fn

    return deco


def load_evaluators() -> dict[str, EvaluatorSpec]:
    from . import lm_eval_runner  # noqa: F401  (registers "lm_eval")

    try:
        from . import judge  # noqa: F401  (registers the judged suites)
    except ImportError as e:  # pragma: no cover - judge extras are part of the base install
        log.debug("judge evaluators unavailable: %s", e)
    return EVALUATORS


def configured_evaluators(protocol) -> dict[str, Any]:
    """The protocol's evaluation sections that are set, in a stable order: name -> spec."""
    sections = protocol.evaluation.model_dump(mode="python")
    return {k: v for k, v in sections.items() if v is not None}


def evaluate_cached(evaluator: EvaluatorSpec, model: ModelUnderTest, spec: Any,
                    ctx: EvalContext) -> tuple[EvalResult, bool]:
    """Run an evaluator unless its result for the same model, spec and baselines is cached."""
    key = stable_hash({"evaluator": evaluator.name, "version": evaluator.version, "model": model.identity,
                       "spec": spec, "judge": ctx.protocol.judge.identity() if evaluator.needs_judge else None,
                       "baselines": {k: v.identity for k, v in sorted(ctx.baselines.items())}})
    hit = ctx.cache.get_json(f"eval/{evaluator.name}", key)
    if hit is not None:
        return EvalResult.from_json(hit), True
    t0 = time.perf_counter()
    result = evaluator.fn(model, spec, ctx)
    result.info.setdefault("wall_s", round(time.perf_counter() - t0, 2))  # kept with the cached result
    ctx.cache.put_json(f"eval/{evaluator.name}", key, result.to_json())
    return result, False
