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


@register_evaluator("lm_eval", version="2", settings=LmEvalSpec)
def run_lm_eval(model: ModelUnderTest, spec: dict[str, Any], ctx: EvalContext) -> EvalResult:
    from lm_eval import simple_evaluate

    spec = LmEvalSpec.model_validate(spec)
    model_args = {"pretrained": model.base_path, "dtype": model.dtype, "device": "cpu"}
    if model.adapter:
        model_args["peft"] = model.adapter
    offline = Path(model.base_path).is_dir() and all(t in local_task_names() for t in spec.tasks)
    env = {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"} if offline else {}
    if ctx.data_dir is not None:
        env["SELBENCH_DATA_DIR"] = str(ctx.data_dir)
    gen_kwargs = f"max_gen_toks={spec.max_gen_toks}" if spec.max_gen_toks else None
    with scoped_environ(env):
        results = simple_evaluate(
            model="hf", model_args=model_args, tasks=list(spec.tasks), num_fewshot=spec.num_fewshot,
            batch_size=spec.batch_size, limit=spec.limit, task_manager=task_manager(spec.tasks),
            bootstrap_iters=spec.bootstrap_iters, apply_chat_template=spec.apply_chat_template,
            gen_kwargs=gen_kwargs, log_samples=True, random_seed=ctx.seed, numpy_random_seed=ctx.seed,
            torch_random_seed=ctx.seed, fewshot_random_seed=ctx.seed)
    n = {t: v.get("effective") for t, v in results.get("n-samples", {}).items()}
    return EvalResult(metrics_from_results(results), details=sample_rows(results),
                      info={"n_samples": n, "lm_eval_version": results.get("lm_eval_version"),
                            "versions": results.get("versions", {})})
