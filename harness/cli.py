"""``selbench``: methods | check | run | refresh | leaderboard | score-judgments | contamination."""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path
from typing import List, Optional

import typer
from rich.console import Console
from rich.table import Table

from . import registry
from .errors import JudgeUnavailable
from .paths import Workspace
from .protocol import ProtocolError

app = typer.Typer(add_completion=False, no_args_is_help=True,
                  help="Benchmark instruction-data selection methods under identical conditions.")
console = Console()

RootOpt = typer.Option(None, "--root", help="Project root holding leaderboards/ and results/ (default: nearest).")
PluginOpt = typer.Option(None, "--plugin", help="Python file registering extra methods (repeatable).")


# Third-party messages that say nothing to a selbench user (the harness sets these options on purpose).
UNINFORMATIVE = ("Overwriting default num_fewshot", "Custom kwargs can be passed", "--metadata=",
                 "max_seq_lengths", "Generating train split")


class _DropUninformative(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not any(s in record.getMessage() for s in UNINFORMATIVE)


def _setup(verbose: bool) -> None:
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    for noisy in ("httpx", "httpx2", "urllib3", "datasets", "lm_eval", "filelock", "fsspec"):  # httpx2: openai
        logging.getLogger(noisy).setLevel(logging.WARNING)
    if not verbose:
        for handler in logging.getLogger().handlers:
            handler.addFilter(_DropUninformative())
        import datasets

        datasets.disable_progress_bars()  # "Generating train split" for every local file read


def print_leaderboard(board: str, out: dict, ws: Workspace, protocol) -> None:
    """The board in the terminal: headline metrics with their intervals and marks, the noise floor, the files."""
    from .leaderboard import headline_columns, verdict_lines

    t = out["table"]
    if t.empty:
        return
    metrics = [m for m in headline_columns(list(t.columns), protocol) if f"{m}:ci_low" in t][:4]
    short = [m.split("/", 1)[-1] for m in metrics]  # the evaluator is in the title; keep the columns narrow
    table = Table("method", "budget", "seeds", *short,
                  title=f"{board}: {', '.join(sorted({m.split('/')[0] for m in metrics}))} (95% intervals; Δr vs random)")
    for _, r in t.iterrows():
        cells = []
        for m in metrics:
            v, lo, hi = r.get(m), r.get(f"{m}:ci_low"), r.get(f"{m}:ci_high")
            cell = "–" if v != v or v is None else f"{v:.3f} [{lo:.3f}, {hi:.3f}]"
            d, dlo, dhi = (r.get(f"{m}:vs_random{k}") for k in ("", ":ci_low", ":ci_high"))
            if d is not None and d == d and dlo == dlo:
                cell += f"\nΔr {d:+.3f} [{dlo:+.3f}, {dhi:+.3f}] {r.get(f'{m}:vs_random:mark') or ''}"
            cells.append(cell)
        table.add_row(str(r["method"]), str(r["budget"]), str(int(r["seeds"])), *cells)
    console.print(table)
    for m, f in out.get("noise_floor", {}).items():
        sd = f"seed SD {f['seed_sd']:.3g}" if f.get("seed_sd") is not None else "one seed"
        console.print(f"noise floor {m}: differences below {f['mdd']:.3g} are noise at this size "
                      f"({f['n_items']} items, {f['n_seeds']} seeds, {sd})")
    for line in verdict_lines(t, metrics):
        console.print(f"against random {line}", markup=False)
    board_dir = ws.board_dir(board)
    for name in ("LEADERBOARD.md", "leaderboard.html"):
        if (board_dir / name).is_file():
            console.print(f"{name}: {board_dir / name}")


ParamOpt = typer.Option(None, "--param", help="k=v parameter of an ad hoc --method row (repeatable; YAML values)")
LabelOpt = typer.Option(None, "--label", help="row name of an ad hoc --method row (default: the method's name)")


def ad_hoc_entry(board: str, method: str, params: list[str] | None, label: str | None, root: Path | None):
    """The row for ``--method``: the protocol's own when it lists that row and no --param/--label is given,
    otherwise an ad hoc row (the committed protocol stays untouched)."""
    import yaml

    from .protocol import MethodEntry, load_protocol

    parsed = {}
    for item in params or []:
        if "=" not in item:
            _fail(f"--param {item!r}: expected k=v")
        k, v = item.split("=", 1)
        parsed[k.strip()] = yaml.safe_load(v)
    rows = {m.row for m in load_protocol(Workspace.at(root).protocol_path(board)).methods}
    if method in rows and not parsed and not label:
        return None
    if label is None and method in rows:  # the protocol's row keeps its name; this variant gets its own
        label = f"{method}[{','.join(f'{k}={v}' for k, v in sorted(parsed.items()))}]"
    return MethodEntry(name=method, params=parsed, label=label)


SkipPreflightOpt = typer.Option(False, "--skip-preflight", help="start without checking the board first (experts)")


def _preflight_or_exit(root: Path | None, board: str, plugins, ad_hoc=()) -> None:
    from .preflight import format_report, preflight

    rep = preflight(Workspace.at(root), board, tuple(map(str, plugins or [])), tuple(ad_hoc))
    if not rep.ok:
        console.print(format_report(rep), markup=False, highlight=False, soft_wrap=True)
        console.print("[red]preflight failed:[/] nothing was run (fix the problems above, or --skip-preflight)")
        raise typer.Exit(2)


def _fail(msg: str) -> None:
    console.print(f"[red]error:[/] {msg}")
    raise typer.Exit(2)


@app.command("methods")
def list_methods(plugin: Optional[List[Path]] = PluginOpt):
    """List registered selection methods with their survey category and citation."""
    try:
        specs = registry.load_all(plugin or [])
    except registry.RegistryError as e:
        _fail(str(e))
    table = Table("name", "category", "description", "citation", show_lines=False)
    for name in sorted(specs):
        s = specs[name]
        table.add_row(name, s.category, s.description, s.citation)
    console.print(table)


@app.command("check")
def check(board: str = typer.Option(..., "--board"), plugin: Optional[List[Path]] = PluginOpt,
          root: Optional[Path] = RootOpt,
          no_probe: bool = typer.Option(False, "--no-probe", help="don't send the judge endpoint a request")):
    """Preflight a board without running it: protocol, pool, methods' parameters, evaluators' data files, models,
    judge endpoint and key, wandb credentials, free disk. Exits 1 listing every problem."""
    from .preflight import format_report, preflight

    _setup(False)
    rep = preflight(Workspace.at(root), board, tuple(map(str, plugin or [])), check_endpoint=not no_probe)
    console.print(format_report(rep), markup=False, highlight=False, soft_wrap=True)
    if not rep.ok:
        raise typer.Exit(1)


@app.command("plan")
def plan_cmd(board: str = typer.Option(..., "--board"), root: Optional[Path] = RootOpt,
             pool_size: Optional[int] = typer.Option(None, help="trainable pool size, when the pool is not here"),
             example_tokens: Optional[float] = typer.Option(None, help="mean tokens per example, likewise"),
             train_tps: float = typer.Option(3000.0, help="full fine-tuning tokens/s per GPU"),
             lora_train_tps: float = typer.Option(5000.0, help="LoRA fine-tuning tokens/s per GPU"),
             generate_tps: float = typer.Option(2000.0, help="generated tokens/s per GPU (vLLM, batched)"),
             judge_usd_in: float = typer.Option(30.0, help="judge $ per million input tokens"),
             judge_usd_out: float = typer.Option(60.0, help="judge $ per million output tokens")):
    """Estimate a refresh before running it: cells, tokens to train, generate and judge, GPU-hours, judge cost."""
    from .plan import Throughputs, format_plan, measured_remaining, plan_board

    try:
        p = plan_board(Workspace.at(root), board, Throughputs(train_tps, lora_train_tps, generate_tps, judge_usd_in,
                                                               judge_usd_out), pool_size, example_tokens)
    except (ProtocolError, ValueError, FileNotFoundError) as e:
        _fail(str(e))
    console.print(format_plan(p), markup=False, highlight=False, soft_wrap=True)
    try:  # where a resumed refresh stands: committed records are its resume points
        from .pipeline import Board

        b = Board(Workspace.at(root), board)
        todo, base = b.pending()
    except (ProtocolError, ValueError, FileNotFoundError, OSError):
        return
    console.print(f"  records   {p.cells - len(todo)} of {p.cells} cells current, base model "
                  f"{'current' if base else 'to run'}; a refresh runs {len(todo)} cell(s)"
                  f"{'' if base else ' and the base model'}", markup=False, highlight=False, soft_wrap=True)
    pending = set(todo)
    done = [(c.row, c.budget, json.loads(b.cell_path(c).read_text()).get("timings") or {})
            for c in b.cells() if c not in pending]
    if line := measured_remaining(done, [(c.row, c.budget) for c in todo]):
        console.print(f"  measured  {line}", markup=False, highlight=False, soft_wrap=True)


@app.command()
def run(board: str = typer.Option(..., "--board"), method: str = typer.Option(..., "--method"),
        budget: Optional[str] = typer.Option(None, "--budget", help="count or fraction; default: every budget"),
        seed: Optional[int] = typer.Option(None, "--seed", help="default: every seed of the protocol"),
        force: bool = typer.Option(False, "--force"), plugin: Optional[List[Path]] = PluginOpt,
        param: Optional[List[str]] = ParamOpt, label: Optional[str] = LabelOpt,
        root: Optional[Path] = RootOpt, skip_preflight: bool = SkipPreflightOpt,
        verbose: bool = typer.Option(False, "-v")):
    """Run one row's cells (every budget and seed unless given) and update the leaderboard. A method the protocol
    does not list (e.g. from --plugin), or one given --param, runs as an ad hoc row without editing the protocol."""
    from .pipeline import Board

    _setup(verbose)
    try:
        registry.load_all([str(p) for p in plugin or []])
        entry = ad_hoc_entry(board, method, param, label, root)
        if not skip_preflight:
            _preflight_or_exit(root, board, plugin, (entry,) if entry else ())
        b = Board(Workspace.at(root), board, tuple(map(str, plugin or [])), ad_hoc=(entry,) if entry else ())
        cells = b.cells([entry.row if entry else method])
        if budget is not None:
            want = b.protocol.resolve_budget(float(budget) if "." in budget else int(budget), b.pool.n_trainable)
            cells = [c for c in cells if c.budget == want]
        if seed is not None:
            cells = [c for c in cells if c.seed == seed]
        if not cells:
            _fail(f"no cell of board {board!r} matches method={method} budget={budget} seed={seed}")
        try:
            for cell in cells:
                status, _ = b.run_cell(cell, force)
                console.print(f"{cell}: {status}")
        finally:
            b.close()
        b.leaderboard()
    except (ProtocolError, registry.RegistryError, ValueError, FileNotFoundError, JudgeUnavailable) as e:
        _fail(str(e))


@app.command()
def refresh(board: str = typer.Option(..., "--board"),
            methods: Optional[List[str]] = typer.Option(None, "--methods", help="rows to run (repeatable)"),
            method: Optional[str] = typer.Option(None, "--method", help="add an ad hoc row (with --param/--label)"),
            param: Optional[List[str]] = ParamOpt, label: Optional[str] = LabelOpt,
            force: bool = typer.Option(False, "--force", help="recompute cells even if their record is current"),
            plugin: Optional[List[Path]] = PluginOpt, root: Optional[Path] = RootOpt,
            skip_preflight: bool = SkipPreflightOpt,
            executor: str = typer.Option("local", "--executor", help="local | ray: each cell a Ray task"),
            address: Optional[str] = typer.Option(None, "--address", help="Ray cluster address (default: start "
                                                                          "a local one)"),
            task_cpus: float = typer.Option(1.0, "--task-cpus", help="CPUs per Ray task"),
            task_gpus: float = typer.Option(0.0, "--task-gpus", help="GPUs per Ray task"),
            verbose: bool = typer.Option(False, "-v")):
    """Run the board's whole matrix (skipping cells whose result is current) and regenerate the leaderboard."""
    from .pipeline import refresh as do_refresh

    _setup(verbose)
    rows = [m for item in (methods or []) for m in item.split(",") if m]
    try:
        entry = None
        if method:
            registry.load_all([str(p) for p in plugin or []])
            entry = ad_hoc_entry(board, method, param, label, root)
        if not skip_preflight:
            _preflight_or_exit(root, board, plugin, (entry,) if entry else ())
        s = do_refresh(Workspace.at(root), board, rows or None, force, [str(p) for p in plugin or []],
                       ad_hoc=(entry,) if entry else (), executor=executor, address=address,
                       task_resources={"num_cpus": task_cpus, **({"num_gpus": task_gpus} if task_gpus else {})})
    except (ProtocolError, registry.RegistryError, ValueError, FileNotFoundError) as e:
        _fail(str(e))
    console.print(f"{board}: {len(s.done)} cells computed, {len(s.skipped)} up to date, {len(s.failed)} failed; "
                  f"leaderboard {'updated' if s.leaderboard['changed'] else 'unchanged'} "
                  f"({s.leaderboard['rows']} rows)")
    for cell, err in s.failed.items():
        console.print(f"[red]failed[/] {cell}: {err}")
    if s.stopped:
        console.print(f"[red]{s.stopped}[/]")
    from .protocol import load_protocol

    ws = Workspace.at(root)
    print_leaderboard(board, s.leaderboard, ws, load_protocol(ws.protocol_path(board)))
    if s.failed:
        raise typer.Exit(1)


@app.command()
def leaderboard(board: str = typer.Option(..., "--board"), root: Optional[Path] = RootOpt):
    """Regenerate LEADERBOARD.md and leaderboard.csv from results/ alone."""
    from .leaderboard import build_leaderboard
    from .protocol import load_protocol

    ws = Workspace.at(root)
    try:
        protocol = load_protocol(ws.protocol_path(board))
        out = build_leaderboard(ws.results, ws.board_dir(board), board, protocol)
    except (ProtocolError, ValueError) as e:
        _fail(str(e))
    console.print(f"{board}: {out['rows']} rows from {out['records']} records"
                  + (f", {out['stale']} stale records left out" if out["stale"] else "")
                  + (f"; wrote {', '.join(out['changed'])}" if out["changed"] else "; unchanged"))
    print_leaderboard(board, out, ws, protocol)


@app.command("score-judgments")
def score_judgments_cmd(files: List[Path] = typer.Argument(..., help="judgment files (one format)"),
                        fmt: str = typer.Option("auto", "--format",
                                                help="auto | cherry | vicuna | fastchat_single | fastchat_pair | "
                                                     "alpaca_eval")):
    """Scores from recorded judgments (a paper's released reviews, alpaca_eval annotations): no judge is asked."""
    import json

    from .replay import score_judgments

    try:
        out = score_judgments(files, fmt)
    except (ValueError, FileNotFoundError, KeyError) as e:
        _fail(f"{type(e).__name__}: {e}")
    print(json.dumps(out, indent=2, sort_keys=True))


@app.command("contamination")
def contamination_cmd(board: str = typer.Option(..., "--board"), root: Optional[Path] = RootOpt,
                      threshold: float = typer.Option(0.9, help="MiniLM cosine at or above which two texts are "
                                                                 "near duplicates"),
                      full_sets: bool = typer.Option(False, "--full-sets",
                                                     help="check every item of each evaluation set, not only the "
                                                          "items the protocol's limits select")):
    """Overlap of the pool and each selection with the board's evaluation sets (13-gram and MiniLM near
    duplicates); writes contamination.json next to LEADERBOARD.md."""
    from .contamination import board_report, format_report

    ws = Workspace.at(root)
    try:
        report, path = board_report(ws, board, threshold=threshold, full_sets=full_sets)
    except (ProtocolError, ValueError, FileNotFoundError) as e:
        _fail(str(e))
    print(format_report(report))
    console.print(f"wrote {path}")


def main() -> None:  # pragma: no cover
    sys.exit(app())
