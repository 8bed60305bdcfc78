"""``selbench``: methods | run | refresh | leaderboard."""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import List, Optional

import typer
from rich.console import Console
from rich.table import Table

from . import registry
from .paths import Workspace
from .protocol import ProtocolError

app = typer.Typer(add_completion=False, no_args_is_help=True,
                  help="Benchmark instruction-data selection methods under identical conditions.")
console = Console()

RootOpt = typer.Option(None, "--root", help="Project root holding leaderboards/ and results/ (default: nearest).")
PluginOpt = typer.Option(None, "--plugin", help="Python file registering extra methods (repeatable).")


def _setup(verbose: bool) -> None:
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    for noisy in ("httpx", "urllib3", "datasets", "lm_eval", "filelock", "fsspec"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


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


@app.command()
def run(board: str = typer.Option(..., "--board"), method: str = typer.Option(..., "--method"),
        budget: Optional[str] = typer.Option(None, "--budget", help="count or fraction; default: every budget"),
        seed: Optional[int] = typer.Option(None, "--seed", help="default: every seed of the protocol"),
        force: bool = typer.Option(False, "--force"), plugin: Optional[List[Path]] = PluginOpt,
        root: Optional[Path] = RootOpt, verbose: bool = typer.Option(False, "-v")):
    """Run one cell (method x budget x seed) of a board and update its leaderboard."""
    from .pipeline import Board

    _setup(verbose)
    try:
        b = Board(Workspace.at(root), board, tuple(map(str, plugin or [])))
        cells = b.cells([method])
        if budget is not None:
            want = b.protocol.resolve_budget(float(budget) if "." in budget else int(budget), len(b.pool))
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
    except (ProtocolError, registry.RegistryError, ValueError, FileNotFoundError) as e:
        _fail(str(e))


@app.command()
def refresh(board: str = typer.Option(..., "--board"),
            methods: Optional[List[str]] = typer.Option(None, "--methods", help="rows to run (repeatable)"),
            force: bool = typer.Option(False, "--force", help="recompute cells even if their record is current"),
            plugin: Optional[List[Path]] = PluginOpt, root: Optional[Path] = RootOpt,
            verbose: bool = typer.Option(False, "-v")):
    """Run the board's whole matrix (skipping cells whose result is current) and regenerate the leaderboard."""
    from .pipeline import refresh as do_refresh

    _setup(verbose)
    rows = [m for item in (methods or []) for m in item.split(",") if m]
    try:
        s = do_refresh(Workspace.at(root), board, rows or None, force, [str(p) for p in plugin or []])
    except (ProtocolError, registry.RegistryError, ValueError, FileNotFoundError) as e:
        _fail(str(e))
    console.print(f"{board}: {len(s.done)} cells computed, {len(s.skipped)} up to date, {len(s.failed)} failed; "
                  f"leaderboard {'updated' if s.leaderboard['changed'] else 'unchanged'} "
                  f"({s.leaderboard['rows']} rows)")
    for cell, err in s.failed.items():
        console.print(f"[red]failed[/] {cell}: {err}")
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


def main() -> None:  # pragma: no cover
    sys.exit(app())
