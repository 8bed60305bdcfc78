"""AlpacaEval: pairwise preference of the model's answers over a reference model's, annotated by alpaca_eval's own
``PairwiseAnnotator`` with the harness's judge client answering.

The annotator config is written at run time under the cache: our own prompt template
(``harness/templates/alpaca_eval_judge.txt``) and a text ``regex_parser`` on ``[[1]]``/``[[2]]`` (servers such as
``transformers serve`` return no logprobs). alpaca_eval renders the prompts and judges each pair once in a
deterministic random order; its completions come from :class:`~selbench.judge.client.JudgeClient`
(:func:`judge_completions` as alpaca_eval's ``fn_completions``), so AlpacaEval's judgments go through the same
judgment cache, ledger, transport retries and re-asks of unparseable verdicts as the other judged evaluators, and
the API key never leaves that client. A verdict still unparseable after the re-asks (or a call that failed) is
dropped by alpaca_eval and counted here as an error, never a tie. A judge with structured outputs (the local vLLM
server) is constrained to answer ``[[1]]`` or ``[[2]]``; ``info`` says so.

Position bias: with ``position_check: N`` a seeded sample of N of the evaluated instructions is annotated a second
time with the two outputs swapped (the model's output shown where the reference's was); each such item records the
swapped verdict as the model's preference, and ``position_flip_rate`` is the share of them whose verdict changed.
The win rate stays alpaca_eval's single-order one.

Length control: ``lc_win_rate`` is alpaca_eval's own GLM, reported only when its hub file ``df_gamed.csv`` is
given as a local file (``lc_gamed_file``) or can be fetched; otherwise the column is ``lc_win_rate_approx``, a
length-only GLM that can be far from the official figure (docs/judges.md says how far and why).
"""

from __future__ import annotations

import functools
import json
import logging
import math
import re
import time
from importlib import resources
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field

from ..cache import atomic_write_text, file_sha256, stable_hash
from ..data import resolve_local
from ..evaluate import EvalResult, Metric, register_evaluator
from ..generate import Decoding, generate
from ..vllm_engine import engine_setting, resolve_engine
from .client import Ledger
from .common import default_data_dir, open_ended_dir, parse_section

log = logging.getLogger(__name__)

VERDICT = re.compile(r"\[\[([12])\]\]")  # the first one counts, as in the annotator's regex_parser
ANNOTATOR_SEED = 0  # alpaca_eval's seed for the order in which it shows the two outputs
WEIGHTED = "weighted_alpaca_eval_gpt4_turbo"  # alpaca_eval's logprob-weighted annotator (verdict: logprobs)


