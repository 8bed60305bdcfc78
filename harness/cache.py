"""Content-addressed storage for expensive intermediates.

Every artifact lives under ``<cache root>/<kind>/<key>`` where ``key`` is a hash of everything the artifact depends
on (:func:`artifact_key`), and every stage gets, computes and puts its artifacts through one helper,
:meth:`ArtifactCache.get_or_compute`. Files and directories are written to a temporary name and renamed into place,
so a crash never leaves a half-written artifact that a later run would mistake for a finished one; the temporary
names carry their writer's process ID, so a later run removes what a killed one left behind.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shutil
import socket
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Literal


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


# -- temporary names: ``.<name>.<random>.<pid>@<host>.tmp`` beside the final path ---------------------------------
_OWNER = re.compile(r"\.(\d+)@([^@/]+)\.tmp$")


def _scratch_suffix() -> str:
    return f".{os.getpid()}@{socket.gethostname()}.tmp"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    return True


def remove_abandoned(directory: str | Path) -> list[Path]:
    """Delete the temporary files and directories in ``directory`` whose writer died before renaming them (a
    killed run): those named with a process of this host that no longer exists, and the owner-less
    ``.<name>.<random>.tmp`` that versions before the owner was named left. Those of a live process, or of
    another host, are kept. Returns what it removed."""
    removed = []
    host = socket.gethostname()
    with contextlib.suppress(FileNotFoundError):
        for p in Path(directory).iterdir():
            if not (p.name.startswith(".") and p.name.endswith(".tmp")):
                continue
            owner = _OWNER.search(p.name)
            if owner and (owner[2] != host or _alive(int(owner[1]))):
                continue
            if p.is_dir():
                shutil.rmtree(p, ignore_errors=True)
            else:
                with contextlib.suppress(FileNotFoundError):
                    p.unlink()
            removed.append(p)
    return removed


_UMASK = os.umask(0)
os.umask(_UMASK)


@contextlib.contextmanager
def atomic_open(path: str | Path, mode: str = "w") -> Iterator[Any]:
    """Open a temporary file beside ``path``; it replaces ``path`` only if the block finishes without error."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=_scratch_suffix())
    try:
        with os.fdopen(fd, mode, **({} if "b" in mode else {"encoding": "utf-8"})) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes 0600; records and tables are shared files
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
    tmp = Path(tempfile.mkdtemp(dir=final.parent, prefix=f".{final.name}.", suffix=_scratch_suffix()))
    try:
        yield tmp
        if final.exists():  # another process finished the same artifact first; theirs is equivalent
            shutil.rmtree(tmp)
        else:
            os.replace(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def artifact_key(inputs: dict[str, Any], *, engine: str | None, device: str | None) -> str:
    """The cache key of an artifact: see :meth:`ArtifactCache.get_or_compute`."""
    if "engine" in inputs or "device" in inputs:
        raise ValueError("pass the engine and the device as engine= and device=, not inside the inputs")
    policy = {"engine": engine} if engine is not None else {}
    if device not in (None, "cpu"):
        policy["device"] = device
    return stable_hash({**inputs, **policy})


@dataclass(frozen=True)
class Artifact:
    key: str
    path: Path
    value: Any  # the JSON object, the arrays of an npz (name -> array), or the directory's path
    hit: bool  # read from the cache; False: computed by this call


_SUFFIX = {"json": ".json", "npz": ".npz", "dir": ""}


class ArtifactCache:
    """A directory of content-addressed artifacts: ``cache.path(kind, key)``.

    ``kind`` groups artifacts of one stage (``selections``, ``adapters``, ``eval/<evaluator>``, ``generations``,
    ``signals``, ``judgments``, ``models`` ...); the key is :func:`artifact_key` of all the inputs of the artifact.
    """

    def __init__(self, root: str | Path):
        self.root = Path(root)
        self._swept: set[str] = set()

    def path(self, kind: str, key: str, suffix: str = "") -> Path:
        return self.root / kind / f"{key}{suffix}"

    @contextlib.contextmanager
    def scratch(self, name: str) -> Iterator[Path]:
        """A temporary directory under ``<root>/tmp`` for a process's working files (a judge server's home and
        log, vLLM's sockets), removed when the block ends; one that a killed run left is removed by the next."""
        parent = self.root / "tmp"
        parent.mkdir(parents=True, exist_ok=True)
        remove_abandoned(parent)
        tmp = Path(tempfile.mkdtemp(dir=parent, prefix=f".{name}.", suffix=_scratch_suffix()))
        try:
            yield tmp
        finally:
            shutil.rmtree(tmp, ignore_errors=True)

    @staticmethod
    @contextlib.contextmanager
    def socket_scratch() -> Iterator[Path]:
        """A short temporary directory for Unix sockets (vLLM's IPC paths must stay under 107 characters, so not
        under the cache): ``$TMPDIR/sb<pid>-<random>``, removed when the block ends, or by the next run's sweep."""
        tmp = Path(tempfile.mkdtemp(prefix=f"sb{os.getpid()}-"))
        try:
            yield tmp
        finally:
            shutil.rmtree(tmp, ignore_errors=True)

    def sweep_scratch(self) -> list[Path]:
        """Remove the scratch directories that killed runs left under ``<root>/tmp`` and the socket directories
        of dead processes (every run starts with it)."""
        removed = remove_abandoned(self.root / "tmp")
        for p in Path(tempfile.gettempdir()).glob("sb*-*"):
            m = re.fullmatch(r"sb(\d+)-\w+", p.name)
            if m and p.is_dir() and not _alive(int(m[1])):
                shutil.rmtree(p, ignore_errors=True)
                removed.append(p)
        return removed

    def get_json(self, kind: str, key: str) -> Any | None:
        """A JSON artifact by its key (e.g. a record's selection key), or None."""
        p = self.path(kind, key, ".json")
        return read_json(p) if p.exists() else None

    def get_or_compute(self, kind: str, inputs: dict[str, Any], compute: Callable, *, engine: str | None,
                       device: str | None, form: Literal["json", "npz", "dir"] = "json") -> Artifact:
        """The artifact of ``kind`` for ``inputs``: read from the cache, or computed, written atomically and
        returned.

        Key policy: the key is the hash of ``inputs``, which name everything the artifact depends on (content
        hashes or identities of models, data and code, and every parameter), plus the engine and the device that
        computed it. Every caller states both: ``engine`` is the engine as resolved (``"transformers"`` or
        ``"vllm"``), ``device`` where the numbers were computed (``"cpu"``, ``"cuda"``); ``None`` says the artifact
        does not depend on it (a verdict of a judge named by its identity, a training run that has one engine).
        The CPU, where every artifact was computed before the device entered the key, adds nothing, so those keys
        are unchanged. ``inputs`` may not carry ``engine`` or ``device`` themselves.

        ``form``: ``"json"`` (``compute()`` returns a JSON-able object), ``"npz"`` (``compute()`` returns a dict
        of numpy arrays) or ``"dir"`` (``compute(tmp)`` fills the scratch directory ``tmp``, which becomes the
        artifact; ``value`` is its path). A computed value is returned as computed, not re-read. The first use of
        a kind by this cache object removes the temporary files and directories that killed runs left in it
        (:func:`remove_abandoned`). Two processes computing the same artifact at once both compute it; the
        artifact is one of the two (they are equivalent).
        """
        key = artifact_key(inputs, engine=engine, device=device)
        path = self.path(kind, key, _SUFFIX[form])
        if kind not in self._swept:
            remove_abandoned(path.parent)
            self._swept.add(kind)
        if path.is_dir() if form == "dir" else path.is_file():
            return Artifact(key, path, path if form == "dir" else _read(path, form), True)
        if form == "dir":
            with atomic_directory(path) as tmp:
                compute(tmp)
            return Artifact(key, path, path, False)
        value = compute()
        if form == "json":
            atomic_write_json(path, value)
        else:
            import numpy as np

            with atomic_open(path, "wb") as f:
                np.savez(f, **value)
        return Artifact(key, path, value, False)


def _read(path: Path, form: str) -> Any:
    if form == "json":
        return read_json(path)
    import numpy as np

    with np.load(path) as z:
        return {k: z[k] for k in z.files}
