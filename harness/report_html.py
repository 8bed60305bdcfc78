"""``leaderboard.html``: the board's tables and figures on one self-contained page.

Built by :func:`selbench.leaderboard.build_leaderboard` from the same table, paired comparisons and noise floor as
``LEADERBOARD.md`` (so from ``results/`` alone), with plotly:

- per headline metric, the metric against the budget for each method, with 95% intervals (a band for ``random``,
  the row to beat; error bars for the others; ``full`` and the base model as horizontal references);
- a methods x metrics heatmap of the paired difference to ``random`` with its ▲/▼ marks, coloured so that blue is
  better than random for every metric (lower-is-better metrics such as ``nll`` are sign-flipped for the colour);
- cost against gain: selection + training seconds, and evaluation judge tokens where any were spent, against the
  difference to random on the first headline metric that has comparisons;
- the judge-bias diagnostics of the judged metrics (:mod:`selbench.judge_bias`): length correlation, share of
  first-shown wins and flip rate, each with its 95% interval;
- the noise-floor sentences and the table, rendered from ``LEADERBOARD.md`` itself.

plotly.js is embedded once, inline, so the page works with no network. The output is deterministic (fixed div ids,
no timestamps, stable ordering), so regenerating an unchanged board rewrites no file.
"""

from __future__ import annotations

import html
import math
import re
from pathlib import Path
from typing import Any

import pandas as pd
import plotly.graph_objects as go
import plotly.io as pio
from markdown_it import MarkdownIt
from plotly.colors import qualitative
from plotly.subplots import make_subplots

from .leaderboard import headline_columns, selection_judge_tokens
from .record import BASE_ROW

PLOT_CONFIG = {"displaylogo": False, "responsive": True}
TEMPLATE = "plotly_white"
PALETTE = qualitative.Plotly + qualitative.D3 + qualitative.Dark24
REFERENCE_COLOURS = {"random": "#222222", "full": "#777777", BASE_ROW: "#aaaaaa"}
HEATMAP_CLIP = 3.0  # colour saturates at 3 noise floors

CSS = """
html { overflow-y: scroll; }
body { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; margin: 0; color: #222; background: #fafafa; }
main { max-width: 1500px; margin: 0 auto; padding: 1.5rem 2rem 4rem; }
h1 { margin-top: 0; } h2 { margin-top: 2.5rem; border-bottom: 1px solid #ddd; padding-bottom: .3rem; }
p.caption { color: #555; max-width: 70rem; }
code { background: #eee; padding: 0 .25rem; border-radius: 3px; }
.grid { display: grid; grid-template-columns: repeat(auto-fill, minmax(640px, 1fr)); gap: 1rem; }
.figure { min-width: 0; background: white; border: 1px solid #e3e3e3; border-radius: 4px; padding: .25rem; }
.table-wrap { overflow-x: auto; }
table { border-collapse: collapse; font-size: .85rem; background: white; }
th, td { border: 1px solid #ddd; padding: .3rem .5rem; vertical-align: top; white-space: nowrap; }
th { background: #f0f0f0; position: sticky; top: 0; }
tr:nth-child(even) td { background: #fbfbfb; }
.up { color: #1a7f37; font-weight: bold; } .down { color: #c62828; font-weight: bold; }
"""


# -- data -------------------------------------------------------------------------------------------------------

def _num(x: Any) -> bool:
    return x is not None and not (isinstance(x, float) and math.isnan(x))


