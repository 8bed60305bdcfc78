"""AlpacaEval: pairwise preference of the model's answers over a reference model's, annotated by alpaca_eval's own
``PairwiseAnnotator`` pointed at our judge endpoint.

The annotator config is written at run time under the cache: our own prompt template
(``harness/templates/alpaca_eval_judge.txt``), a text ``regex_parser`` on ``[[1]]``/``[[2]]`` (servers such as
``transformers serve`` return no logprobs), and a client config whose client class reads the API key from the
environment, so no key is ever written. alpaca_eval judges each pair once in a deterministic random order.
Unparseable verdicts are dropped by alpaca_eval and counted here as errors (no re-ask on this path). A judge with
structured outputs (the local vLLM server) is constrained to answer ``[[1]]`` or ``[[2]]``; ``info`` says so.
"""

from __future__ import annotations

import functools
import json
import logging
import math
import os
from importlib import resources
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field

from ..cache import atomic_write_text, stable_hash
from ..evaluate import EvalResult, Metric, register_evaluator
from ..generate import Decoding, generate
from ..vllm_engine import engine_setting, resolve_engine
from .common import open_ended_dir, parse_section

log = logging.getLogger(__name__)

try:  # the client class named in the client config; alpaca_eval imports it by dotted path
    from openai import OpenAI as _OpenAI
except ImportError:  # pragma: no cover
    _OpenAI = object


class JudgeOpenAI(_OpenAI):
    """``openai.OpenAI`` that takes the *name* of the key's environment variable instead of the key."""

    def __init__(self, api_key_env: str | None = None, **kwargs):
        key = os.environ.get(api_key_env or "", "") or "EMPTY"
        super().__init__(api_key=key, **kwargs)


