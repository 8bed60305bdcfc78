"""Leaderboard stage: ``LEADERBOARD.md`` and ``leaderboard.csv`` regenerated from ``results/`` alone.

One row per method x budget (mean over seeds, spread = sample standard deviation), a column per metric, the
base-model reference row first. Only records of the board's current protocol hash are used; others are counted
and named in the header so a stale result is never silently mixed in.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pandas as pd

from .cache import write_if_changed
from .evaluate import configured_evaluators
from .record import BASE_ROW, iter_records

REFERENCE_ROWS = (BASE_ROW, "full", "random")
# The judged headline metrics shown in LEADERBOARD.md (leaderboard.csv has every metric: per turn, category, test
# set, the strict two-order rule ...).
JUDGED_HEADLINES = ("mt_bench/score", "alpaca_eval/win_rate", "alpaca_eval/lc_win_rate", "pairwise/ws_vs_full",
                    "pairwise/ws_vs_random", "pairwise/flip_rate_vs_full", "pairwise/flip_rate_vs_random")


def judge_error_counts(evaluation: dict[str, Any]) -> tuple[int, int]:
    """(judged items with an unusable verdict, judged items) over the judged evaluators of one record."""
    errors = judged = 0
    for summary in evaluation.values():
        counts = summary.get("counts") or {}
        if "judgments" in counts:
            judged += int(counts["judgments"])
            errors += int(counts.get("errors", 0))
    return errors, judged


def records_frame(results_dir: Path, board: str, protocol_hash: str) -> tuple[pd.DataFrame, list[str]]:
    rows, stale = [], []
    for path, rec in iter_records(results_dir, board):
        if rec.get("protocol_hash") != protocol_hash:
            stale.append(str(path.relative_to(results_dir)))
            continue
        row = {"method": rec["method"]["row"], "family": rec["method"].get("family", ""),
               "budget": rec.get("budget"), "seed": rec["seed"],
               "select_s": (rec.get("timings") or {}).get("select_s"),
               "train_s": (rec.get("timings") or {}).get("train_s")}
        for name, m in rec.get("metrics", {}).items():
            row[name] = m["value"]
        row["judge_errors"], row["judged"] = judge_error_counts(rec.get("evaluation") or {})
        rows.append(row)
    return pd.DataFrame(rows), stale


def primary_metric_columns(columns: list[str]) -> list[str]:
    """The headline metric per lm-eval task (acc, else exact_match), used for the benchmark average."""
    by_task: dict[str, str] = {}
    for c in columns:
        if not c.startswith("lm_eval/"):
            continue
        task, metric = c.split("/")[1], c.split("/", 2)[2]
        if metric == "acc" or (metric.startswith("exact_match") and task not in by_task):
            by_task[task] = c
    return [by_task[t] for t in sorted(by_task)]


def aggregate(df: pd.DataFrame) -> pd.DataFrame:
    metric_cols = sorted(c for c in df.columns if "/" in c)
    prim = primary_metric_columns(metric_cols)
    if prim:
        df = df.assign(**{"bench_avg": df[prim].mean(axis=1, skipna=False)})
        metric_cols = ["bench_avg", *metric_cols]
    value_cols = metric_cols + ["select_s", "train_s", "judge_errors", "judged"]
    df = df.copy()
    df["budget"] = df["budget"].fillna(-1).astype(int)
    grouped = df.groupby(["method", "family", "budget"], dropna=False)
    mean = grouped[value_cols].mean()
    std = grouped[value_cols].std(ddof=1)
    out = mean.copy()
    for c in value_cols:
        out[f"{c}_std"] = std[c]
    out["seeds"] = grouped["seed"].count()
    out = out.reset_index()
    order = {r: i for i, r in enumerate(REFERENCE_ROWS)}
    out["_ref"] = out["method"].map(lambda m: order.get(m, len(order)))
    sort_key = "bench_avg" if "bench_avg" in out else "method"
    out = out.sort_values(["_ref", "budget", sort_key, "method"],
                          ascending=[True, True, sort_key == "method", True]).drop(columns="_ref")
    out["budget"] = out["budget"].map(lambda b: "" if b < 0 else b).astype(object)
    return out.reset_index(drop=True)


def _fmt(mean: Any, std: Any, seconds: bool = False) -> str:
    if mean is None or (isinstance(mean, float) and math.isnan(mean)):
        return "–"
    s = f"{mean:.0f}" if seconds else f"{mean:.3f}"
    if std is not None and not (isinstance(std, float) and math.isnan(std)):
        s += f" ± {std:.0f}" if seconds else f" ± {std:.3f}"
    return s


def headline_columns(columns: list[str], protocol=None) -> list[str]:
    """bench_avg, each lm-eval task's headline metric, and the judged headlines: those of every judged evaluator the
    protocol configures (shown even when no verdict parsed, so a judge that fails is visible), else those present."""
    present = set(columns)
    configured = set(configured_evaluators(protocol)) if protocol is not None else set()
    judged = [c for c in JUDGED_HEADLINES if c in present or c.split("/")[0] in configured]
    return [c for c in ("bench_avg", *primary_metric_columns(columns)) if c in present] + judged


def _errors_cell(r) -> str:
    if not r.get("judged") or math.isnan(r["judged"]):
        return "–"
    return f"{r['judge_errors']:.0f}/{r['judged']:.0f}"


def render_markdown(board: str, protocol, agg: pd.DataFrame, n_records: int, stale: list[str]) -> str:
    metric_cols = headline_columns(list(agg.columns), protocol)
    judged = "judged" in agg and agg["judged"].fillna(0).gt(0).any()
    head = ["method", "family", "budget", "seeds", *metric_cols, *(["judge errors"] if judged else []),
            "select s", "train s"]
    lines = [f"# Leaderboard: {board}", "",
             f"Protocol `{protocol.hash}` · base model `{protocol.base_model.path}` · "
             f"{n_records} result records · generated from `results/{board}/` by `selbench leaderboard`.", ""]
    if protocol.description:
        lines += [protocol.description.strip(), ""]
    if stale:
        lines += [f"{len(stale)} records of other protocol hashes were left out (e.g. `{stale[0]}`).", ""]
    lines += ["Values are means over seeds ± sample standard deviation. `bench_avg` is the mean of each "
              "lm-eval task's headline metric (acc, or exact_match). `leaderboard.csv` holds every metric (per "
              "MT-Bench turn and category, per pairwise test set, FastChat's strict two-order rule, ...)."
              + (" `judge errors`: judged items whose verdict could not be parsed (or the call failed) after "
                 "retries, over all judged items; they count in no score, never as ties." if judged else ""), ""]
    lines.append("| " + " | ".join(h.replace("lm_eval/", "").replace("_local/", "/") for h in head) + " |")
    lines.append("|" + "|".join("---" for _ in head) + "|")
    for _, r in agg.iterrows():
        cells = [f"**{r['method']}**" if r["method"] in REFERENCE_ROWS else r["method"], r["family"],
                 str(r["budget"]), str(int(r["seeds"]))]
        cells += [_fmt(r.get(c), r.get(f"{c}_std")) for c in metric_cols]
        cells += [_errors_cell(r)] if judged else []
        cells += [_fmt(r["select_s"], r.get("select_s_std"), True), _fmt(r["train_s"], r.get("train_s_std"), True)]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def build_leaderboard(results_dir: Path, board_dir: Path, board: str, protocol) -> dict[str, Any]:
    """Regenerate the board's tables; files are rewritten only when their content changes."""
    df, stale = records_frame(results_dir, board, protocol.hash)
    if df.empty:
        agg = pd.DataFrame(columns=["method", "family", "budget", "seeds", "select_s", "train_s"])
    else:
        agg = aggregate(df)
    md = render_markdown(board, protocol, agg, len(df), stale)
    csv = agg.round(6).to_csv(index=False, float_format="%.6g")
    changed = [name for name, text in (("LEADERBOARD.md", md), ("leaderboard.csv", csv))
               if write_if_changed(board_dir / name, text)]
    return {"rows": len(agg), "records": len(df), "stale": len(stale), "changed": changed, "table": agg}
