"""Content-addressed storage for expensive intermediates.

Every artifact lives under ``<cache root>/<kind>/<key>`` where ``key`` is a hash of everything the artifact depends
on. Files are written to a temporary name and renamed into place, so a crash never leaves a half-written artifact
that a later run would mistake for a finished one.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Iterator


def canonical_json(obj: Any) -> str:
    """JSON with sorted keys and no whitespace variance: the input of every hash."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=_json_default)


def _json_default(obj: Any) -> Any:
    if isinstance(obj, Path):
        return str(obj)
    if isinstance(obj, (set, frozenset)):
        return sorted(obj)
    if hasattr(obj, "model_dump"):
        return obj.model_dump(mode="json")
    if hasattr(obj, "tolist"):
        return obj.tolist()
    raise TypeError(f"cannot hash object of type {type(obj).__name__}")


def stable_hash(obj: Any, length: int = 16) -> str:
    """sha256 of the canonical JSON of ``obj``, truncated to ``length`` hex digits."""
    return hashlib.sha256(canonical_json(obj).encode()).hexdigest()[:length]


def file_sha256(path: str | Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


@contextlib.contextmanager
def atomic_open(path: str | Path, mode: str = "w") -> Iterator[Any]:
    """Open a temporary file beside ``path``; it replaces ``path`` only if the block finishes without error."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, mode, **({} if "b" in mode else {"encoding": "utf-8"})) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def atomic_write_text(path: str | Path, text: str) -> Path:
    with atomic_open(path, "w") as f:
        f.write(text)
    return Path(path)


def atomic_write_json(path: str | Path, obj: Any, indent: int | None = 2) -> Path:
    return atomic_write_text(path, json.dumps(obj, indent=indent, sort_keys=True, ensure_ascii=False,
                                              default=_json_default) + "\n")


def write_if_changed(path: str | Path, text: str) -> bool:
    """Write ``text`` atomically unless the file already holds exactly it. Returns whether it wrote."""
    path = Path(path)
    if path.exists() and path.read_text(encoding="utf-8") == text:
        return False
    atomic_write_text(path, text)
    return True


def read_json(path: str | Path) -> Any:
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def read_jsonl(path: str | Path) -> list[Any]:
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


@contextlib.contextmanager
def atomic_directory(final: str | Path) -> Iterator[Path]:
    """Yield a scratch directory that becomes ``final`` only if the block finishes without error."""
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=final.parent, prefix=f".{final.name}.", suffix=".tmp"))
    try:
        yield tmp
        if final.exists():  # another process finished the same artifact first; theirs is equivalent
            shutil.rmtree(tmp)
        else:
            os.replace(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


class ArtifactCache:
    """A directory of content-addressed artifacts: ``cache.path(kind, key)``.

    ``kind`` groups artifacts of one stage (``selections``, ``adapters``, ``lm_eval``, ``signals``, ``judgments``
    ...); ``key`` is a :func:`stable_hash` of all the inputs of the artifact.
    """

    def __init__(self, root: str | Path):
        self.root = Path(root)

    def path(self, kind: str, key: str, suffix: str = "") -> Path:
        return self.root / kind / f"{key}{suffix}"

    def get_json(self, kind: str, key: str) -> Any | None:
        p = self.path(kind, key, ".json")
        return read_json(p) if p.exists() else None

    def put_json(self, kind: str, key: str, obj: Any) -> Path:
        return atomic_write_json(self.path(kind, key, ".json"), obj)

    def directory(self, kind: str, key: str) -> Path | None:
        """The finished directory artifact, or None if it was never completed."""
        p = self.path(kind, key)
        return p if p.is_dir() else None

    def build_directory(self, kind: str, key: str):
        """Context manager yielding a scratch dir that is published as the artifact on success."""
        return atomic_directory(self.path(kind, key))
