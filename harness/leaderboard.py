"""Leaderboard stage: ``LEADERBOARD.md``, ``leaderboard.csv``, ``comparisons.csv`` and ``leaderboard.html``
(:mod:`selbench.report_html`) from ``results/`` alone.

One row per method x budget (mean over seeds), a column per metric, the base-model reference row first. Every
headline metric with per-item scores carries the row's 95% interval, its paired difference to ``random`` at the
same budget (interval, BH-adjusted p-value, ▲/▼) and to ``full``; the header states each metric's noise floor
(:mod:`selbench.compare`, :mod:`selbench.stats`) and each judged metric's judge-bias diagnostics
(:mod:`selbench.judge_bias`, also in ``judge_bias.csv``). Only records of the board's current protocol hash are used;
others are counted and named in the header so a stale result is never silently mixed in.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pandas as pd

from .cache import write_if_changed
from .contamination import OVERLAP_COLUMN, overlap_column, overlap_legend
from .evaluate import configured_evaluators, load_evaluators
from .record import BASE_ROW, iter_records

REFERENCE_ROWS = (BASE_ROW, "full", "random")
# The judged headline metrics shown in LEADERBOARD.md (leaderboard.csv has every metric: per turn, category, test
# set, the strict two-order rule ...).


def judge_error_counts(evaluation: dict[str, Any]) -> tuple[int, int]:
    """(judged items with an unusable verdict, judged items) over the judged evaluators of one record."""
    errors = judged = 0
    for summary in evaluation.values():
        counts = summary.get("counts") or {}
        if "judgments" in counts:
            judged += int(counts["judgments"])
            errors += int(counts.get("errors", 0))
    return errors, judged


def selection_judge_tokens(rec: dict[str, Any]) -> float:
    """Judge tokens (prompt + completion) of a judged method's selection, those of answers served from the judgment
    cache included (a method's cost does not depend on what an earlier run cached); NaN for a method that asks no
    judge."""
    j = ((rec.get("selection") or {}).get("cost") or {}).get("judge")
    keys = ("prompt_tokens", "completion_tokens", "cached_prompt_tokens", "cached_completion_tokens")
    return float(sum(j.get(k, 0) for k in keys)) if j else math.nan


def records_frame(results_dir: Path, board: str, protocol_hash: str
                  ) -> tuple[pd.DataFrame, list[str], list[tuple[Path, dict[str, Any]]]]:
    rows, stale, current = [], [], []
    for path, rec in iter_records(results_dir, board):
        if rec.get("protocol_hash") != protocol_hash:
            stale.append(str(path.relative_to(results_dir)))
            continue
        current.append((path, rec))
        row = {"method": rec["method"]["row"], "family": rec["method"].get("family", ""),
               "budget": rec.get("budget"), "seed": rec["seed"],
               "select_s": (rec.get("timings") or {}).get("select_s"),
               "train_s": (rec.get("timings") or {}).get("train_s"),
               "select_tokens": selection_judge_tokens(rec)}
        for name, m in rec.get("metrics", {}).items():
            row[name] = m["value"]
        row["judge_errors"], row["judged"] = judge_error_counts(rec.get("evaluation") or {})
        rows.append(row)
    return pd.DataFrame(rows), stale, current


def primary_metric_columns(columns: list[str]) -> list[str]:
    """The headline metric per lm-eval task (acc, else exact_match; IFEval: prompt-level strict accuracy, the Open
    LLM Leaderboard's), used for the benchmark average."""
    by_task: dict[str, str] = {}
    for c in columns:
        if not c.startswith("lm_eval/"):
            continue
        task, metric = c.split("/")[1], c.split("/", 2)[2]
        if metric == "acc" or ((metric.startswith("exact_match") or metric == "prompt_level_strict_acc")
                               and task not in by_task):
            by_task[task] = c
    return [by_task[t] for t in sorted(by_task)]


def aggregate(df: pd.DataFrame) -> pd.DataFrame:
    metric_cols = sorted(c for c in df.columns if "/" in c)
    prim = primary_metric_columns(metric_cols)
    if prim:
        df = df.assign(**{"bench_avg": df[prim].mean(axis=1, skipna=False)})
        metric_cols = ["bench_avg", *metric_cols]
    value_cols = metric_cols + ["select_s", "train_s", "select_tokens", "judge_errors", "judged"]
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
    """The evaluators' declared headlines (judge-free ones first), bench_avg and each lm-eval task's headline
    metric, then the judged ones: a judged headline of a configured evaluator is shown even when no verdict parsed,
    so a judge that fails is visible (when it produced some of its headlines, only those: e.g. AlpacaEval reports
    either ``lc_win_rate`` or ``lc_win_rate_approx``)."""
    present = set(columns)
    configured = set(configured_evaluators(protocol)) if protocol is not None else set()
    specs = load_evaluators()
    plain, judged = [], []
    for name, spec in specs.items():
        produced = any(f"{name}/{h}" in present for h in spec.headline)
        for h in spec.headline:
            c = f"{name}/{h}"
            if c in present or (spec.needs_judge and name in configured and not produced):
                (judged if spec.needs_judge else plain).append(c)
    return plain + [c for c in ("bench_avg", *primary_metric_columns(columns)) if c in present] + judged


def _errors_cell(r) -> str:
    if not r.get("judged") or math.isnan(r["judged"]):
        return "–"
    return f"{r['judge_errors']:.0f}/{r['judged']:.0f}"


def _interval_cell(r, c: str) -> str:
    """``mean [lo, hi]`` then the difference to random: ``Δr +0.012 ± 0.008 ▲`` (± = half the 95% interval)."""
    mean = r.get(c)
    if mean is None or (isinstance(mean, float) and math.isnan(mean)):
        return "–"
    out = f"{mean:.3f}"
    lo, hi = r.get(f"{c}:ci_low"), r.get(f"{c}:ci_high")
    if _num(lo) and _num(hi) and hi > lo:
        out += f" [{lo:.3f}, {hi:.3f}]"
    d, dlo, dhi = r.get(f"{c}:vs_random"), r.get(f"{c}:vs_random:ci_low"), r.get(f"{c}:vs_random:ci_high")
    if _num(d) and _num(dlo) and _num(dhi):
        out += f"<br>Δr {d:+.3f} ± {(dhi - dlo) / 2:.3f} {r.get(f'{c}:vs_random:mark') or ''}".rstrip()
    return out


def _num(x) -> bool:
    return x is not None and not (isinstance(x, float) and math.isnan(x))


def judge_bias_lines(bias: list | None) -> list[str]:
    """The header's judge-bias block: one line per judged metric (none for a board without judged metrics)."""
    if not bias:
        return []
    legend = ("**Judge bias** (per judged metric, pooled over the board's cells; `judge_bias.csv`, "
              "docs/judges.md): length ρ is Spearman's correlation of the verdict with answer length in "
              "characters [95% bootstrap interval], a correlation, not a causal effect; first-shown wins: the "
              "share of decisive verdicts won by the answer shown first (0.5 = no position bias); flip rate: the "
              "share of verdicts that change when the two answers swap places [95% Wilson intervals].")
    return [legend, "", *[f"- {b.sentence()}" for b in bias], ""]


def verdicts(agg: pd.DataFrame, metric_cols: list[str]) -> list[tuple[str, Any, list[str], list[str], list[str]]]:
    """What the board says about each method against ``random``, read from the paired tests: per metric and budget,
    the rows significantly better (▲), significantly worse (▼), and those not distinguishable at this size. A marked
    row with fewer seeds than ``random`` carries its seed count: its own seed-to-seed spread is not in its test yet,
    so its verdict is provisional."""
    out = []
    for m in metric_cols:
        key = f"{m}:vs_random"
        if key not in agg:
            continue
        for budget, g in agg[agg[key].notna()].groupby("budget", sort=False):
            marks = g.get(f"{key}:mark", pd.Series("", index=g.index)).fillna("")
            ref = agg.loc[(agg["method"] == "random") & (agg["budget"] == budget), "seeds"]
            few = {r.method: int(r.seeds) for r in g.itertuples() if len(ref) and int(r.seeds) < int(ref.iloc[0])}

            def label(row: str) -> str:
                return f"{row} ({few[row]} seed{'s' if few[row] > 1 else ''})" if row in few else row

            out.append((m, budget, sorted(map(label, g.loc[marks == "▲", "method"])),
                        sorted(map(label, g.loc[marks == "▼", "method"])),
                        sorted(g.loc[~marks.isin(["▲", "▼"]), "method"])))
    return out


def verdict_lines(agg: pd.DataFrame, metric_cols: list[str]) -> list[str]:
    """The verdicts in one line per metric, for the terminal: the marked rows by name, the others by number."""
    lines: dict[str, list[str]] = {}
    for m, budget, better, worse, same in verdicts(agg, metric_cols):
        lines.setdefault(m, []).append(f"at {budget}: ▲ {', '.join(better) or 'none'}; ▼ {', '.join(worse) or 'none'}; "
                                       f"not distinguishable: {len(same)}")
    return [f"`{m}` " + " · ".join(parts) for m, parts in lines.items()]


def verdict_table(agg: pd.DataFrame, metric_cols: list[str]) -> list[str]:
    """The verdicts as a markdown table, one row per metric and budget, every method named."""
    rows = verdicts(agg, metric_cols)
    if not rows:
        return []
    lines = ["**Against random** (per metric and budget, from the paired tests below: significantly better ▲, "
             "significantly worse ▼, or not distinguishable from `random` at this board's size; `(1 seed)` after a "
             "marked row: it has fewer seeds than `random`, so its own seed-to-seed spread is not in its test yet "
             "and the verdict is provisional):", "",
             "| metric | budget | ▲ better than random | ▼ worse than random | not distinguishable |",
             "|---|---|---|---|---|"]
    for m, budget, better, worse, same in rows:
        rest = f"{len(same)}: {', '.join(same)}" if same else "–"
        lines.append(f"| `{m}` | {budget} | {', '.join(better) or '–'} | {', '.join(worse) or '–'} | {rest} |")
    return [*lines, ""]


def render_markdown(board: str, protocol, agg: pd.DataFrame, n_records: int, stale: list[str],
                    floors: dict[str, Any] | None = None, bias: list | None = None) -> str:
    metric_cols = headline_columns(list(agg.columns), protocol)
    judged = "judged" in agg and agg["judged"].fillna(0).gt(0).any()
    tokens = "select_tokens" in agg and agg["select_tokens"].notna().any()
    head = ["method", "family", "budget", "seeds", *metric_cols, *(["judge errors"] if judged else []),
            *([OVERLAP_COLUMN] if OVERLAP_COLUMN in agg else []), "select s", "train s",
            *(["select judge tokens"] if tokens else [])]
    lines = [f"# Leaderboard: {board}", "",
             f"Protocol `{protocol.hash}` · base model `{protocol.base_model.path}` · "
             f"{n_records} result records · generated from `results/{board}/` by `selbench leaderboard`.", ""]
    if protocol.description:
        lines += [protocol.description.strip(), ""]
    if stale:
        lines += [f"{len(stale)} records of other protocol hashes were left out (e.g. `{stale[0]}`).", ""]
    floors = floors or {}
    if floors:
        lines += ["**Noise floor** (per metric; from the paired comparisons with `random`):", ""]
        lines += [f"- `{m}`: {f.sentence()}" for m, f in floors.items()] + [""]
    elif n_records:
        lines += ["**No intervals or tests on this board yet**: no headline metric has per-item scores in a "
                  "`random` row and another row (records written before selbench stored item IDs need a "
                  "refresh). The values below are bare means: do not read differences into them.", ""]
    lines += verdict_table(agg, metric_cols)
    lines += judge_bias_lines(bias)
    lines += ["Cells: mean over seeds [95% interval], then `Δr`: the paired difference to `random` at the same "
              "budget ± half its 95% interval (hierarchical bootstrap over seeds and items, Student-t with "
              "Satterthwaite df; `selbench/stats.py`). ▲/▼: significantly better/worse than random after "
              "Benjamini-Hochberg correction over the board's rows (FDR 5%); no mark: not distinguishable from "
              "random at this size. Lower is better for `nll` and `bpb`. `bench_avg` is the mean of each lm-eval "
              "task's headline metric (acc, or exact_match). `leaderboard.csv` holds every metric, "
              "`comparisons.csv` every paired test (also against `full`). `select s`, `train s`: wall seconds as run "
              "(mean ± SD over seeds, on the machines that wrote the records); a selection that reused signals, judge "
              "answers or a whole selection from the cache (computed for another budget or seed of the method) "
              "shows only what it spent itself: a method's scoring cost is usually in the first cell it ran."
              + (" `judge errors`: judged items whose verdict could not be parsed (or the call failed) after "
                 "retries, over all judged items; they count in no score, never as ties." if judged else ""), ""]
    lines.append("| " + " | ".join(h.replace("lm_eval/", "").replace("_local/", "/") for h in head) + " |")
    lines.append("|" + "|".join("---" for _ in head) + "|")
    for _, r in agg.iterrows():
        cells = [f"**{r['method']}**" if r["method"] in REFERENCE_ROWS else r["method"], r["family"],
                 str(r["budget"]), str(int(r["seeds"]))]
        cells += [_interval_cell(r, c) if f"{c}:ci_low" in r else _fmt(r.get(c), r.get(f"{c}_std"))
                  for c in metric_cols]
        cells += [_errors_cell(r)] if judged else []
        cells += [str(r[OVERLAP_COLUMN])] if OVERLAP_COLUMN in agg else []  # contamination report
        cells += [_fmt(r["select_s"], r.get("select_s_std"), True), _fmt(r["train_s"], r.get("train_s_std"), True)]
        cells += [_fmt(r.get("select_tokens"), None, True)] if tokens else []
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def attach_comparisons(agg: pd.DataFrame, comps) -> pd.DataFrame:
    """Wide columns ``<metric>:ci_low`` ..., ``<metric>:vs_<baseline>[:ci_low|:ci_high|:p|:p_adj|:mark]``."""
    agg = agg.copy()
    index = {(m, str(b)): i for i, (m, b) in enumerate(zip(agg["method"], agg["budget"]))}
    cols: dict[str, dict[int, Any]] = {}
    for c in comps:
        i = index.get((c.row, "" if c.budget is None else str(c.budget)))
        if i is None:
            continue
        d = c.diff
        if c.baseline == "self":
            vals = {f"{c.metric}:ci_low": d.ci_low, f"{c.metric}:ci_high": d.ci_high}
        else:
            k = f"{c.metric}:vs_{c.baseline}"
            vals = {k: d.estimate, f"{k}:ci_low": d.ci_low, f"{k}:ci_high": d.ci_high, f"{k}:p": d.p_value,
                    f"{k}:p_adj": c.p_adjusted, f"{k}:mark": c.mark}
        for k, v in vals.items():
            cols.setdefault(k, {})[i] = v
    for k, v in cols.items():
        agg[k] = pd.Series(v, dtype=object if k.endswith(":mark") else float)
    return agg


def build_leaderboard(results_dir: Path, board_dir: Path, board: str, protocol) -> dict[str, Any]:
    """Regenerate the board's tables; files are rewritten only when their content changes."""
    from .compare import compare_board, read_item_scores
    from .judge_bias import bias_csv, board_judge_bias
    from .report_html import render_leaderboard_html

    df, stale, records = records_frame(results_dir, board, protocol.hash)
    comps, floors = [], {}
    if df.empty:
        agg = pd.DataFrame(columns=["method", "family", "budget", "seeds", "select_s", "train_s"])
    else:
        agg = aggregate(df)
        metrics = [m for m in headline_columns(list(agg.columns), protocol) if m in agg]
        scores, direction = read_item_scores(records, primary_metric_columns(list(df.columns)))
        comps, floors = compare_board(scores, direction, metrics)
        agg = attach_comparisons(agg, comps)
    agg = overlap_column(agg, board_dir)  # contamination.json (selbench contamination): per-method overlap column
    bias = board_judge_bias(records)
    md = render_markdown(board, protocol, agg, len(df), stale, floors, bias)
    md += f"\n{overlap_legend(board_dir)}\n" if OVERLAP_COLUMN in agg else ""
    csv = agg.round(6).to_csv(index=False, float_format="%.6g")
    long = pd.DataFrame([c.as_dict() for c in comps]).round(6).to_csv(index=False, float_format="%.6g") \
        if comps else ""
    page, figures = render_leaderboard_html(board, protocol, agg, records, floors, md, bias=bias)
    outputs = [("LEADERBOARD.md", md), ("leaderboard.csv", csv)] + ([("comparisons.csv", long)] if long else []) \
        + ([("judge_bias.csv", bias_csv(bias))] if bias else []) + [("leaderboard.html", page)]
    changed = [name for name, text in outputs if write_if_changed(board_dir / name, text)]
    return {"rows": len(agg), "records": len(df), "stale": len(stale), "changed": changed, "table": agg,
            "comparisons": comps, "noise_floor": {m: f.as_dict() for m, f in floors.items()},
            "judge_bias": [b.as_dict() for b in bias],
            "figures": figures, "html": board_dir / "leaderboard.html"}