class AlpacaEvalSettings(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    reference: Literal["text_davinci_003", "gpt4_1106_preview"] = "gpt4_1106_preview"
    max_instances: int | None = Field(None, gt=0, description="first N of the 805 instructions; null = all")
    max_new_tokens: int = Field(1024, gt=0)
    batch_size: int = Field(8, gt=0)
    judge_max_tokens: int = Field(16, gt=0)


def reference_outputs(ctx, s: AlpacaEvalSettings) -> list[dict[str, Any]]:
    path = open_ended_dir(ctx) / "alpaca_eval" / "reference_outputs" / s.reference / "model_outputs.json"
    rows = json.loads(path.read_text(encoding="utf-8"))
    return rows[: s.max_instances]


def verdict_constraint(judge) -> dict[str, Any] | None:
    """The template's verdict, ``[[1]]`` or ``[[2]]``, forced where the judge supports structured outputs."""
    return judge.constraint({"choice": ["[[1]]", "[[2]]"]})


def write_annotator_config(judge, s: AlpacaEvalSettings, cache) -> tuple[str, Any]:
    """(annotator name, path of configs.yaml) for this judge; nothing secret is written."""
    template = resources.files("selbench").joinpath("templates/alpaca_eval_judge.txt").read_text("utf-8")
    constraint = verdict_constraint(judge)
    key = stable_hash({"judge": judge.identity, "template": template, "max_tokens": s.judge_max_tokens,
                       "temperature": judge.temperature, **({"constraint": constraint} if constraint else {})})
    name = f"selbench_{key}"
    root = cache.path("alpaca_eval", key)
    client_cfg = {"default": [{"client_class": f"{__name__}.JudgeOpenAI", "base_url": judge.base_url,
                               "api_key_env": judge.api_key_env,
                               "max_retries": judge.max_retries, "timeout": judge.timeout_s}]}
    body = {**(judge.extra_body or {}), **({"structured_outputs": constraint} if constraint else {})}
    extra = {"extra_body": body} if body else {}
    annotator = {name: {
        "prompt_template": f"{name}/template.txt",
        "fn_completions": "openai_completions",
        "completions_kwargs": {"model_name": judge.model, "max_tokens": s.judge_max_tokens,
                               "temperature": judge.temperature, "requires_chatml": True, "price_per_token": 0,
                               "num_procs": judge.max_concurrency, "client_config_path": str(root / "client.yaml"),
                               **extra},
        "fn_completion_parser": "regex_parser",
        # (?s).* swallows the rest, so only the first verdict in a judgment counts
        "completion_parser_kwargs": {"outputs_to_match": {1: r"(?s)\[\[1\]\].*", 2: r"(?s)\[\[2\]\].*"}},
        "batch_size": 1,
    }}
    atomic_write_text(root / name / "template.txt", template)
    atomic_write_text(root / "client.yaml", yaml.safe_dump(client_cfg))
    atomic_write_text(root / name / "configs.yaml", yaml.safe_dump(annotator))
    return name, root / name / "configs.yaml"


def lc_fallback(prefs: list[float], len_model: list[int], len_ref: list[int], n_boot: int = 200,
                seed: int = 0) -> tuple[float, float | None]:
    """Length-controlled win rate without the hub's ``df_gamed.csv``: a logistic GLM of the preference on
    tanh(standardised length difference) with an intercept; the LC win rate is the predicted preference at equal
    length, 100·sigmoid(intercept) (AlpacaEval's LC formula minus its instruction-difficulty term). Stderr by
    bootstrap."""
    import numpy as np
    from sklearn.linear_model import LogisticRegression

    y = np.asarray(prefs, dtype=float) - 1.0
    d = np.asarray(len_model, dtype=float) - np.asarray(len_ref, dtype=float)
    sd = d.std()
    x = np.tanh(d / sd) if sd > 0 else np.zeros_like(d)

    def fit(idx) -> float:
        xs, ys = x[idx], y[idx]
        X = np.concatenate([xs, xs])[:, None]
        labels = np.concatenate([np.ones_like(ys), np.zeros_like(ys)])
        w = np.concatenate([ys, 1 - ys])
        if w[labels == 1].sum() == 0 or w[labels == 0].sum() == 0:  # one-sided: the GLM degenerates
            return 100.0 * float(ys.mean())
        m = LogisticRegression(C=1.0).fit(X, labels, sample_weight=w)
        return 100.0 / (1.0 + math.exp(-float(m.intercept_[0])))

    n = len(y)
    value = fit(np.arange(n))
    if n < 2:
        return value, None
    rng = np.random.default_rng(seed)
    boots = [fit(rng.integers(0, n, n)) for _ in range(n_boot)]
    return value, float(np.std(boots, ddof=1))


@functools.cache
def _float_preference_annotator():
    from alpaca_eval.annotators import PairwiseAnnotator

    class FloatPreferenceAnnotator(PairwiseAnnotator):
        """alpaca_eval's annotation cache reloads all-integer preferences as int64; its pre-processing then
        assigns 1.5 (equal outputs) into that column, which pandas >= 3 rejects. Keep the column float."""

        def load_(self, path=None):
            super().load_(path)
            df = getattr(self, "df_annotations", None)
            if df is not None and self.annotation_key in df:
                df[self.annotation_key] = df[self.annotation_key].astype(float)

    return FloatPreferenceAnnotator


@register_evaluator("alpaca_eval", needs_judge=True, version="4", settings=AlpacaEvalSettings,
                    headline=("win_rate", "lc_win_rate"))
def alpaca_eval(model, spec, ctx) -> EvalResult:
    import pandas as pd
    from alpaca_eval.metrics import get_winrate

    s = parse_section(AlpacaEvalSettings, spec, "alpaca_eval")
    refs = reference_outputs(ctx, s)
    dec = Decoding(max_new_tokens=s.max_new_tokens, batch_size=s.batch_size, seed=ctx.seed,
                   engine=engine_setting(ctx.protocol))
    answers = [a[0] for a in generate(model, [[r["instruction"]] for r in refs], dec, ctx.cache, desc="AlpacaEval")]
    ours = [{"instruction": r["instruction"], "output": a, "generator": model.name, "dataset": r.get("dataset")}
            for r, a in zip(refs, answers)]
    judge = ctx.judge
    name, config = write_annotator_config(judge, s, ctx.cache)
    annotator = _float_preference_annotator()(annotators_config=str(config), seed=0, base_dir=str(config.parents[1]),
                                              caching_path=str(config.parent / "annotations.json"))
    annotations = annotator.annotate_head2head(outputs_1=refs, outputs_2=ours)
    df = pd.DataFrame(annotations)
    if "preference" not in df:
        df["preference"] = float("nan")
    ok = df[df["preference"].notna()]
    n_err = len(refs) - len(ok)
    metrics: dict[str, Metric] = {}
    info: dict[str, Any] = {"reference": s.reference, "annotator": name, "judge": judge.identity,
                            "n_instructions": len(refs), "engine": resolve_engine(dec.engine),
                            "verdict_constraint": verdict_constraint(judge)}
    if len(ok):
        wr = get_winrate(ok)
        metrics["win_rate"] = Metric(float(wr["win_rate"]), _num(wr.get("standard_error")))
        metrics["discrete_win_rate"] = Metric(float(wr["discrete_win_rate"]))
        lc, lc_se, info["lc_method"] = _length_controlled(ok, len(refs))
        metrics["lc_win_rate"] = Metric(lc, lc_se)
    by_instr = {a["instruction"]: a for a in annotations}
    details = []
    for r, o in zip(refs, ours):
        a = by_instr.get(r["instruction"], {})
        pref = _num(a.get("preference"))
        details.append({"item": stable_hash(r["instruction"])[:16],
                        "scores": {"win_rate": 100.0 * (pref - 1)} if pref is not None else {},
                        "instruction": r["instruction"], "dataset": r.get("dataset"), "output": o["output"],
                        "reference_output": r["output"], "preference": _num(a.get("preference")),
                        "judgment": a.get(annotator.completion_key)})
    counts = {"instructions": len(refs), "judgments": len(refs), "annotated": len(ok), "errors": n_err,
              "parse_errors": n_err,
              "model_wins": int((ok["preference"] > 1.5).sum()), "reference_wins": int((ok["preference"] < 1.5).sum()),
              "draws": int((ok["preference"] == 1.5).sum())}
    return EvalResult(metrics, details, counts, info)


def _num(x) -> float | None:
    try:
        x = float(x)
    except (TypeError, ValueError):
        return None
    return None if math.isnan(x) else x


def _length_controlled(ok, n_total: int) -> tuple[float, float | None, str]:
    """AlpacaEval's own LC GLM when it can run (full 805 set, hub file reachable), else :func:`lc_fallback`."""
    if n_total == 805 and len(ok) == 805:
        try:
            from alpaca_eval.metrics import get_length_controlled_winrate

            r = get_length_controlled_winrate(ok.copy(), save_weights_dir=None)
            return float(r["length_controlled_winrate"]), _num(r.get("lc_standard_error")), "alpaca_eval_glm"
        except Exception as e:  # offline: df_gamed.csv is only on the hub
            log.info("alpaca_eval LC GLM unavailable (%s); using the length-only fallback", type(e).__name__)
    lc, se = lc_fallback(ok["preference"].astype(float).tolist(), [len(o) for o in ok["output_2"]],
                         [len(o) for o in ok["output_1"]])
    return lc, se, "length_logistic_fallback"
