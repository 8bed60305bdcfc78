"""Processes the harness starts die with it, also when it is SIGKILLed (selbench.supervise)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time

import psutil

WATCHER = textwrap.dedent("""
    import subprocess, sys, time
    from selbench.supervise import watch
    child = subprocess.Popen(["sleep", "300"])  # like vLLM's engine core: spawned by a library, not supervised
    watch([child.pid])
    print(child.pid, flush=True)
    time.sleep(300)
""")


def gone(pid: int, wait_s: float = 10) -> bool:
    deadline = time.monotonic() + wait_s
    while time.monotonic() < deadline:
        try:
            if psutil.Process(pid).status() == psutil.STATUS_ZOMBIE:
                return True
        except psutil.NoSuchProcess:
            return True
        time.sleep(0.1)
    return False


def test_watched_child_dies_with_a_sigkilled_parent():
    harness = subprocess.Popen([sys.executable, "-c", WATCHER], stdout=subprocess.PIPE, text=True)
    child = int(harness.stdout.readline())
    assert not gone(child, 0.5)
    harness.send_signal(signal.SIGKILL)
    harness.wait()
    assert gone(child)


def test_supervised_server_group_dies_with_a_sigkilled_parent():
    code = textwrap.dedent("""
        import subprocess, time
        from selbench.judge.server import supervised
        p = subprocess.Popen(supervised(["sh", "-c", "sleep 300 & sleep 300"]), start_new_session=True)
        print(p.pid, flush=True)
        time.sleep(300)
    """)
    harness = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    supervisor = int(harness.stdout.readline())
    time.sleep(1.0)
    group = [p.pid for p in psutil.process_iter() if p.pid != supervisor and _pgid(p.pid) == supervisor]
    assert len(group) >= 2  # the shell and its sleeps, in the supervisor's process group
    harness.send_signal(signal.SIGKILL)
    harness.wait()
    assert all(gone(pid) for pid in [supervisor, *group])


def _pgid(pid: int) -> int | None:
    try:
        return os.getpgid(pid)
    except ProcessLookupError:
        return None
