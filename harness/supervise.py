"""``python -m selbench.supervise -- ARGV...``: run ARGV and take it down when the harness goes.

A server the harness starts (the local judge, vLLM's OpenAI server) must not outlive it, also when the harness is
killed with SIGKILL and runs no cleanup. The harness starts this small process in a new process group; it runs ARGV
in that same group (with every process ARGV spawns) and polls its parent: when the parent is gone, or on SIGTERM, it
kills the whole group. The harness's own shutdown kills the group directly.
"""

from __future__ import annotations

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


def main(argv: list[str]) -> int:
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
