"""The Ray executor: each cell a Ray task on a local cluster the test starts (2 CPUs). Its records equal the local
executor's, and a worker killed in the middle of a task is retried and the refresh completes."""

from __future__ import annotations

import json
import textwrap

import pytest
import yaml

from conftest import alpaca_rows
from selbench import pipeline
from selbench.paths import Workspace

CRASH_ONCE = textwrap.dedent('''
    import os, signal
    from pathlib import Path
    from selbench.registry import register_method

    @register_method("crash_once", family="indicator-based", aspect="quality", description="first N; its first "
                     "attempt kills its own worker", citation="test plugin")
    def crash_once(pool, budget, ctx, marker=""):
        if not Path(marker).exists():  # the first attempt: die like a preempted node, mid-task
            Path(marker).write_text(str(os.getpid()))
            os.kill(os.getpid(), signal.SIGKILL)
        return pool.ids[:budget]
''')


def make_root(root, tiny_model_dir, marker) -> Workspace:
    (root / "leaderboards" / "tiny").mkdir(parents=True)
    (root / "pool.json").write_text(json.dumps(alpaca_rows(30)))
    protocol = {"name": "tiny", "base_model": {"path": str(tiny_model_dir)},
                "pool": {"path": str(root / "pool.json"), "format": "alpaca"}, "budgets": [6], "seeds": [0],
                "recipe": {"lora": {"r": 4, "alpha": 8, "target_modules": ["q_proj", "v_proj"]}, "lr": 1e-3,
                           "batch_size": 2, "max_seq_len": 64, "epochs": 1},
                "evaluation": {"ref_likelihood": {"sets": ["mt_bench"], "per_set": 4, "max_len": 64}},
                "engine": "transformers", "tracking": {"wandb": {"mode": "disabled"}},
                "methods": [{"name": "random"}, {"name": "crash_once", "params": {"marker": str(marker)}}]}
    (root / "leaderboards" / "tiny" / "protocol.yaml").write_text(yaml.safe_dump(protocol))
    return Workspace(root)


@pytest.mark.slow
def test_ray_refresh_equals_local_and_survives_a_killed_worker(tmp_path, tiny_model_dir, monkeypatch):
    import ray
    from test_kill_resume import comparable

    plugin = tmp_path / "crash_once.py"
    plugin.write_text(CRASH_ONCE)
    marker_local, marker_ray = tmp_path / "m-local", tmp_path / "m-ray"
    marker_local.write_text("no crash in the local run")

    monkeypatch.setenv("SELBENCH_CACHE_DIR", str(tmp_path / "cache-local"))
    local = make_root(tmp_path / "local", tiny_model_dir, marker_local)
    s = pipeline.refresh(local, "tiny", plugins=[str(plugin)])
    assert not s.failed and len(s.done) == 3

    monkeypatch.setenv("SELBENCH_CACHE_DIR", str(tmp_path / "cache-ray"))
    remote = make_root(tmp_path / "ray", tiny_model_dir, marker_ray)
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        s = pipeline.refresh(remote, "tiny", plugins=[str(plugin)], executor="ray")
    finally:
        ray.shutdown()
    assert marker_ray.exists()  # the first attempt of crash_once killed its worker...
    assert not s.failed and sorted(s.done) == sorted(["base", "random/6/seed0", "crash_once/6/seed0"])  # ...and
    # the retry finished it
    a, b = comparable(local.root), comparable(remote.root)
    assert a.keys() == b.keys() and a == b
