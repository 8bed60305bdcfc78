"""Evaluation stage: a registry of evaluators, each turning one model into metrics.

``@register_evaluator("name", settings=Model, headline=(...))`` registers ``fn(model, spec, ctx) -> EvalResult``;
the protocol's ``evaluation.<name>`` section is ``spec`` (validated against ``settings`` when the board loads), and
``headline`` names the metrics the leaderboard shows; ``preflight(spec, ctx)`` loads the data files it will read
(``selbench check``). The registry is a leaf: it imports no evaluator. Built-ins
(lm-eval benchmarks in :mod:`selbench.lm_eval_runner`, reference likelihood in :mod:`selbench.ref_likelihood`, the
LLM-judged suites in :mod:`selbench.judge`) and third-party packages' evaluators (entry-point group
``selbench.evaluators``) are imported by name when the registry is first read, as lm-eval finds its tasks.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from .cache import ArtifactCache

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
    device: str = "cpu"  # where it is loaded (selbench.device); part of the cache keys of what it computes


@dataclass(frozen=True)
class Metric:
    value: float
    stderr: float | None = None
    higher_is_better: bool = True


def metric_json(m: Metric) -> dict[str, Any]:
    out = {"value": m.value, "stderr": m.stderr}
    return out if m.higher_is_better else {**out, "higher_is_better": False}


@dataclass
class EvalResult:
    metrics: dict[str, Metric]  # keys without the evaluator prefix, e.g. "arc_easy/acc"
    # per-example rows, written as a side file; each row that scores an item has "item" (a stable ID, the same in
    # every cell) and "scores" ({metric key: value}), which the leaderboard pairs across cells
    details: list[dict[str, Any]] = field(default_factory=list)
    counts: dict[str, int] = field(default_factory=dict)  # e.g. judge calls, parse errors
    info: dict[str, Any] = field(default_factory=dict)  # e.g. which LC formula was used
    tables: dict[str, Any] = field(default_factory=dict)  # name -> pandas DataFrame, logged to wandb

    def to_json(self) -> dict[str, Any]:
        return {"metrics": {k: metric_json(m) for k, m in self.metrics.items()},
                "details": self.details, "counts": self.counts, "info": self.info,
                "tables": {k: v.to_dict(orient="split") for k, v in self.tables.items()}}

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> "EvalResult":
        import pandas as pd

        return cls({k: Metric(v["value"], v.get("stderr"), v.get("higher_is_better", True))
                    for k, v in d["metrics"].items()}, d.get("details", []),
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
    settings: Any = None  # a pydantic model of the protocol section, validated when the board loads
    headline: tuple[str, ...] = ()  # metric keys (without the evaluator prefix) shown on the leaderboard
    # preflight(spec, ctx) -> one-line summary: loads the data files the evaluator will read, raising
    # FileNotFoundError/ValueError naming what is missing; `selbench check` runs it before any work
    preflight: Callable[[Any, "EvalContext"], str] | None = None
    # generates text with the protocol's engine (judged evaluators always do): a vLLM result is cached apart
    generates: bool = False

    def validate(self, section: Any, where: str) -> None:
        if self.settings is None:
            return
        from pydantic import ValidationError

        from .protocol import describe_validation_error

        try:
            self.settings.model_validate(section or {})
        except ValidationError as e:
            raise ValueError(describe_validation_error(e, f"{where}: evaluation.{self.name}: invalid settings",
                                                       f"evaluation.{self.name}.")) from None


EVALUATORS: dict[str, EvaluatorSpec] = {}
ENTRY_POINT_GROUP = "selbench.evaluators"
BUILTIN_MODULES = ("selbench.lm_eval_runner", "selbench.ref_likelihood", "selbench.judge")
_LOADED = False


def register_evaluator(name: str, *, needs_judge: bool = False, needs_baselines: tuple[str, ...] = (),
                       version: str = "1", settings: Any = None, headline: tuple[str, ...] = (),
                       preflight: Callable[[Any, EvalContext], str] | None = None, generates: bool = False):
    def deco(fn):
        EVALUATORS[name] = EvaluatorSpec(name, fn, needs_judge, tuple(needs_baselines), version, settings,
                                         tuple(headline), preflight, generates or needs_judge)
        return fn

    return deco


def load_evaluators() -> dict[str, EvaluatorSpec]:
    """Every registered evaluator: the built-ins, then those of installed packages' entry points."""
    global _LOADED
    if not _LOADED:
        import importlib
        from importlib.metadata import entry_points

        for module in BUILTIN_MODULES:
            importlib.import_module(module)
        for ep in entry_points(group=ENTRY_POINT_GROUP):
            try:
                ep.load()  # importing the module runs its @register_evaluator decorators
            except Exception as e:
                log.error("evaluator entry point %s (%s) failed to load: %s", ep.name, ep.value, e)
        _LOADED = True
    return EVALUATORS


def check_evaluation(protocol, where: str) -> None:
    """Every configured section names a known evaluator and has valid settings; fails before any work."""
    known = load_evaluators()
    for name, section in configured_evaluators(protocol).items():
        if name not in known:
            raise ValueError(f"{where}: evaluation.{name} names no known evaluator (known: {sorted(known)}; "
                             f"third-party evaluators register through the entry-point group {ENTRY_POINT_GROUP!r})")
        known[name].validate(section, where)


def configured_evaluators(protocol) -> dict[str, Any]:
    """The protocol's evaluation sections that are set, in a stable order: name -> spec."""
    sections = protocol.evaluation.model_dump(mode="python")
    return {k: v for k, v in sections.items() if v is not None}


def evaluate_cached(evaluator: EvaluatorSpec, model: ModelUnderTest, spec: Any,
                    ctx: EvalContext) -> tuple[EvalResult, bool]:
    """Run an evaluator unless its result for the same model, spec, baselines (and, for the judged ones, which
    generate answers: judge, engine and device) is cached."""
    from .vllm_engine import engine_device, engine_setting, resolve_engine

    judged = evaluator.needs_judge
    engine = resolve_engine(engine_setting(ctx.protocol)) if evaluator.generates else None
    if not judged and engine == "transformers":
        engine = None  # keys of results computed before an evaluator could generate on vLLM stay valid
    inputs = {"evaluator": evaluator.name, "version": evaluator.version, "model": model.identity, "spec": spec,
              "judge": ctx.protocol.judge.identity() if judged else None,
              "baselines": {k: v.identity for k, v in sorted(ctx.baselines.items())}}
    computed = []

    def run() -> dict[str, Any]:
        t0 = time.perf_counter()
        result = evaluator.fn(model, spec, ctx)
        result.info.setdefault("wall_s", round(time.perf_counter() - t0, 2))  # kept with the cached result
        computed.append(result)
        return result.to_json()

    art = ctx.cache.get_or_compute(f"eval/{evaluator.name}", inputs, run, engine=engine,
                                   device=engine_device(engine, model.device) if engine else model.device)
    return (computed[0] if computed else EvalResult.from_json(art.value)), art.hit
