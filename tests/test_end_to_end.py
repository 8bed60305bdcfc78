"""End to end on a tiny random llama: refresh -> records -> leaderboard -> offline wandb runs; resume; plugins."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import pytest
import yaml

from conftest import alpaca_rows
from harness import pipeline
from harness.cache import read_json
from harness.paths import Workspace
from harness.tracking import read_offline_run

PLUGIN = textwrap.dedent('''
    """A third-party method living outside the repository."""
    from harness.registry import register_method

    @register_method("first_n_plugin", family="indicator-based", aspect="quality",
                     description="The first N examples of the pool.", citation="test plugin")
    def first_n(pool, budget, ctx):
        return pool.ids[:budget]
''')


def make_workspace(root: Path, tiny_model_dir: Path, methods: list[dict]) -> Workspace:
    (root / "leaderboards" / "tiny").mkdir(parents=True)
    pool = root / "pool.json"
    pool.write_text(json.dumps(alpaca_rows(60)))
    protocol = {
        "name": "tiny",
        "base_model": {"path": str(tiny_model_dir)},
        "pool": {"path": str(pool), "format": "alpaca"},
        "budgets": [8],
        "seeds": [0],
        "recipe": {"finetune": "lora", "lora": {"r": 4, "alpha": 8, "target_modules": ["q_proj", "v_proj"]},
                   "lr": 1e-3, "batch_size": 4, "max_seq_len": 96, "epochs": 1},
        "evaluation": {"lm_eval": {"tasks": ["arc_easy_local", "gsm8k_local"], "limit": 3, "batch_size": 4,
                                   "max_gen_toks": 8, "bootstrap_iters": 0}},
        "tracking": {"wandb": {"project": "selbench-test", "mode": "offline"}},
        "methods": methods,
    }
    (root / "leaderboards" / "tiny" / "protocol.yaml").write_text(yaml.safe_dump(protocol))
    return Workspace(root)


def snapshot(root: Path) -> dict[str, float]:
    return {str(p): p.stat().st_mtime_ns for d in ("results", "leaderboards") for p in (root / d).rglob("*")
            if p.is_file()}


@pytest.mark.slow
def test_refresh_end_to_end_resume_and_plugin(tmp_path, tiny_model_dir, monkeypatch):
    plugin = tmp_path / "outside" / "my_plugin.py"
    plugin.parent.mkdir()
    plugin.write_text(PLUGIN)
    ws = make_workspace(tmp_path / "proj", tiny_model_dir,
                        [{"name": "random"}, {"name": "full"}, {"name": "longest"}, {"name": "first_n_plugin"}])
    monkeypatch.setenv("SELBENCH_CACHE_DIR", str(tmp_path / "cache"))

    s = pipeline.refresh(ws, "tiny", plugins=[str(plugin)])
    assert not s.failed, s.failed
    assert sorted(s.done) == sorted(["base", "random/8/seed0", "full/60/seed0", "longest/8/seed0",
                                     "first_n_plugin/8/seed0"])

    # Records: one per cell, with hashes, metrics with stderr, timings, versions and a wandb run id.
    rec = read_json(ws.results / "tiny" / "random" / "8" / "seed0.json")
    assert rec["selection"]["size"] == 8 and rec["method"]["name"] == "random"
    assert rec["protocol_hash"] == pipeline.Board(ws, "tiny", (str(plugin),)).protocol.hash
    assert set(rec["metrics"]) >= {"lm_eval/arc_easy_local/acc", "lm_eval/gsm8k_local/exact_match[flexible-extract]"}
    assert 0.0 <= rec["metrics"]["lm_eval/arc_easy_local/acc"]["value"] <= 1.0
    assert rec["training"]["trained_tokens"] > 0 and 0 <= rec["training"]["padding_fraction"] < 1
    assert rec["timings"]["train_s"] > 0 and "torch" in rec["versions"]
    assert (ws.results / "tiny" / "random" / "8" / "seed0.lm_eval.jsonl").is_file()
    full = read_json(ws.results / "tiny" / "full" / "60" / "seed0.json")
    assert full["selection"]["size"] == 60

    # The leaderboard comes from results/ alone and shows the plugin next to the baselines.
    board_md = (ws.leaderboards / "tiny" / "LEADERBOARD.md").read_text()
    for row in ("**base**", "**full**", "**random**", "longest", "first_n_plugin"):
        assert row in board_md
    assert rec["protocol_hash"] in board_md

    # One offline wandb run per cell, readable back, with config, summary, artifact and table.
    run = read_offline_run(ws.root / rec["wandb"]["dir"])
    assert run["run"]["id"] == rec["wandb"]["run_id"] and run["run"]["project"] == "selbench-test"
    assert run["run"]["job_type"] == "select-train-eval" and run["run"]["group"].startswith("tiny-refresh-")
    assert run["config"]["selection_hash"] == rec["selection"]["hash"]
    assert run["summary"]["lm_eval/arc_easy_local/acc"] == rec["metrics"]["lm_eval/arc_easy_local/acc"]["value"]
    assert any(a["type"] == "selection" and "selected_ids.json" in a["files"] for a in run["artifacts"])
    assert run["summary"]["selection/sample/_type"] == "table-file"
    assert run["summary"]["selection/sample/nrows"] == 8
    assert any("train/loss" in h for h in run["history"])

    # A second refresh with nothing changed computes nothing and touches no file.
    before = snapshot(ws.root)
    s2 = pipeline.refresh(ws, "tiny", plugins=[str(plugin)])
    assert s2.done == [] and len(s2.skipped) == 5 and snapshot(ws.root) == before

    # The CLI: one cell (already current) and the leaderboard from results/ alone, both changing nothing.
    from typer.testing import CliRunner

    from harness.cli import app

    r = CliRunner().invoke(app, ["run", "--board", "tiny", "--method", "random", "--budget", "8", "--seed", "0",
                                 "--root", str(ws.root), "--plugin", str(plugin)])
    assert r.exit_code == 0 and "random/8/seed0: skipped" in r.output, r.output
    r = CliRunner().invoke(app, ["leaderboard", "--board", "tiny", "--root", str(ws.root)])
    assert r.exit_code == 0 and "5 rows from 5 records; unchanged" in r.output, r.output
    assert snapshot(ws.root) == before

    # Crash after training but before the record: the rerun reuses selection, adapter and evaluation.
    (ws.results / "tiny" / "longest" / "8" / "seed0.json").unlink()
    calls = []
    monkeypatch.setattr(pipeline, "finetune", lambda *a, **k: calls.append("train"))
    from harness import lm_eval_runner
    monkeypatch.setattr(lm_eval_runner, "run_lm_eval", lambda *a, **k: calls.append("eval"))
    s3 = pipeline.refresh(ws, "tiny", plugins=[str(plugin)])
    assert s3.done == ["longest/8/seed0"] and calls == []
    assert read_json(ws.results / "tiny" / "longest" / "8" / "seed0.json")["selection"]["size"] == 8
