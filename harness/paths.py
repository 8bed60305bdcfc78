"""Where things live: the project root (leaderboards/, results/), the cache, the shared data directory."""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

DATA_DIR_ENV = "SELBENCH_DATA_DIR"
CACHE_DIR_ENV = "SELBENCH_CACHE_DIR"


def find_root(start: str | Path | None = None) -> Path:
    """The nearest directory at or above ``start`` (default: cwd) that holds ``leaderboards/``."""
    here = Path(start or Path.cwd()).resolve()
    for d in (here, *here.parents):
        if (d / "leaderboards").is_dir():
            return d
    return here


def data_dir(root: str | Path | None = None) -> Path | None:
    """The offline data directory: ``$SELBENCH_DATA_DIR``, else ``<root>/../shared/data`` when it exists."""
    env = os.environ.get(DATA_DIR_ENV)
    if env:
        return Path(env).expanduser().resolve()
    guess = Path(root or find_root()).resolve().parent / "shared" / "data"
    return guess if guess.is_dir() else None


def portable_path(path: str | Path | None, root: Path | None = None) -> str | None:
    """A path as a committed record may hold it: relative to the data directory (``$SELBENCH_DATA_DIR/...``) or to
    the project root; never a machine path. A hub ID (not an existing path) is returned as it is."""
    if path is None:
        return None
    p = Path(path)
    if not p.is_absolute():
        return str(path)
    for base, label in ((data_dir(root), "$SELBENCH_DATA_DIR"), (root, "")):
        if base is not None:
            try:
                rel = p.resolve().relative_to(Path(base).resolve())
            except ValueError:
                continue
            return f"{label}/{rel}" if label else str(rel)
    return p.name


@contextlib.contextmanager
def scoped_environ(values: dict[str, str]) -> Iterator[None]:
    """Set environment variables for the block, then restore them (or remove those that were unset)."""
    old = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


@dataclass(frozen=True)
class Workspace:
    root: Path

    @classmethod
    def at(cls, root: str | Path | None = None) -> "Workspace":
        return cls(Path(root).resolve() if root else find_root())

    @property
    def leaderboards(self) -> Path:
        return self.root / "leaderboards"

    @property
    def results(self) -> Path:
        return self.root / "results"

    @property
    def cache_dir(self) -> Path:
        env = os.environ.get(CACHE_DIR_ENV)
        return Path(env).expanduser().resolve() if env else self.root / ".cache" / "selbench"

    @property
    def wandb_dir(self) -> Path:
        """wandb's ``dir``: its runs go to ``<cache dir>/wandb/``, with every other artifact."""
        return self.cache_dir

    @property
    def data_dir(self) -> Path | None:
        return data_dir(self.root)

    def board_dir(self, board: str) -> Path:
        return self.leaderboards / board

    def protocol_path(self, board: str) -> Path:
        return self.board_dir(board) / "protocol.yaml"