def _slug(s: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", s.lower()).strip("-")


def metric_directions(records: list[tuple[Path, dict[str, Any]]]) -> dict[str, bool]:
    """``higher_is_better`` per metric, as the records state it (``bench_avg``: higher)."""
    out = {"bench_avg": True}
    for _, rec in records:
        for name, m in (rec.get("metrics") or {}).items():
            out[name] = m.get("higher_is_better", True)
    return out


def judge_tokens(records: list[tuple[Path, dict[str, Any]]]) -> dict[tuple[str, Any], float]:
    """Mean over seeds of the judge tokens (prompt + completion, all judged evaluators) per (row, budget), those of
    answers served from the judgment cache included (``cached_*`` counts)."""
    per_row: dict[tuple[str, Any], list[int]] = {}
    for _, rec in records:
        tokens = sum(int(v) for ev in (rec.get("evaluation") or {}).values()
                     for k, v in ((ev or {}).get("counts") or {}).items()
                     if k.endswith(("prompt_tokens", "completion_tokens")))
        sel = selection_judge_tokens(rec)  # a judged method's rating of the pool
        tokens += 0 if math.isnan(sel) else int(sel)
        budget = "" if rec.get("budget") is None else rec["budget"]
        per_row.setdefault((rec["method"]["row"], budget), []).append(tokens)
    return {k: sum(v) / len(v) for k, v in per_row.items()}


def method_colours(methods: list[str]) -> dict[str, str]:
    others = sorted(m for m in set(methods) if m not in REFERENCE_COLOURS)
    return {**REFERENCE_COLOURS, **{m: PALETTE[i % len(PALETTE)] for i, m in enumerate(others)}}


def _label(metric: str, higher: bool) -> str:
    return metric.replace("_local/", "/") + ("" if higher else " (lower is better)")


# -- figures ----------------------------------------------------------------------------------------------------

def budget_figure(agg: pd.DataFrame, metric: str, higher: bool, colours: dict[str, str]) -> go.Figure | None:
    """The metric against the budget per method, with 95% intervals."""
    has_ci = f"{metric}:ci_low" in agg
    trained = agg[(agg["budget"] != "") & ~agg["method"].isin(["full", BASE_ROW]) & agg[metric].notna()]
    if trained.empty:
        return None
    budgets = sorted({int(b) for b in trained["budget"]})
    log_x = len(budgets) > 1 and budgets[0] > 0 and budgets[-1] / budgets[0] >= 4
    methods = sorted(set(trained["method"]), key=lambda m: (m != "random", m))
    fig = go.Figure()
    for k, method in enumerate(methods):
        rows = trained[trained["method"] == method].assign(b=lambda d: d["budget"].astype(int)).sort_values("b")
        y = rows[metric].astype(float)
        no_ci = pd.Series(math.nan, index=rows.index)
        lo = rows[f"{metric}:ci_low"].astype(float) if has_ci else no_ci
        hi = rows[f"{metric}:ci_high"].astype(float) if has_ci else no_ci
        ci = [f"[{a:.3f}, {b:.3f}]" if _num(a) and _num(b) else "" for a, b in zip(lo, hi)]
        hover = (f"<b>{method}</b><br>budget %{{customdata[0]}}<br>{metric} %{{y:.4f}} %{{customdata[1]}}"
                 "<br>seeds %{customdata[2]}<extra></extra>")
        custom = list(zip(rows["b"], ci, rows["seeds"].astype(int)))
        if method == "random":
            if lo.notna().all() and hi.notna().all():
                fig.add_trace(go.Scatter(x=list(rows["b"]) + list(rows["b"])[::-1], y=list(hi) + list(lo)[::-1],
                                         mode="lines", fill="toself", fillcolor="rgba(34,34,34,0.12)", line={"width": 0},
                                         hoverinfo="skip", name="random 95% CI", legendgroup="random"))
            fig.add_trace(go.Scatter(x=rows["b"], y=y, mode="lines+markers", name="random", legendgroup="random",
                                     line={"color": colours["random"], "width": 3}, customdata=custom,
                                     hovertemplate=hover))
            continue
        # Dodge the methods sideways a little so their error bars do not hide each other (hover: true budget).
        shift = (k - (len(methods) - 1) / 2) * (0.012 if log_x else 0.006)
        x = [b * math.exp(shift) if log_x else b + shift * (budgets[-1] - budgets[0] or b) for b in rows["b"]]
        error = None
        if lo.notna().any():
            error = {"type": "data", "symmetric": False, "array": list(hi - y), "arrayminus": list(y - lo),
                     "thickness": 1.2, "width": 3}
        fig.add_trace(go.Scatter(x=x, y=y, mode="lines+markers", name=method, error_y=error,
                                 line={"color": colours[method], "width": 1.5}, marker={"size": 7},
                                 customdata=custom, hovertemplate=hover))
    span = [budgets[0], budgets[-1]] if len(budgets) > 1 else [budgets[0] * 0.8, budgets[0] * 1.25]
    for ref, dash in (("full", "dash"), (BASE_ROW, "dot")):
        row = agg[(agg["method"] == ref) & agg[metric].notna()]
        if row.empty:
            continue
        r = row.iloc[0]
        name = f"full (pool, {r['budget']} examples)" if ref == "full" else "base model (not fine-tuned)"
        fig.add_trace(go.Scatter(x=span, y=[r[metric]] * 2, mode="lines", name=name,
                                 line={"color": colours[ref], "dash": dash, "width": 2},
                                 hovertemplate=f"{name}<br>{metric} %{{y:.4f}}<extra></extra>"))
    fig.update_layout(template=TEMPLATE, title=_label(metric, higher), height=440,
                      margin={"l": 60, "r": 20, "t": 50, "b": 50}, legend={"font": {"size": 11}},
                      xaxis_title="budget (examples selected)", yaxis_title=metric.split("/")[-1])
    fig.update_xaxes(type="log" if log_x else "linear", tickvals=budgets, ticktext=[str(b) for b in budgets])
    return fig


def heatmap_figure(agg: pd.DataFrame, metrics: list[str], direction: dict[str, bool],
                   floors: dict[str, Any]) -> go.Figure | None:
    """Paired difference to random per row x metric; colour = the difference in the better direction, in units of
    the metric's noise floor (its minimum detectable difference), so that blue means better for every metric."""
    cols = [m for m in metrics if f"{m}:vs_random" in agg and agg[f"{m}:vs_random"].notna().any()]
    if not cols:
        return None
    rows = agg[agg[[f"{m}:vs_random" for m in cols]].notna().any(axis=1)]
    scale = {}
    for m in cols:
        mdd = getattr(floors.get(m), "mdd", None)
        biggest = float(agg[f"{m}:vs_random"].abs().max())
        scale[m] = mdd if mdd else (biggest or 1.0)
    z, text, hover = [], [], []
    for _, r in rows.iterrows():
        zr, tr, hr = [], [], []
        for m in cols:
            d = r.get(f"{m}:vs_random")
            if not _num(d):
                zr.append(None)
                tr.append("")
                hr.append("no comparison")
                continue
            sign = 1 if direction.get(m, True) else -1
            zr.append(max(-HEATMAP_CLIP, min(HEATMAP_CLIP, sign * d / scale[m])))
            mark = r.get(f"{m}:vs_random:mark") if isinstance(r.get(f"{m}:vs_random:mark"), str) else ""
            tr.append(f"{d:+.3g} {mark}".strip())
            lo, hi, p = (r.get(f"{m}:vs_random:{k}") for k in ("ci_low", "ci_high", "p_adj"))
            hr.append(f"Δ {d:+.4f} [{lo:.4f}, {hi:.4f}]<br>BH-adjusted p {p:.3g} {mark}"
                      if _num(lo) and _num(hi) and _num(p) else f"Δ {d:+.4f}")
        z.append(zr)
        text.append(tr)
        hover.append(hr)
    ylabels = [f"{r['method']} @ {r['budget']}" for _, r in rows.iterrows()]
    xlabels = [_label(m, direction.get(m, True)) for m in cols]
    fig = go.Figure(go.Heatmap(
        z=z, x=xlabels, y=ylabels, text=text, texttemplate="%{text}", customdata=hover, colorscale="RdBu",
        zmid=0, zmin=-HEATMAP_CLIP, zmax=HEATMAP_CLIP, xgap=2, ygap=2,
        hovertemplate="<b>%{y}</b> · %{x}<br>%{customdata}<extra></extra>",
        colorbar={"title": {"text": "better than random →<br>(Δ in noise floors)"}}))
    fig.update_layout(template=TEMPLATE, title="Paired difference to random (▲/▼: significant after BH)",
                      height=max(300, 140 + 30 * len(ylabels)), margin={"l": 160, "r": 20, "t": 60, "b": 40})
    fig.update_yaxes(autorange="reversed")
    return fig


def cost_figure(agg: pd.DataFrame, metric: str, higher: bool, tokens: dict[tuple[str, Any], float],
                colours: dict[str, str]) -> go.Figure | None:
    """Selection + training seconds (and judge tokens, where spent) against the gain over random on ``metric``."""
    d = agg[agg[f"{metric}:vs_random"].notna() | (agg["method"] == "random")].copy()
    if d.empty:
        return None
    sign = 1 if higher else -1
    d["gain"] = [0.0 if m == "random" else sign * v for m, v in zip(d["method"], d[f"{metric}:vs_random"])]
    d["seconds"] = d["select_s"].fillna(0) + d["train_s"].fillna(0)
    d["tokens"] = [tokens.get((m, b), 0.0) for m, b in zip(d["method"], d["budget"])]
    panels = [("seconds", "selection + training seconds as run (mean over seeds)")]
    if (d["tokens"] > 0).any():
        panels.append(("tokens", "judge tokens in evaluation (mean over seeds)"))
    fig = make_subplots(rows=1, cols=len(panels), shared_yaxes=True, horizontal_spacing=0.06)
    for col, (x, title) in enumerate(panels, start=1):
        for _, r in d.iterrows():
            lo, hi = r.get(f"{metric}:vs_random:ci_low"), r.get(f"{metric}:vs_random:ci_high")
            error = None
            if r["method"] != "random" and _num(lo) and _num(hi):
                up, down = (hi - r[f"{metric}:vs_random"], r[f"{metric}:vs_random"] - lo)
                error = {"type": "data", "symmetric": False, "array": [up if higher else down],
                         "arrayminus": [down if higher else up], "thickness": 1.2}
            mark = r.get(f"{metric}:vs_random:mark")
            significant = isinstance(mark, str) and mark != ""
            name = f"{r['method']} @ {r['budget']}"
            fig.add_trace(go.Scatter(
                x=[r[x]], y=[r["gain"]], mode="markers+text", text=[name], textposition="top center",
                textfont={"size": 10}, error_y=error, name=r["method"], legendgroup=r["method"],
                showlegend=False, marker={"size": 11, "color": colours.get(r["method"], "#444"),
                                          "symbol": "circle" if significant or r["method"] == "random"
                                          else "circle-open", "line": {"width": 2}},
                hovertemplate=f"<b>{name}</b><br>{x} %{{x:,.0f}}<br>gain %{{y:+.4f}} "
                              f"{mark if significant else ''}<extra></extra>"), row=1, col=col)
        positive = (d[x] > 0).all() and d[x].max() / d[x].min() >= 20
        fig.update_xaxes(title_text=title, type="log" if positive else "linear", row=1, col=col)
    fig.add_hline(y=0, line={"color": "#222", "dash": "dot", "width": 1})
    fig.update_yaxes(title_text=f"gain over random on {metric.replace('_local/', '/')}"
                                + ("" if higher else " (sign flipped: up is better)"), row=1, col=1)
    fig.update_layout(template=TEMPLATE, height=480, margin={"l": 70, "r": 20, "t": 50, "b": 60},
                      title="Cost against gain (filled: significant difference to random)")
    return fig


def _estimate_trace(fig: go.Figure, rows: list[tuple[str, Any]], name: str, symbol: str, col: int) -> None:
    """One marker per (metric, Estimate) with its 95% interval as a horizontal error bar."""
    rows = [(m, e) for m, e in rows if e is not None]
    if not rows:
        return
    lo = [e.value - e.ci_low if e.ci_low is not None else 0 for _, e in rows]
    hi = [e.ci_high - e.value if e.ci_high is not None else 0 for _, e in rows]
    fig.add_trace(go.Scatter(
        x=[e.value for _, e in rows], y=[m for m, _ in rows], mode="markers", name=name,
        marker={"symbol": symbol, "size": 10}, customdata=[[e.ci_low, e.ci_high, e.n] for _, e in rows],
        error_x={"type": "data", "symmetric": False, "array": hi, "arrayminus": lo, "thickness": 1.2},
        hovertemplate=f"<b>%{{y}}</b><br>{name} %{{x:.3f}} [%{{customdata[0]:.3f}}, %{{customdata[1]:.3f}}]"
                      "<br>n %{customdata[2]}<extra></extra>"), row=1, col=col)


def judge_bias_figure(bias: list) -> go.Figure | None:
    """Per judged metric: Spearman's rho of verdict and answer length and, with a second judge, the two judges'
    agreement (left), the share of first-shown wins and the flip rate (right), with 95% intervals."""
    if not bias or not any(b.length or b.first_wins or b.flips or b.agreement for b in bias):
        return None
    second = any(b.agreement for b in bias)
    fig = make_subplots(rows=1, cols=2, shared_yaxes=True, horizontal_spacing=0.04,
                        subplot_titles=("length: Spearman ρ of verdict and answer length" +
                                        ("; agreement with the second judge" if second else ""),
                                        "position: first-shown wins (0.5 = none), flip rate"))
    _estimate_trace(fig, [(b.metric, b.length) for b in bias], "length ρ", "circle", 1)
    if second:
        _estimate_trace(fig, [(b.metric, b.agreement) for b in bias], "second-judge agreement (κ or ρ)",
                        "triangle-up", 1)
    _estimate_trace(fig, [(b.metric, b.first_wins) for b in bias], "first-shown wins", "square", 2)
    _estimate_trace(fig, [(b.metric, b.flips) for b in bias], "flip rate", "diamond", 2)
    fig.add_vline(x=0, line={"color": "#222", "dash": "dot", "width": 1}, row=1, col=1)
    fig.add_vline(x=0.5, line={"color": "#222", "dash": "dot", "width": 1}, row=1, col=2)
    fig.update_xaxes(range=[-1.05, 1.05], row=1, col=1)
    fig.update_xaxes(range=[-0.03, 1.03], row=1, col=2)
    fig.update_yaxes(autorange="reversed", type="category", categoryorder="array",
                     categoryarray=[b.metric for b in bias])
    fig.update_layout(template=TEMPLATE, title="Judge bias (pooled over the board's cells)",
                      height=max(260, 150 + 45 * len(bias)), margin={"l": 170, "r": 20, "t": 80, "b": 40})
    return fig


def board_figures(agg: pd.DataFrame, protocol, records: list[tuple[Path, dict[str, Any]]],
                  floors: dict[str, Any], bias: list | None = None) -> dict[str, go.Figure]:
    """The page's figures by a stable id, in page order."""
    if agg.empty:
        return {}
    direction = metric_directions(records)
    metrics = [m for m in headline_columns(list(agg.columns), protocol) if m in agg and agg[m].notna().any()]
    colours = method_colours(list(agg["method"]))
    figs: dict[str, go.Figure] = {}
    for m in metrics:
        fig = budget_figure(agg, m, direction.get(m, True), colours)
        if fig is not None:
            figs[f"budget-{_slug(m)}"] = fig
    heat = heatmap_figure(agg, metrics, direction, floors)
    if heat is not None:
        figs["vs-random-heatmap"] = heat
    compared = [m for m in metrics if f"{m}:vs_random" in agg and agg[f"{m}:vs_random"].notna().any()]
    if compared:
        cost = cost_figure(agg, compared[0], direction.get(compared[0], True), judge_tokens(records), colours)
        if cost is not None:
            figs["cost-vs-gain"] = cost
    judge = judge_bias_figure(bias or [])
    if judge is not None:
        figs["judge-bias"] = judge
    return figs


# -- page -------------------------------------------------------------------------------------------------------

def _markdown_html(text: str) -> str:
    """LEADERBOARD.md's markdown as HTML (raw HTML in it is escaped; the cells' ``<br>`` is kept)."""
    out = MarkdownIt("commonmark", {"html": False}).enable("table").render(text)
    out = out.replace("&lt;br&gt;", "<br>")
    return out.replace("▲", '<span class="up">▲</span>').replace("▼", '<span class="down">▼</span>')


def _figure_div(fig_id: str, fig: go.Figure) -> str:
    return ('<div class="figure">' + pio.to_html(fig, full_html=False, include_plotlyjs=False,
                                                 div_id=f"fig-{fig_id}", config=PLOT_CONFIG) + "</div>")


def render_page(board: str, markdown: str, figs: dict[str, go.Figure]) -> str:
    from plotly.offline import get_plotlyjs

    lines = markdown.splitlines()
    start = next((i for i, line in enumerate(lines) if line.startswith("|")), len(lines))
    header, table = "\n".join(lines[:start]), "\n".join(lines[start:])
    budget = [_figure_div(k, f) for k, f in figs.items() if k.startswith("budget-")]
    sections = []
    if budget:
        sections.append("<h2>Metric against budget</h2><p class=\"caption\">Mean over seeds with 95% intervals "
                        "(grey band: <code>random</code>, the row to beat; dashed: <code>full</code>, the whole "
                        "pool; dotted: the base model). Methods are dodged sideways a little so their intervals "
                        "stay visible; hover for the exact budget.</p>"
                        f"<div class=\"grid\">{''.join(budget)}</div>")
    if "vs-random-heatmap" in figs:
        sections.append("<h2>Difference to random</h2><p class=\"caption\">Each cell: the paired difference to "
                        "<code>random</code> at the same budget and its mark (▲/▼ significantly better/worse after "
                        "Benjamini-Hochberg). Colour: the difference in the better direction (blue is better, also "
                        "for lower-is-better metrics), in units of the metric's noise floor, saturating at "
                        f"{HEATMAP_CLIP:g}.</p>" + _figure_div("vs-random-heatmap", figs["vs-random-heatmap"]))
    if "cost-vs-gain" in figs:
        sections.append("<h2>Cost against gain</h2><p class=\"caption\">What a method spent against what it "
                        "gained over <code>random</code> on the first headline metric with comparisons, with 95% "
                        "intervals; filled markers differ significantly from random. Seconds are as run: a "
                        "selection that reused cached signals, judge answers or selections (computed for another "
                        "budget or seed) counts only what it spent itself.</p>"
                        + _figure_div("cost-vs-gain", figs["cost-vs-gain"]))
    if "judge-bias" in figs:
        sections.append("<h2>Judge bias</h2><p class=\"caption\">Per judged metric, pooled over the board's "
                        "cells (the header above states each in words; <code>judge_bias.csv</code>). Left: "
                        "Spearman's correlation of the verdict with answer length (MT-Bench: the rating; "
                        "AlpacaEval and pairwise: the preference for the model against its length difference "
                        "to the other answer), a correlation, not a causal effect. Right: the share of decisive "
                        "verdicts won by the answer shown first (0.5 = no position bias) and the share of "
                        "verdicts that change when the two answers swap places. 95% intervals.</p>"
                        + _figure_div("judge-bias", figs["judge-bias"]))
    if not figs:
        sections.append("<p><em>No figures: the board has no current records with metrics yet.</em></p>")
    return "\n".join([
        "<!DOCTYPE html>", '<html lang="en">', "<head>", '<meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>Leaderboard: {html.escape(board)}</title>", f"<style>{CSS}</style>",
        "<script>window.PlotlyConfig = {MathJaxConfig: 'local'};</script>",
        f"<script>{get_plotlyjs()}</script>", "</head>", "<body><main>",
        _markdown_html(header), *sections,
        "<h2>Table</h2>", f'<div class="table-wrap">{_markdown_html(table)}</div>',
        # Figures drawn while the page was still loading may have sized themselves to a narrower or wider box.
        ("<script>window.addEventListener('load', () => document.querySelectorAll('.js-plotly-plot')"
         ".forEach(d => Plotly.Plots.resize(d)));</script>"),
        "</main></body>", "</html>", ""])


def render_leaderboard_html(board: str, protocol, agg: pd.DataFrame, records: list[tuple[Path, dict[str, Any]]],
                            floors: dict[str, Any], markdown: str, bias: list | None = None
                            ) -> tuple[str, dict[str, go.Figure]]:
    """The page's text and its figures (also logged to wandb by :func:`selbench.tracking.log_leaderboard`);
    ``bias``: :func:`selbench.judge_bias.board_judge_bias` of the same records."""
    figs = board_figures(agg, protocol, records, floors, bias)
    return render_page(board, markdown, figs), figs