class AlpacaEvalSettings(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    reference: Literal["text_davinci_003", "gpt4_1106_preview"] = "gpt4_1106_preview"
    max_instances: int | None = Field(None, gt=0, description="first N of the 805 instructions; null = all")
    max_new_tokens: int = Field(1024, gt=0)
    batch_size: int = Field(8, gt=0)
    judge_max_tokens: int = Field(16, gt=0)
    lc_gamed_file: str | None = Field(
        None, description="a local copy of alpaca_eval's hub file df_gamed.csv (dataset tatsu-lab/alpaca_eval), "
                          "for its own length-controlled GLM offline; relative to the data directory or absolute. "
                          "null = fetch it from the hub (its local cache or the network)")
    position_check: int = Field(0, ge=0, description="re-ask the judge with the two outputs swapped on this many "
                                                     "of the instructions (a seed-0 sample), to measure its "
                                                     "position bias; 0 = off")
    verdict: Literal["text", "logprobs"] = Field(
        "text", description="text: selbench's template, the verdict [[1]]/[[2]] read from the judge's answer; "
                            "logprobs: alpaca_eval's own weighted annotator (AlpacaEval 2's default, "
                            f"{WEIGHTED}): its template, a one-token answer m/M, and the preference from the "
                            "judge's top-5 first-token logprobs, a number between 1 and 2 (needs logprobs)")


def reference_outputs(ctx, s: AlpacaEvalSettings) -> list[dict[str, Any]]:
    path = open_ended_dir(ctx) / "alpaca_eval" / "reference_outputs" / s.reference / "model_outputs.json"
    rows = json.loads(path.read_text(encoding="utf-8"))
    return rows[: s.max_instances]


def verdict_constraint(judge) -> dict[str, Any] | None:
    """The template's verdict, ``[[1]]`` or ``[[2]]``, forced where the judge supports structured outputs."""
    return judge.constraint({"choice": ["[[1]]", "[[2]]"]})


@functools.cache
def weighted_annotator() -> dict[str, Any]:
    """alpaca_eval's own ``weighted_alpaca_eval_gpt4_turbo`` config (its prompt template's text under
    ``template``), as the installed alpaca_eval ships it; read once per process (callers do not modify it)."""
    root = resources.files("alpaca_eval").joinpath("evaluators_configs")
    cfg = yaml.safe_load(root.joinpath(WEIGHTED, "configs.yaml").read_text("utf-8"))[WEIGHTED]
    return {**cfg, "template": root.joinpath(*cfg["prompt_template"].split("/")).read_text("utf-8")}


def write_annotator_config(judge, s: AlpacaEvalSettings, cache) -> tuple[str, Any]:
    """(annotator name, path of configs.yaml) for this judge; nothing secret is written."""
    if s.verdict == "logprobs":
        official = weighted_annotator()
        template = official["template"]
        parser = {"fn_completion_parser": official["fn_completion_parser"],
                  "completion_parser_kwargs": official["completion_parser_kwargs"],
                  "completion_key": official["completion_key"]}
        key = stable_hash({"judge": judge.identity, "annotator": WEIGHTED, "template": template, "parser": parser,
                           "top_logprobs": official["completions_kwargs"]["top_logprobs"]})
    else:
        template = resources.files("selbench").joinpath("templates/alpaca_eval_judge.txt").read_text("utf-8")
        constraint = verdict_constraint(judge)
        # (?s).* swallows the rest, so only the first verdict in a judgment counts
        parser = {"fn_completion_parser": "regex_parser",
                  "completion_parser_kwargs": {"outputs_to_match": {1: r"(?s)\[\[1\]\].*", 2: r"(?s)\[\[2\]\].*"}}}
        key = stable_hash({"judge": judge.identity, "template": template, "max_tokens": s.judge_max_tokens,
                           "temperature": judge.temperature, **({"constraint": constraint} if constraint else {})})
    name = f"selbench_{key}"
    root = cache.path("alpaca_eval", key)
    # fn_completions: given at run time (judge_completions)
    annotator = {name: {"prompt_template": f"{name}/template.txt", **parser, "batch_size": 1}}
    atomic_write_text(root / name / "template.txt", template)
    atomic_write_text(root / name / "configs.yaml", yaml.safe_dump(annotator))
    return name, root / name / "configs.yaml"


def _verdict(text: str) -> int | None:
    m = VERDICT.search(text)
    return int(m[1]) if m else None


def judge_completions(judge, s: AlpacaEvalSettings, ledger):
    """alpaca_eval's ``fn_completions`` on ``judge`` (a JudgeClient): each prompt, a ChatML text that alpaca_eval
    rendered from the template, is one judgment; a text without ``[[1]]`` or ``[[2]]`` is re-asked like any
    other unparseable verdict."""
    from alpaca_eval.utils import prompt_to_chatml

    if s.verdict == "logprobs":
        return _weighted_completions(judge, ledger, prompt_to_chatml)

    def fn_completions(prompts, **_):
        t0 = time.perf_counter()
        verdicts = judge.judge_many([prompt_to_chatml(p.strip()) for p in prompts], _verdict, ledger,
                                    desc="AlpacaEval judging", max_tokens=s.judge_max_tokens,
                                    constraint=verdict_constraint(judge))
        n = len(prompts)
        # " " for no text, as alpaca_eval's OpenAI decoder does; its parser then finds no verdict (an error)
        return {"completions": [v.text or " " for v in verdicts], "price_per_example": [0.0] * n,
                "time_per_example": [(time.perf_counter() - t0) / max(n, 1)] * n}

    return fn_completions


def _weighted_completions(judge, ledger, to_chatml):
    """``fn_completions`` for alpaca_eval's weighted annotator: one first token per prompt with its top logprobs,
    in the OpenAI shape its ``logprob_parser`` reads. A failed request, or logprobs without ``m`` or ``M``, leaves
    no preference (an error, as a text verdict that does not parse)."""
    k = weighted_annotator()["completions_kwargs"]["top_logprobs"]

    def fn_completions(prompts, **_):
        t0 = time.perf_counter()
        tops = judge.top_logprobs_many([to_chatml(p.strip()) for p in prompts], k, ledger,
                                       desc="AlpacaEval judging (logprobs)")
        completions = []
        for top in tops:
            top = top if isinstance(top, list) else []
            first = [{"token": t, "logprob": lp, "top_logprobs": [{"token": a, "logprob": b} for a, b in top]}
                     for t, lp in top[:1]] or [{"token": "", "logprob": None, "top_logprobs": []}]
            completions.append({"logprobs": {"content": first}, "text": first[0]["token"]})
        n = len(prompts)
        return {"completions_all": completions, "completions": [c["text"] or " " for c in completions],
                "price_per_example": [0.0] * n, "time_per_example": [(time.perf_counter() - t0) / max(n, 1)] * n}

    return fn_completions


def model_shown_first(instruction: str, seed: int = ANNOTATOR_SEED) -> bool:
    """Whether alpaca_eval showed the model's output (``output_2``) first when annotating ``instruction``: its
    ``RandomSwitchTwoColumnsProcessor`` swaps the two outputs when a choice seeded by the instruction says so."""
    from alpaca_eval.utils import random_seeded_choice

    return random_seeded_choice(seed="is_switched_outputs" + instruction + str(seed), choices=[False, True])


def preference_side(preference: float) -> int:
    """+1 the model's output preferred, -1 the reference's, 0 a draw."""
    return (preference > 1.5) - (preference < 1.5)


def position_sample(n_items: int, k: int) -> list[int]:
    """The protocol-fixed sample of the swapped re-ask: ``k`` of ``n_items`` positions, drawn with seed 0."""
    import numpy as np

    return sorted(np.random.default_rng(0).choice(n_items, size=min(k, n_items), replace=False).tolist())


def position_check(annotator, refs: list[dict], ours: list[dict], k: int) -> dict[str, float | None]:
    """The model's preference (1: reference, 2: model) on a sample of ``k`` instructions, annotated again with the
    outputs swapped: passed as ``outputs_1`` it is shown where the reference was (alpaca_eval's random order is
    seeded by the instruction alone), and its preference is 3 - the annotated one. instruction -> preference
    (None: unparseable)."""
    idx = position_sample(len(refs), k)
    if not idx:
        return {}
    swapped = annotator.annotate_head2head(outputs_1=[ours[i] for i in idx], outputs_2=[refs[i] for i in idx])
    by_instr = {a["instruction"]: _num(a.get("preference")) for a in swapped}
    return {refs[i]["instruction"]: (None if by_instr.get(refs[i]["instruction"]) is None
                                     else 3.0 - by_instr[refs[i]["instruction"]]) for i in idx}


def lc_fallback(prefs: list[float], len_model: list[int], len_ref: list[int], n_boot: int = 200,
                seed: int = 0) -> tuple[float, float | None]:
    """An *approximation* of the length-controlled win rate, for when alpaca_eval's GLM cannot run (no
    ``df_gamed.csv``): a logistic GLM of the preference on tanh(standardised length difference) with an intercept,
    fitted on this model's annotations alone; the value is the predicted preference at equal length,
    100·sigmoid(intercept). It lacks AlpacaEval's instruction-difficulty term and its regularisation towards the
    length-gamed baselines, so it can be far from the official figure (docs/judges.md). Stderr by bootstrap."""
    import numpy as np
    from sklearn.linear_model import LogisticRegression
    from threadpoolctl import threadpool_limits

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
    with threadpool_limits(1):  # one-feature fits: BLAS threads only contend with the torch threads (4x slower)
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


def check_data(spec, ctx) -> str:
    s = parse_section(AlpacaEvalSettings, spec, "alpaca_eval")
    if s.lc_gamed_file and resolve_local(s.lc_gamed_file, ctx.data_dir or default_data_dir()) is None:
        raise FileNotFoundError(f"evaluation.alpaca_eval.lc_gamed_file: {s.lc_gamed_file} not found")
    return f"{len(reference_outputs(ctx, s))} instructions ({s.reference})"


@register_evaluator("alpaca_eval", needs_judge=True, version="5", settings=AlpacaEvalSettings,
                    headline=("win_rate", "lc_win_rate", "lc_win_rate_approx"), preflight=check_data)
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
    judge, ledger = ctx.judge, Ledger()
    name, config = write_annotator_config(judge, s, ctx.cache)
    annotator = _float_preference_annotator()(annotators_config=str(config), seed=ANNOTATOR_SEED,
                                              base_dir=str(config.parents[1]),
                                              caching_path=str(config.parent / "annotations.json"),
                                              fn_completions=judge_completions(judge, s, ledger))
    annotations = annotator.annotate_head2head(outputs_1=refs, outputs_2=ours)
    swapped = position_check(annotator, refs, ours, s.position_check)
    df = pd.DataFrame(annotations)
    if "preference" not in df:
        df["preference"] = float("nan")
    if "instruction" in df:  # index = position in the reference file (the LC GLM's instruction-difficulty key)
        position = {r["instruction"]: i for i, r in enumerate(refs)}
        df.index = pd.Index([position.get(x, -1) for x in df["instruction"]])
    ok = df[df["preference"].notna()]
    n_err = len(refs) - len(ok)
    metrics: dict[str, Metric] = {}
    info: dict[str, Any] = {"reference": s.reference, "annotator": name, "judge": judge.identity,
                            "n_instructions": len(refs), "engine": resolve_engine(dec.engine),
                            "verdict": s.verdict,
                            "verdict_constraint": verdict_constraint(judge) if s.verdict == "text" else None}
    if len(ok):
        wr = get_winrate(ok)
        metrics["win_rate"] = Metric(float(wr["win_rate"]), _num(wr.get("standard_error")))
        metrics["discrete_win_rate"] = Metric(float(wr["discrete_win_rate"]))
        name, lc, lc_se, lc_info = _length_controlled(ok, s, ctx)
        metrics[name] = Metric(lc, lc_se)
        info.update(lc_info)
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
        if r["instruction"] in swapped:
            details[-1]["preference_swapped"] = swapped[r["instruction"]]
    counts = {"instructions": len(refs), "judgments": len(refs), "annotated": len(ok), "errors": n_err,
              "parse_errors": n_err,
              "model_wins": int((ok["preference"] > 1.5).sum()), "reference_wins": int((ok["preference"] < 1.5).sum()),
              "draws": int((ok["preference"] == 1.5).sum()), **ledger.as_counts()}
    if swapped:  # position bias: verdicts that changed when the outputs swapped places
        both = [(d["preference"], d["preference_swapped"]) for d in details
                if d.get("preference") is not None and d.get("preference_swapped") is not None]
        flips = sum(preference_side(a) != preference_side(b) for a, b in both)
        counts.update({"position_checked": len(swapped), "position_check_errors": len(swapped) - len(both),
                       "position_flips": flips})
        if both:
            metrics["position_flip_rate"] = Metric(flips / len(both), higher_is_better=False)
    return EvalResult(metrics, details, counts, info)


def _num(x) -> float | None:
    try:
        x = float(x)
    except (TypeError, ValueError):
        return None
    return None if math.isnan(x) else x


def _length_controlled(ok, s: AlpacaEvalSettings, ctx) -> tuple[str, float, float | None, dict[str, Any]]:
    """``("lc_win_rate", value, stderr, info)`` from alpaca_eval's own GLM (``get_length_controlled_winrate``,
    ``length_controlled_v1``) when its hub file ``df_gamed.csv`` is given (``lc_gamed_file``) or can be fetched;
    otherwise ``("lc_win_rate_approx", ...)`` from :func:`lc_fallback`, named as the approximation it is.

    ``ok`` keeps each annotation's position in the reference file as its index: the GLM looks up each
    instruction's difficulty in ``df_gamed.csv`` by that position (the reference files list the 805 instructions
    in alpaca_eval's order, and ``max_instances`` takes the first N)."""
    gamed = None
    if s.lc_gamed_file:
        gamed = resolve_local(s.lc_gamed_file, ctx.data_dir or default_data_dir())
        if gamed is None:
            raise FileNotFoundError(f"evaluation.alpaca_eval.lc_gamed_file: {s.lc_gamed_file} not found")
    try:
        value, se = alpaca_eval_lc(ok, gamed)
        source = {"lc_gamed_file": str(gamed), "lc_gamed_sha256": file_sha256(gamed)} if gamed else \
            {"lc_gamed_file": "hub:tatsu-lab/alpaca_eval/df_gamed.csv"}
        return "lc_win_rate", value, se, {"lc_method": "alpaca_eval_glm", "lc_n": len(ok), **source}
    except Exception as e:  # offline without the file (LocalEntryNotFoundError), or a GLM that cannot fit
        reason = f"{type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''}"
        (log.warning if gamed else log.info)("alpaca_eval LC GLM unavailable (%s); reporting lc_win_rate_approx",
                                             reason)
    lc, se = lc_fallback(ok["preference"].astype(float).tolist(), [len(o) for o in ok["output_2"]],
                         [len(o) for o in ok["output_1"]])
    return "lc_win_rate_approx", lc, se, {"lc_method": "length_logistic_fallback", "lc_unavailable": reason}


def alpaca_eval_lc(annotations, gamed_file=None) -> tuple[float, float | None]:
    """alpaca_eval's ``get_length_controlled_winrate`` (its default GLM) on ``annotations`` (a DataFrame with
    ``preference``, ``output_1`` (reference), ``output_2``, ``generator_1``, ``generator_2``, ``annotator``; its
    index = the instructions' positions in the 805). ``gamed_file``: a local ``df_gamed.csv``, fed to alpaca_eval in
    place of its hub download; ``None`` = its own download (hub cache or network)."""
    from unittest import mock

    from alpaca_eval.metrics import glm_winrate

    download = (lambda **_: str(gamed_file)) if gamed_file else _hub_download_once
    with mock.patch.object(glm_winrate, "hf_hub_download", download):
        r = glm_winrate.get_length_controlled_winrate(annotations.copy(), save_weights_dir=None)
    return float(r["length_controlled_winrate"]), _num(r.get("lc_standard_error"))


def _hub_download_once(**kw) -> str:
    """alpaca_eval's own ``hf_hub_download`` call; after one failure in this process, the same error at once
    (offline, each attempt spends ~30 s in huggingface_hub's retries: once per cell otherwise)."""
    from huggingface_hub import hf_hub_download

    from ..hub import once

    return once(f"{kw.get('repo_id')}/{kw.get('filename')}", lambda: hf_hub_download(**kw), (Exception,))
