"""Processes the harness starts never outlive it, also when it is killed with SIGKILL and runs no cleanup.

``python -m selbench.supervise -- ARGV...`` runs a server (the local judge, vLLM's OpenAI server): the harness starts
this small process in a new process group; it runs ARGV in that same group (with every process ARGV spawns) and
polls its parent: when the parent is gone, or on SIGTERM, it kills the whole group. The harness's own shutdown kills
the group directly.

``python -m selbench.supervise --reap`` (:func:`watch`) covers processes that libraries spawn for us, e.g. the engine
core and workers of an in-process vLLM engine: the harness writes their PIDs to its stdin; when stdin closes (the
harness exited or died) it kills those still alive, with their children.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time


def _kill_group(grace_s: float) -> None:
    for sig in (signal.SIGTERM, signal.SIGKILL):  # some servers ignore SIGTERM (transformers serve)
        try:
            os.killpg(0, sig)
        except ProcessLookupError:
            return
        time.sleep(grace_s)


def reap() -> int:
    import psutil

    watched = []
    for line in sys.stdin:  # until the harness closes the pipe, by exiting or dying
        pid, created = line.split()
        watched.append((int(pid), float(created)))
    for pid, created in watched:
        try:
            proc = psutil.Process(pid)
            if abs(proc.create_time() - created) > 0.01:  # the PID now belongs to another process
                continue
            for p in [*proc.children(recursive=True), proc]:
                p.kill()
        except psutil.Error:
            continue
    return 0


_REAPER: subprocess.Popen | None = None


def watch(pids) -> None:
    """Kill ``pids`` (and their children) when this process exits or dies; they may end earlier on their own."""
    import psutil

    global _REAPER
    if _REAPER is None or _REAPER.poll() is not None:
        _REAPER = subprocess.Popen([sys.executable, "-m", "selbench.supervise", "--reap"], stdin=subprocess.PIPE,
                                   start_new_session=True, text=True)
    for pid in pids:
        with contextlib.suppress(psutil.Error):
            _REAPER.stdin.write(f"{pid} {psutil.Process(pid).create_time()}\n")
    _REAPER.stdin.flush()


def main(argv: list[str]) -> int:
    if argv[:1] == ["--reap"]:
        return reap()
    if "--" not in argv:
        print("usage: python -m selbench.supervise -- ARGV...", file=sys.stderr)
        return 2
    cmd = argv[argv.index("--") + 1:]
    parent = os.getppid()
    stop = []
    signal.signal(signal.SIGTERM, lambda *_: stop.append(1))  # a Python handler: ARGV gets the default one
    proc = subprocess.Popen(cmd)
    while proc.poll() is None:
        if stop or os.getppid() != parent:  # asked to stop, or the harness died (we were re-parented)
            signal.signal(signal.SIGTERM, signal.SIG_IGN)  # our own group kill reaches us too
            _kill_group(grace_s=3.0)
        time.sleep(0.2)
    return proc.returncode or 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
