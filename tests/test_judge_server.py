"""Local judge lifecycle: ``transformers serve`` on the tiny model, started, used, and stopped on exit or error."""

from __future__ import annotations

import socket
import time

import pytest

from selbench.cache import ArtifactCache
from selbench.judge import server
from selbench.judge.server import open_judge
from selbench.protocol import JudgeSpec


def port_free(port: int) -> bool:
    """Nothing listens there any more (SO_REUSEADDR: the health probes' TIME_WAIT sockets don't count)."""
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
            return True
        except OSError:
            return False


def port_freed(port: int, wait_s: float = 5.0) -> bool:
    deadline = time.monotonic() + wait_s
    while not port_free(port) and time.monotonic() < deadline:
        time.sleep(0.25)
    return port_free(port)


def _port(client) -> int:
    return int(client.base_url.rsplit(":", 1)[1].split("/")[0])


@pytest.fixture(scope="module")
def spec(tiny_model_dir):
    return JudgeSpec(kind="local", model=str(tiny_model_dir), max_tokens=8, max_retries=1, timeout_s=60)


def test_local_server_lifecycle(spec, tmp_path):
    t0 = time.monotonic()
    with open_judge(spec, ArtifactCache(tmp_path / "cache")) as judge:
        started = time.monotonic() - t0
        proc_port = _port(judge)
        assert not port_free(proc_port)
        v = judge.judge([{"role": "user", "content": "Rate this: [[rating]]"}])
        assert v.ok and isinstance(v.text, str)
        assert judge.ledger.calls == 1 and judge.ledger.completion_tokens > 0
        assert judge.identity["kind"] == "local" and judge.identity["weights"].startswith("dir:")
    assert started < 60, f"transformers serve took {started:.0f}s to become healthy"
    assert port_freed(proc_port) and not server._RUNNING


def test_local_server_stopped_after_interrupt(spec, tmp_path):
    with pytest.raises(KeyboardInterrupt):  # a BaseException: the hardest case for cleanup
        with open_judge(spec, ArtifactCache(tmp_path / "cache")) as judge:
            proc_port = _port(judge)
            raise KeyboardInterrupt
    assert port_freed(proc_port) and not server._RUNNING
