"""Kill -9 at every stage, then resume: the final records equal an uninterrupted run's, and nothing is left behind.

A refresh runs as a subprocess (`python -m selbench refresh`) on a tiny board with a local judge server (`transformers
serve` on the tiny model). The test watches its output and SIGKILLs the harness — the harness only, as `kill -9`
does — at the start of selection, during training, at the start of evaluation, during generation and while judging,
then lets a last run finish. After each kill no judge server may survive; at the end no temporary file or scratch
directory may remain, and records and leaderboard must equal those of one uninterrupted run from empty caches, which
is also the determinism check: the same seed gives the same selection and the same metrics on the CPU.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import yaml

from conftest import alpaca_rows

BOARD = "tiny"
CELL = "random/8/seed0"


def make_root(root: Path, tiny_model_dir: Path) -> Path:
    (root / "leaderboards" / BOARD).mkdir(parents=True)
    (root / "pool.json").write_text(json.dumps(alpaca_rows(40)))
    protocol = {
        "name": BOARD, "base_model": {"path": str(tiny_model_dir)},
        "pool": {"path": str(root / "pool.json"), "format": "alpaca"}, "budgets": [8], "seeds": [0],
        "recipe": {"finetune": "lora", "lora": {"r": 4, "alpha": 8, "target_modules": ["q_proj", "v_proj"]},
                   "lr": 1e-3, "batch_size": 1, "max_seq_len": 64, "epochs": 3},
        "evaluation": {"ref_likelihood": {"sets": ["mt_bench"], "per_set": 4, "max_len": 64},
                       "mt_bench": {"question_ids": [81, 82], "turns": [1], "max_new_tokens": 6, "batch_size": 1}},
        "engine": "transformers",
        "judge": {"kind": "local", "model": str(tiny_model_dir), "server": "transformers", "max_tokens": 6,
                  "max_retries": 1, "max_parse_retries": 0, "timeout_s": 120},
        "tracking": {"wandb": {"project": "selbench-test", "mode": "offline"}},
        "methods": [{"name": "random"}],
    }
    (root / "leaderboards" / BOARD / "protocol.yaml").write_text(yaml.safe_dump(protocol))
    return root


class Refresh:
    """`selbench refresh` in a subprocess whose combined output is read as it comes."""

    def __init__(self, root: Path):
        env = {**os.environ, "SELBENCH_CACHE_DIR": str(root / "cache"), "PYTHONUNBUFFERED": "1"}
        self.proc = subprocess.Popen([sys.executable, "-m", "selbench", "refresh", "--board", BOARD, "--root",
                                      str(root)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env)
        self.out = b""
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self):
        while chunk := os.read(self.proc.stdout.fileno(), 4096):
            self.out += chunk

    def kill_when(self, *markers: str, timeout_s: float = 300) -> None:
        """SIGKILL the harness once its output shows ``markers`` in this order."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            text, pos = self.out.decode(errors="replace"), 0
            for m in markers:
                pos = text.find(m, pos)
                if pos < 0:
                    break
            else:
                self.proc.send_signal(signal.SIGKILL)
                self.proc.wait()
                self._reader.join(5)
                return
            assert self.proc.poll() is None, f"refresh ended before {markers}:\n{self.text[-3000:]}"
            time.sleep(0.05)
        self.proc.kill()
        raise AssertionError(f"no {markers} within {timeout_s}s:\n{self.text[-3000:]}")

    def finish(self, timeout_s: float = 600) -> int:
        rc = self.proc.wait(timeout_s)
        self._reader.join(5)
        return rc

    @property
    def text(self) -> str:
        return self.out.decode(errors="replace")


def servers_of(model_dir: Path) -> list[str]:
    """Command lines of live processes serving ``model_dir`` (judge servers and their supervisors)."""
    found = []
    for p in Path("/proc").iterdir():
        if not p.name.isdigit():
            continue
        try:
            cmd = (p / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            state = next((line for line in (p / "status").read_text().splitlines() if line.startswith("State:")), "")
        except OSError:
            continue
        if str(model_dir) in cmd and ("serve" in cmd or "supervise" in cmd) and "zombie" not in state:
            found.append(f"{p.name}: {cmd[:200]}")
    return found


def wait_no_servers(model_dir: Path, wait_s: float = 20) -> list[str]:
    deadline = time.monotonic() + wait_s
    while (left := servers_of(model_dir)) and time.monotonic() < deadline:
        time.sleep(0.25)
    return left


def leftovers(root: Path) -> list[str]:
    tmp = [str(p) for p in root.rglob("*.tmp")]
    scratch = root / "cache" / "tmp"
    return tmp + ([str(p) for p in scratch.iterdir()] if scratch.is_dir() else [])


def comparable(root: Path) -> dict:
    """What must not depend on interruptions: per record its inputs, selection, training and metrics; the side
    files (per-item scores, answers, verdicts); the leaderboard's metric columns."""
    import pandas as pd

    out = {}
    for rec_path in sorted((root / "results" / BOARD).rglob("seed*.json")):
        r = json.loads(rec_path.read_text())
        rel = str(rec_path.relative_to(root / "results"))
        out[rel] = {"selection": r.get("selection", {}).get("ids"),  # (inputs hashes differ: the roots' paths)
                    "training": {k: r.get("training", {}).get(k) for k in ("key", "final_loss", "steps")},
                    "metrics": r["metrics"]}
        for side in sorted(rec_path.parent.glob(rec_path.stem + ".*.jsonl")):
            rows = [json.loads(line) for line in side.read_text().splitlines() if line.strip()]
            out[f"{rel}:{side.name}"] = [{k: v for k, v in row.items() if k not in ("wall_s",)} for row in rows]
    table = pd.read_csv(root / "leaderboards" / BOARD / "leaderboard.csv")
    keep = [c for c in table.columns if c.startswith(("ref_likelihood/", "mt_bench/")) or c in ("method", "budget")]
    out["leaderboard"] = table[keep].round(12).astype(object).fillna("NaN").to_dict(orient="records")
    return out


@pytest.mark.slow
def test_kill_at_every_stage_then_resume_equals_uninterrupted(tmp_path, tiny_model_dir):
    assert not servers_of(tiny_model_dir)
    ref = make_root(tmp_path / "uninterrupted", tiny_model_dir)
    r = Refresh(ref)
    assert r.finish() == 0, r.text[-3000:]
    expected = comparable(ref)
    assert "random/8/seed0.json" in "".join(expected) and expected["leaderboard"]

    root = make_root(tmp_path / "killed", tiny_model_dir)
    kill_points = [
        ("base model: evaluate", "MT-Bench judging"),  # judging the base model: the judge server is up
        (f"{CELL}: select",),  # a stage boundary
        (f"{CELL}: train", "train:"),  # inside training
        (f"{CELL}: evaluate",),  # a stage boundary
        (f"{CELL}: evaluate", "MT-Bench ("),  # inside generation
        (f"{CELL}: evaluate", "MT-Bench judging"),  # inside judging
    ]
    for markers in kill_points:
        run = Refresh(root)
        run.kill_when(*markers)
        left = wait_no_servers(tiny_model_dir)
        assert not left, f"judge server outlived the killed harness ({markers}): {left}"
    last = Refresh(root)
    assert last.finish() == 0, last.text[-3000:]
    assert not wait_no_servers(tiny_model_dir)
    assert not leftovers(root), leftovers(root)
    assert comparable(root) == expected
