"""lm-eval benchmarks as a selbench evaluator: ``lm_eval.simple_evaluate`` on base + adapter.

Local YAML tasks (``harness/tasks``, names ending ``_local``) read the benchmark files from the data directory
and run offline; any other task name is looked up in lm-eval's own index (hub datasets, needs the network).
"""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any

from .evaluate import EvalContext, EvalResult, Metric, ModelUnderTest, register_evaluator
from .paths import scoped_environ
from .protocol import LmEvalSpec
from .vllm_engine import engine_setting, resolve_engine

log = logging.getLogger(__name__)

TASKS_DIR = Path(__file__).parent / "tasks"


def local_task_names() -> set[str]:
    return {p.stem for p in TASKS_DIR.glob("*.yaml")}


def task_manager(tasks: list[str]):
    from lm_eval.tasks import TaskManager

    # lm-eval's default index takes ~40 s to build; only pay for it when a non-local task is asked for.
    needs_defaults = any(t not in local_task_names() for t in tasks)
    return TaskManager(include_path=str(TASKS_DIR), include_defaults=needs_defaults)


def _float_or_none(v: Any) -> float | None:
    try:
        f = float(v)
    except (TypeError, ValueError):  # lm-eval reports "N/A" when it cannot bootstrap
        return None
    return f if math.isfinite(f) else None


def metrics_from_results(results: dict[str, Any]) -> dict[str, Metric]:
    """``results["results"][task]["acc,none"]`` -> ``{"task/acc": Metric(value, stderr)}``."""
    out = {}
    for task, vals in results["results"].items():
        for key, value in vals.items():
            if "," not in key or "_stderr" in key:
                continue
            metric, filt = key.split(",", 1)
            v = _float_or_none(value)
            if v is None:
                continue
            name = f"{task}/{metric}" if filt == "none" else f"{task}/{metric}[{filt}]"
            out[name] = Metric(v, _float_or_none(vals.get(f"{metric}_stderr,{filt}")))
    return out


def sample_rows(results: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per (task, document, filter); ``item`` and ``scores`` (keyed like the metrics) serve paired
    comparisons between cells."""
    rows = []
    for task, samples in (results.get("samples") or {}).items():
        for s in samples:
            resp = s.get("filtered_resps")
            filt = s.get("filter", "none")
            values = {m: s[m] for m in s.get("metrics", []) if m in s}
            scores = {(f"{task}/{m}" if filt == "none" else f"{task}/{m}[{filt}]"): _float_or_none(v)
                      for m, v in values.items()}
            rows.append({"task": task, "doc_id": s.get("doc_id"), "item": f"{task}/{s.get('doc_id')}",
                         "target": str(s.get("target")),
                         "response": str(resp[0] if isinstance(resp, list) and resp else resp)[:500],
                         **values, "scores": {k: v for k, v in scores.items() if v is not None}})
    return rows


def _task_config(name: str) -> dict[str, Any]:
    """A local task's YAML with its ``include`` merged; ``!function`` tags are kept as their dotted name."""
    import yaml

    class Loader(yaml.SafeLoader):
        pass

    Loader.add_constructor("!function", lambda loader, node: loader.construct_scalar(node))
    cfg = yaml.load((TASKS_DIR / f"{name}.yaml").read_text(encoding="utf-8"), Loader=Loader)
    if "include" in cfg:
        base = yaml.load((TASKS_DIR / cfg.pop("include")).read_text(encoding="utf-8"), Loader=Loader)
        cfg = {**base, **cfg, "dataset_kwargs": {**base.get("dataset_kwargs", {}), **cfg.get("dataset_kwargs", {})}}
    return cfg


def check_data(spec: Any, ctx: EvalContext) -> str:
    """Load every local task's documents through its own loader (a group: each member's)."""
    import importlib.util

    mod_spec = importlib.util.spec_from_file_location("selbench_local_task_loaders", TASKS_DIR / "loaders.py")
    loaders = importlib.util.module_from_spec(mod_spec)
    mod_spec.loader.exec_module(loaders)  # as lm-eval imports a task's `!function loaders.x`
    spec = LmEvalSpec.model_validate(spec)
    local, todo, n_docs = local_task_names(), list(spec.tasks), 0
    env = {"SELBENCH_DATA_DIR": str(ctx.data_dir)} if ctx.data_dir is not None else {}
    with scoped_environ(env):
        while todo:
            name = todo.pop()
            if name not in local:
                if name.endswith("_local"):
                    raise ValueError(f"lm_eval task {name!r} is not a local task (local: {sorted(local)})")
                continue  # a task from lm-eval's own index: the hub is asked when it runs
            cfg = _task_config(name)
            if "group" in cfg:
                todo += list(cfg.get("task", []))
                continue
            loader = getattr(loaders, str(cfg["custom_dataset"]).rsplit(".", 1)[-1])
            n_docs += len(loader(**cfg.get("dataset_kwargs", {}))[cfg.get("test_split", "test")])
    return f"{len(spec.tasks)} tasks, {n_docs} local documents"


@register_evaluator("lm_eval", version="2", settings=LmEvalSpec, preflight=check_data, generates=True)
def run_lm_eval(model: ModelUnderTest, spec: dict[str, Any], ctx: EvalContext) -> EvalResult:
    from lm_eval import simple_evaluate

    spec = LmEvalSpec.model_validate(spec)
    model_args = {"pretrained": model.base_path, "dtype": model.dtype, "device": model.device}
    if model.adapter:
        model_args["peft"] = model.adapter
    offline = Path(model.base_path).is_dir() and all(t in local_task_names() for t in spec.tasks)
    env = {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"} if offline else {}
    if ctx.data_dir is not None:
        env["SELBENCH_DATA_DIR"] = str(ctx.data_dir)
    gen_kwargs = f"max_gen_toks={spec.max_gen_toks}" if spec.max_gen_toks else None
    engine = resolve_engine(engine_setting(ctx.protocol))
    with scoped_environ(env):
        lm = "hf"
        if engine == "vllm":  # generation tasks decode on vLLM; log-likelihoods stay on transformers
            from .lm_eval_vllm import HFLMWithVllmGeneration

            lm = HFLMWithVllmGeneration(base_path=model.base_path, adapter=model.adapter, dtype=model.dtype,
                                        device=model.device, batch_size=spec.batch_size,
                                        cache_root=ctx.cache.root if ctx.cache else None, seed=ctx.seed)
        results = simple_evaluate(
            model=lm, model_args=model_args if lm == "hf" else None, tasks=list(spec.tasks), num_fewshot=spec.num_fewshot,
            batch_size=spec.batch_size, limit=spec.limit, task_manager=task_manager(spec.tasks),
            bootstrap_iters=spec.bootstrap_iters, apply_chat_template=spec.apply_chat_template,
            gen_kwargs=gen_kwargs, log_samples=True, random_seed=ctx.seed, numpy_random_seed=ctx.seed,
            torch_random_seed=ctx.seed, fewshot_random_seed=ctx.seed)
    n = {t: v.get("effective") for t, v in results.get("n-samples", {}).items()}
    return EvalResult(metrics_from_results(results), details=sample_rows(results),
                      info={"n_samples": n, "generation_engine": engine, "lm_eval_version": results.get("lm_eval_version"),
                            "versions": results.get("versions", {})})
