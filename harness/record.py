"""Cell records: ``results/<board>/<method>/<budget>/seed<k>.json`` plus per-evaluator side files.

A record is small, committed text: enough to rebuild the leaderboard and to trace every number to its inputs
(protocol hash, method version and parameters, selection hash) and to its wandb run.
"""

from __future__ import annotations

import json
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any, Iterator

from .cache import atomic_write_json, atomic_write_text, read_json

PACKAGES = ("selbench", "torch", "transformers", "peft", "lm_eval", "alpaca_eval", "openai", "wandb", "pandas",
            "datasets", "sentence-transformers")
BASE_ROW = "base"
SECOND_JUDGE = "judge2"  # side file <seed>.<evaluator>.judge2.jsonl: the protocol's second_judge's verdicts


def package_versions() -> dict[str, str]:
    out = {}
    for p in PACKAGES:
        try:
            out[p] = version(p)
        except PackageNotFoundError:
            pass
    return out


def record_path(results_dir: Path, board: str, row: str, budget: int | None, seed: int) -> Path:
    if row == BASE_ROW:
        return results_dir / board / BASE_ROW / f"seed{seed}.json"
    return results_dir / board / row / str(budget) / f"seed{seed}.json"


def is_current(path: Path, inputs_hash: str) -> bool:
    """A record exists for exactly these inputs (so the cell can be skipped)."""
    if not path.is_file():
        return False
    try:
        return read_json(path).get("inputs_hash") == inputs_hash
    except (json.JSONDecodeError, OSError):
        return False


def write_record(path: Path, record: dict[str, Any], details: dict[str, list[dict[str, Any]]]) -> None:
    """Side files first, record last: a record on disk always has its side files next to it."""
    for evaluator, rows in details.items():
        if rows:
            side = path.with_name(f"{path.stem}.{evaluator}.jsonl")
            atomic_write_text(side, "".join(json.dumps(r, sort_keys=True, ensure_ascii=False) + "\n" for r in rows))
            record.setdefault("side_files", {})[evaluator] = side.name
    atomic_write_json(path, record)


def iter_records(results_dir: Path, board: str) -> Iterator[tuple[Path, dict[str, Any]]]:
    root = results_dir / board
    if not root.is_dir():
        return
    for p in sorted(root.rglob("seed*.json")):
        try:
            yield p, read_json(p)
        except json.JSONDecodeError as e:
            raise ValueError(f"{p}: corrupt result record ({e}); delete it and refresh the cell") from e
