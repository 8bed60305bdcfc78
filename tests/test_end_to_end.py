"""End to end on a tiny random llama: refresh -> records -> leaderboard -> offline wandb runs; resume; plugins."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import pytest
import yaml

from conftest import alpaca_rows
from selbench import pipeline
from selbench.cache import read_json
from selbench.paths import Workspace
from selbench.tracking import read_offline_run, run_path

PLUGIN = textwrap.dedent('''
    """A third-party method living outside the repository."""
    from selbench.registry import register_method

    @register_method("first_n_plugin", family="indicator-based", aspect="quality",
                     description="The first N examples of the pool.", citation="test plugin")
    def first_n(pool, budget, ctx):
        return pool.ids[:budget]
''')


def make_workspace(root: Path, tiny_model_dir: Path, methods: list[dict], evaluation: dict | None = None,
                   judge: dict | None = None) -> Workspace:
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
        "evaluation": evaluation or {"lm_eval": {"tasks": ["arc_easy_local", "gsm8k_local"], "limit": 3,
                                                 "batch_size": 4, "max_gen_toks": 8, "bootstrap_iters": 0}},
        **({"judge": judge} if judge else {}),
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
    # Progress after each job run: how many of the refresh's jobs are done and how long the rest will take.
    assert len(s.progress) == 5 and s.progress[0].startswith("tiny: 1 of 5 jobs run, ")
    assert " for the 4 left" in s.progress[0]
    assert s.progress[-1].startswith("tiny: 5 of 5 jobs run, ") and "left" not in s.progress[-1]

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
    run = read_offline_run(run_path(rec["wandb"], ws.wandb_dir))
    assert run["run"]["id"] == rec["wandb"]["run_id"] and run["run"]["project"] == "selbench-test"
    assert run["run"]["job_type"] == "select-train-eval" and run["run"]["group"].startswith("tiny-refresh-")
    assert run["config"]["selection_hash"] == rec["selection"]["hash"]
    assert run["summary"]["lm_eval/arc_easy_local/acc"] == rec["metrics"]["lm_eval/arc_easy_local/acc"]["value"]
    assert any(a["type"] == "selection" and "selected_ids.json" in a["files"] for a in run["artifacts"])
    assert run["summary"]["selection/sample/_type"] == "table-file"
    assert run["summary"]["selection/sample/nrows"] == 8
    assert any("train/loss" in h for h in run["history"])
    # One leaderboard summary run per refresh, in the refresh's group, with the leaderboard's tables and page.
    board_run = read_offline_run(run_path(s.leaderboard["wandb"], ws.wandb_dir))
    assert board_run["run"]["job_type"] == "leaderboard" and board_run["run"]["group"] == run["run"]["group"]
    assert board_run["summary"]["leaderboard/table/nrows"] == 5
    assert (ws.leaderboards / "tiny" / "leaderboard.html").is_file()

    # A second refresh with nothing changed computes nothing and touches no file.
    before = snapshot(ws.root)
    s2 = pipeline.refresh(ws, "tiny", plugins=[str(plugin)])
    assert s2.done == [] and len(s2.skipped) == 5 and snapshot(ws.root) == before

    # The CLI: one cell (already current) and the leaderboard from results/ alone, both changing nothing.
    from typer.testing import CliRunner

    from selbench.cli import app

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
    from selbench import lm_eval_runner
    monkeypatch.setattr(lm_eval_runner, "run_lm_eval", lambda *a, **k: calls.append("eval"))
    s3 = pipeline.refresh(ws, "tiny", plugins=[str(plugin)])
    assert s3.done == ["longest/8/seed0"] and calls == []
    assert len(s3.progress) == 1 and s3.progress[0].startswith("tiny: 1 of 1 jobs run, ")
    assert read_json(ws.results / "tiny" / "longest" / "8" / "seed0.json")["selection"]["size"] == 8


def test_loss_methods_in_one_board_compute_each_signal_once(tmp_path, tiny_model_dir, monkeypatch):
    """ifd, superfilter and perplexity in one board: every distinct loss signal is computed once, then reused,
    and each selection records what it computed and what it reused."""
    from selbench.signals import SignalCache

    ws = make_workspace(tmp_path / "proj", tiny_model_dir,
                        [{"name": "ifd"}, {"name": "superfilter"}, {"name": "perplexity"},
                         {"name": "perplexity", "label": "perplexity_top", "params": {"variant": "top"}}])
    monkeypatch.setenv("SELBENCH_CACHE_DIR", str(tmp_path / "cache"))
    computed = []
    orig = SignalCache._compute_pair_losses
    monkeypatch.setattr(SignalCache, "_compute_pair_losses",
                        lambda self, h, pairs, truncation, desc, *a, **k: computed.append(desc)
                        or orig(self, h, pairs, truncation, desc, *a, **k))
    board = pipeline.Board(ws, "tiny")
    cost = {}
    for cell in board.cells():
        selection, meta = board.select(cell)
        assert len(selection.ids) == 8
        cost[cell.row] = meta["signals"]
    # ifd: losses with and without the instruction (chat template); superfilter: the same pair without a template
    # (its reference's 'none' prompt); both perplexity rows reuse ifd's conditioned losses.
    assert len(computed) == 4, computed
    assert len(cost["ifd"]["computed"]) == 2 and cost["ifd"]["reused"] == []
    assert len(cost["superfilter"]["computed"]) == 2 and cost["superfilter"]["reused"] == []
    for row in ("perplexity", "perplexity_top"):
        assert cost[row]["computed"] == [] and len(cost[row]["reused"]) == 1
        assert cost[row]["reused"][0] in cost["ifd"]["computed"]
    # a selection served from the cache still reports what it cost when it was computed
    cell = next(c for c in board.cells() if c.row == "ifd")
    _, meta = board.select(cell)
    assert meta["cached"] and meta["signals"] == cost["ifd"] and meta["cpu_s"] > 0 and len(computed) == 4


@pytest.mark.slow
def test_judged_refresh_end_to_end(tmp_path, tiny_model_dir, monkeypatch):
    """A refresh with MT-Bench, AlpacaEval and the pairwise win score against an OpenAI-compatible judge: judged
    metrics and error counts reach the records, the side files, the leaderboard and the wandb runs."""
    from fake_judge import FakeJudge

    evaluation = {"mt_bench": {"question_ids": [81, 101], "turns": [1, 2], "max_new_tokens": 6},
                  "alpaca_eval": {"max_instances": 2, "max_new_tokens": 6},
                  "pairwise": {"per_set": 1, "max_new_tokens": 6}}
    monkeypatch.setenv("SELBENCH_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("FAKE_JUDGE_KEY", "sk-test-not-to-be-stored")
    with FakeJudge(garbage_if=("Hawaii",)) as fake:  # MT-Bench question 81 is about Hawaii: its verdicts fail
        judge = {"kind": "openai", "model": "fake-judge", "base_url": fake.base_url, "api_key_env": "FAKE_JUDGE_KEY",
                 "max_parse_retries": 1}
        ws = make_workspace(tmp_path / "proj", tiny_model_dir, [{"name": "random"}, {"name": "full"},
                                                                 {"name": "longest"}], evaluation, judge)
        s = pipeline.refresh(ws, "tiny")
        assert not s.failed, s.failed
        # A new version of one evaluator makes every record stale; only that evaluator runs again, and its
        # judgments come from the per-judgment cache.
        import dataclasses

        from selbench import evaluate

        n_requests = len(fake.requests)
        monkeypatch.setitem(evaluate.EVALUATORS, "mt_bench",
                            dataclasses.replace(evaluate.EVALUATORS["mt_bench"], version="test-bump"))
        s2 = pipeline.refresh(ws, "tiny")
        assert sorted(s2.done) == sorted(s.done) and len(fake.requests) == n_requests
    rec = read_json(ws.results / "tiny" / "longest" / "8" / "seed0.json")
    m = rec["metrics"]
    assert not rec["evaluation"]["mt_bench"]["cached"] and rec["evaluation"]["pairwise"]["cached"]
    assert 1 <= m["mt_bench/score"]["value"] <= 10
    assert rec["evaluation"]["mt_bench"]["counts"]["errors"] == 2  # both turns of question 81, never a tie
    assert rec["evaluation"]["mt_bench"]["counts"]["judge/parse_retries"] == 2
    # the fake judge always answers [[2]]; alpaca_eval shows each pair in its own seeded random order
    assert m["alpaca_eval/win_rate"]["value"] in (0.0, 50.0, 100.0)
    assert rec["evaluation"]["alpaca_eval"]["counts"]["annotated"] == 2
    assert rec["evaluation"]["alpaca_eval"]["info"]["lc_method"] == "length_logistic_fallback"
    # the fake judge always prefers the answer shown first: each pair wins once and loses once -> tie, a flip
    for ref in ("full", "random"):
        assert m[f"pairwise/ws_vs_{ref}"]["value"] == 1.0 and m[f"pairwise/flip_rate_vs_{ref}"]["value"] == 1.0
        assert rec["evaluation"]["pairwise"]["counts"][f"vs_{ref}/tie"] == 5
    rand = read_json(ws.results / "tiny" / "random" / "8" / "seed0.json")
    assert "pairwise/ws_vs_full" in rand["metrics"] and "pairwise/ws_vs_random" not in rand["metrics"]
    assert (ws.results / "tiny" / "longest" / "8" / "seed0.pairwise.jsonl").is_file()

    md = (ws.leaderboards / "tiny" / "LEADERBOARD.md").read_text()
    header = next(line for line in md.splitlines() if line.startswith("| method"))
    for col in ("mt_bench/score", "alpaca_eval/win_rate", "alpaca_eval/lc_win_rate_approx", "pairwise/ws_vs_full",
                "pairwise/ws_vs_random", "pairwise/flip_rate_vs_full", "judge errors"):
        assert col in header
    longest = next(line for line in md.splitlines() if line.startswith("| longest"))
    assert "| 2/16 |" in longest  # 2 MT-Bench errors of 4 + 2 + 10 judged items (4 turns, 2 AE, 2x5 pairwise)

    run = read_offline_run(run_path(rec["wandb"], ws.wandb_dir))
    assert run["summary"]["pairwise/ws_vs_full"] == 1.0 and "mt_bench/score" in run["summary"]
    for name, rows in (("mt_bench", 4), ("alpaca_eval", 2), ("pairwise", 10)):  # the judgments, as wandb tables
        assert run["summary"][f"{name}/judgments/_type"] == "table-file"
        assert run["summary"][f"{name}/judgments/nrows"] == rows
    everything = "".join(p.read_text(errors="replace") for d in (ws.results, ws.root / ".cache", tmp_path / "cache")
                         for p in d.rglob("*") if p.is_file() and p.suffix in (".json", ".jsonl", ".yaml", ".wandb"))
    assert "sk-test-not-to-be-stored" not in everything


@pytest.mark.slow
def test_second_judge_rejudges_the_same_answers(tmp_path, tiny_model_dir, monkeypatch):
    """``second_judge`` in the protocol: every judged item is judged again by it on the same (cached) answers; the
    board's metrics stay the first judge's, the record keeps the second's metrics and per-item verdicts, and the
    leaderboard header gives their agreement."""
    from fake_judge import FakeJudge

    monkeypatch.setenv("SELBENCH_CACHE_DIR", str(tmp_path / "cache"))
    evaluation = {"mt_bench": {"question_ids": [81, 101, 111], "turns": [1, 2], "max_new_tokens": 6}}
    with FakeJudge() as first, FakeJudge(garbage_if=("Hawaii",)) as second:
        ws = make_workspace(tmp_path / "proj", tiny_model_dir, [{"name": "random"}], evaluation,
                            {"kind": "openai", "model": "fake-judge", "base_url": first.base_url})
        path = ws.leaderboards / "tiny" / "protocol.yaml"
        protocol = yaml.safe_load(path.read_text())
        hash_without = pipeline.Board(ws, "tiny").protocol.hash
        protocol["second_judge"] = {"kind": "openai", "model": "fake-judge", "base_url": second.base_url,
                                    "max_parse_retries": 0}
        path.write_text(yaml.safe_dump(protocol))
        assert pipeline.Board(ws, "tiny").protocol.hash != hash_without  # a second judge re-runs the cells
        s = pipeline.refresh(ws, "tiny")
        assert not s.failed, s.failed
        n_first, n_second = len(first.requests), len(second.requests)
        # 3 questions x 2 turns for the base row and the random cell, less judgments cached across the two (the
        # tiny model may answer both alike): each judge is asked the same
        assert n_first == n_second and 6 <= n_first <= 12
    rec = read_json(ws.results / "tiny" / "random" / "8" / "seed0.json")
    info = rec["evaluation"]["mt_bench"]["second_judge"]
    assert info["judge"]["base_url"] == second.base_url and info["counts"]["errors"] == 2  # question 81's turns
    assert rec["evaluation"]["mt_bench"]["counts"]["errors"] == 0  # the board's metric is the first judge's
    rows1 = [json.loads(x) for x in (ws.results / "tiny" / "random" / "8" / "seed0.mt_bench.jsonl").open()]
    rows2 = [json.loads(x) for x in (ws.results / "tiny" / "random" / "8" / "seed0.mt_bench.judge2.jsonl").open()]
    assert [r["answer"] for r in rows1] == [r["answer"] for r in rows2]  # the same answers, judged twice
    assert all("scores" not in r for r in rows2) and sum(r["score"] is None for r in rows2) == 2
    md = (ws.leaderboards / "tiny" / "LEADERBOARD.md").read_text()
    line = next(x for x in md.splitlines() if x.startswith("- `mt_bench/score`"))
    # the two fake judges rate alike wherever both parse: rank agreement 1 on the 4 items per cell both parsed
    assert "agreement with the second judge Spearman ρ +1.00" in line and "(n=8)" in line, line
    assert "second-judge agreement" in (ws.leaderboards / "tiny" / "leaderboard.html").read_text()
