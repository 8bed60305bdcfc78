"""Executors: who runs a refresh's cells. ``local`` (the default) runs them one after another in this process;
``ray`` runs each cell as a Ray task on a cluster (``--executor ray [--address ...]``).

A cell is a self-contained task: its stages (select, train, evaluate, record) read and write content-addressed
artifacts in the shared cache, each written atomically, so a task retried after its worker died recomputes only what
that worker had not finished, and two tasks computing the same artifact produce one. The only cross-cell dependency
is the pairwise evaluator's baselines (the ``full`` and ``random`` models of the same budget and seed): those rows
run in a first wave, the others in a second. Workers need the repository and the cache directory at the same paths
(a shared filesystem), like every node of a cluster running one board.
"""

from __future__ import annotations

import os
from typing import Any, Callable, Iterable

from .paths import CACHE_DIR_ENV, DATA_DIR_ENV

EXECUTORS = ("local", "ray")
BASELINE_ROWS = ("full", "random")


def run_local(jobs: list[tuple[str, Callable[[], tuple[str, Any]]]], on_result: Callable[[str, Any], bool]) -> None:
    """Run the jobs in order; ``on_result(name, status-or-exception)`` returns False to stop."""
    for name, run in jobs:
        try:
            result = run()[0]
        except KeyboardInterrupt:
            raise
        except Exception as e:  # one broken method must not stop the others (on_result decides)
            result = e
        if not on_result(name, result):
            return


def _cell_task(root: str, board: str, cell: tuple[str, int, int] | None, force: bool, plugins: tuple[str, ...],
               env: dict[str, str]) -> str:
    """One cell (or the base row, ``cell=None``) on a Ray worker: the board is loaded there from the shared files."""
    os.environ.update(env)
    from .paths import Workspace
    from .pipeline import Board, Cell

    b = Board(Workspace.at(root), board, plugins)
    try:
        status, _ = b.run_base(force) if cell is None else b.run_cell(Cell(*cell), force)
    finally:
        b.close()
    return status


def run_ray(board, rows: Iterable[str] | None, force: bool, address: str | None, task_resources: dict[str, float],
            on_result: Callable[[str, Any], bool], include_base: bool = True) -> None:
    """Every cell as a Ray task (retried when its worker dies), in two waves: the baselines, then the rest."""
    import ray

    started = not ray.is_initialized()
    if started:
        ray.init(address=address, ignore_reinit_error=True, log_to_driver=False)
    env = {k: os.environ[k] for k in (CACHE_DIR_ENV, DATA_DIR_ENV, "SELBENCH_ENGINE", "SELBENCH_DEVICE",
                                      "HF_HUB_OFFLINE", "HF_HOME", "WANDB_MODE", "WANDB_DIR")
           if k in os.environ}
    task = ray.remote(max_retries=3, retry_exceptions=False, **task_resources)(_cell_task)
    root, plugins = str(board.ws.root), tuple(board.plugins)
    cells = board.cells(rows)
    first = [("base", None)] if include_base else []
    first += [(str(c), (c.row, c.budget, c.seed)) for c in cells if c.row in BASELINE_ROWS]
    second = [(str(c), (c.row, c.budget, c.seed)) for c in cells if c.row not in BASELINE_ROWS]
    try:
        for wave in (first, second):
            refs = {task.remote(root, board.name, spec, force and (spec is not None or not rows), plugins, env): name
                    for name, spec in wave}
            pending = list(refs)
            while pending:
                done, pending = ray.wait(pending, num_returns=1)
                try:
                    result: Any = ray.get(done[0])
                except ray.exceptions.RayTaskError as e:  # the method's own exception, raised on the worker
                    result = e.as_instanceof_cause()
                except ray.exceptions.RayError as e:  # the task could not complete, retries included
                    result = RuntimeError(f"{type(e).__name__}: {e}")
                print(f"{board.name} {refs[done[0]]}: "
                      f"{result if isinstance(result, str) else 'failed: ' + type(result).__name__} (ray)", flush=True)
                if not on_result(refs[done[0]], result):
                    for ref in pending:
                        ray.cancel(ref)
                    return
    finally:
        if started:
            ray.shutdown()
