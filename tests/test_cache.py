"""The caching primitive: key policy (engine and device included), reuse, atomic writes, and the removal of what
a killed run left behind."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import tempfile
import textwrap
import time

import numpy as np
import pytest

from selbench.cache import ArtifactCache, artifact_key, remove_abandoned, stable_hash


class Counter:
    def __init__(self, value):
        self.value, self.calls = value, 0

    def __call__(self, tmp=None):
        self.calls += 1
        if tmp is None:
            return self.value
        (tmp / "weights.txt").write_text(str(self.value))


def scratch(directory):
    return sorted(p.name for p in directory.iterdir() if p.name.endswith(".tmp")) if directory.exists() else []


def test_key_policy_adds_engine_and_non_cpu_device_and_keeps_old_keys():
    inputs = {"model": "m", "prompts": [["hi"]]}
    # what the sites hashed before the primitive: their inputs, the engine inside where they had one
    assert artifact_key(inputs, engine=None, device=None) == stable_hash(inputs)
    assert artifact_key(inputs, engine="vllm", device="cpu") == stable_hash({**inputs, "engine": "vllm"})
    keys = {artifact_key(inputs, engine=e, device=d)
            for e in (None, "transformers", "vllm") for d in (None, "cuda", "xpu")}
    assert len(keys) == 9  # every engine and every non-CPU device is its own artifact
    with pytest.raises(ValueError, match="engine="):
        artifact_key({**inputs, "engine": "vllm"}, engine=None, device=None)
    with pytest.raises(ValueError, match="device="):
        artifact_key({**inputs, "device": "cuda"}, engine=None, device=None)


def test_engine_and_device_must_be_stated(tmp_path):
    with pytest.raises(TypeError):
        ArtifactCache(tmp_path).get_or_compute("k", {"a": 1}, lambda: 1)  # no engine=, device=
    with pytest.raises(TypeError):
        ArtifactCache(tmp_path).get_or_compute("k", {"a": 1}, lambda: 1, engine=None)


def test_json_is_computed_once_then_reused_per_engine_and_device(tmp_path):
    cache, compute = ArtifactCache(tmp_path), Counter({"answers": ["a", "b"]})
    first = cache.get_or_compute("generations", {"model": "m"}, compute, engine="transformers", device="cpu")
    assert not first.hit and first.value == {"answers": ["a", "b"]} and compute.calls == 1
    assert first.path == tmp_path / "generations" / f"{first.key}.json"
    again = ArtifactCache(tmp_path).get_or_compute("generations", {"model": "m"}, compute, engine="transformers",
                                                   device="cpu")
    assert again.hit and again.value == first.value and again.key == first.key and compute.calls == 1
    gpu = cache.get_or_compute("generations", {"model": "m"}, compute, engine="vllm", device="cuda")
    other = cache.get_or_compute("generations", {"model": "m2"}, compute, engine="transformers", device="cpu")
    assert not gpu.hit and not other.hit and compute.calls == 3
    assert len({first.key, gpu.key, other.key}) == 3


def test_npz_round_trip(tmp_path):
    cache = ArtifactCache(tmp_path)
    arrays = {"flat": np.arange(5, dtype=np.float32), "offsets": np.array([0, 2, 5], dtype=np.int64)}
    made = cache.get_or_compute("signals", {"s": 1}, lambda: arrays, engine="transformers", device="cpu", form="npz")
    read = cache.get_or_compute("signals", {"s": 1}, lambda: pytest.fail("recomputed"), engine="transformers",
                                device="cpu", form="npz")
    assert made.path.suffix == ".npz" and read.hit and not made.hit
    for k, v in arrays.items():
        assert read.value[k].dtype == v.dtype and np.array_equal(read.value[k], v)


def test_directory_is_built_once_and_published_whole(tmp_path):
    cache, build = ArtifactCache(tmp_path), Counter(7)
    made = cache.get_or_compute("adapters", {"sel": "x"}, build, engine=None, device="cpu", form="dir")
    assert not made.hit and made.value == made.path and (made.path / "weights.txt").read_text() == "7"
    again = cache.get_or_compute("adapters", {"sel": "x"}, build, engine=None, device="cpu", form="dir")
    assert again.hit and again.path == made.path and build.calls == 1
    assert scratch(tmp_path / "adapters") == []


class Unwritable:
    def __array__(self, *args, **kwargs):
        raise RuntimeError("killed while writing")


@pytest.mark.parametrize("form", ["npz", "dir"])
def test_a_write_that_fails_halfway_leaves_nothing(tmp_path, form):
    cache = ArtifactCache(tmp_path)

    def half(tmp=None):
        if tmp is None:  # npz: the first array is written into the temporary file before the second fails
            return {"a": np.zeros(100_000), "b": Unwritable()}
        (tmp / "half.bin").write_bytes(b"x" * 100)
        raise RuntimeError("killed while writing")

    with pytest.raises(RuntimeError, match="killed while writing"):
        cache.get_or_compute("a", {"k": 1}, half, engine=None, device=None, form=form)
    assert list((tmp_path / "a").iterdir()) == []  # neither the artifact nor a temporary
    done = cache.get_or_compute("a", {"k": 1}, lambda tmp=None: {"a": np.ones(2)} if tmp is None else None,
                                engine=None, device=None, form=form)
    assert not done.hit and done.path.exists()


def test_a_killed_run_leftover_is_removed_by_the_next_run(tmp_path):
    """A run SIGKILLed while building a directory artifact leaves its scratch directory; the next run's first use
    of that kind removes it, keeps a live process's, and builds the artifact."""
    script = textwrap.dedent(f"""
        import time
        from selbench.cache import ArtifactCache

        def build(tmp):
            (tmp / "half.bin").write_bytes(b"x" * 1000)
            time.sleep(600)

        ArtifactCache({str(tmp_path)!r}).get_or_compute("adapters", {{"sel": "x"}}, build, engine=None,
                                                       device="cpu", form="dir")
    """)
    proc = subprocess.Popen([sys.executable, "-c", script])
    kind = tmp_path / "adapters"
    try:
        deadline = time.monotonic() + 60
        while not any((p / "half.bin").exists() for p in kind.glob(".*.tmp")):
            assert proc.poll() is None and time.monotonic() < deadline, "the builder never started"
            time.sleep(0.05)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    left = scratch(kind)
    assert len(left) == 1 and left[0].endswith(f".{proc.pid}@{socket.gethostname()}.tmp")
    # beside it: a live process's scratch (ours), another host's, and an owner-less one from before owners
    live = tempfile.mkdtemp(dir=kind, prefix=".othkey.", suffix=f".{os.getpid()}@{socket.gethostname()}.tmp")
    remote = kind / ".othkey.abcdefgh.1@elsewhere.example.tmp"
    remote.mkdir()
    old = kind / ".othkey.k3j2h1x9.tmp"
    old.mkdir()
    (kind / ".othkey.json.q1w2e3r4.tmp").write_text("{")

    build = Counter(1)
    done = ArtifactCache(tmp_path).get_or_compute("adapters", {"sel": "x"}, build, engine=None, device="cpu",
                                                  form="dir")
    assert not done.hit and build.calls == 1 and (done.path / "weights.txt").exists()
    assert scratch(kind) == sorted([os.path.basename(live), remote.name])


def test_remove_abandoned_files_of_dead_processes(tmp_path):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    pid = int(dead.stdout)
    host = socket.gethostname()
    (tmp_path / f".k.json.abcdefgh.{pid}@{host}.tmp").write_text("{")
    (tmp_path / f".k.json.bcdefghi.{os.getpid()}@{host}.tmp").write_text("{")
    (tmp_path / "k.json").write_text("{}")
    removed = remove_abandoned(tmp_path)
    assert [p.name for p in removed] == [f".k.json.abcdefgh.{pid}@{host}.tmp"]
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([f".k.json.bcdefghi.{os.getpid()}@{host}.tmp",
                                                                 "k.json"])
