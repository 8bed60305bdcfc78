"""`selbench check` / the preflight of refresh and run: every problem of a board listed before any work."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from selbench.cli import app
from selbench.paths import Workspace
from selbench.preflight import preflight

REPO = Path(__file__).resolve().parents[1]


def demo_copy(root: Path, edit=None) -> Workspace:
    """The committed demo board's protocol in a fresh project root, optionally edited."""
    (root / "leaderboards" / "demo").mkdir(parents=True)
    protocol = yaml.safe_load((REPO / "leaderboards" / "demo" / "protocol.yaml").read_text())
    if edit:
        edit(protocol)
    (root / "leaderboards" / "demo" / "protocol.yaml").write_text(yaml.safe_dump(protocol))
    return Workspace(root)


def test_demo_board_passes(tmp_path):
    rep = preflight(demo_copy(tmp_path), "demo")
    assert rep.ok, rep.problems
    text = "\n".join(rep.checked)
    for part in ("pool: 120 rows", "evaluation.lm_eval: 9 tasks", "evaluation.mt_bench: 3 questions",
                 "evaluation.alpaca_eval: 4 instructions", "evaluation.pairwise: 5 prompts", "judge: local", "disk:"):
        assert part in text


def test_missing_key_bad_parameter_and_missing_data_are_all_listed(tmp_path, monkeypatch):
    def edit(p):
        p["judge"] = {"kind": "openai", "model": "gpt-4o", "base_url": "https://judge.example.invalid/v1",
                      "api_key_env": "SELBENCH_TEST_UNSET_KEY"}
        p["second_judge"] = {"kind": "openai", "model": "gpt-4o-mini", "base_url": "https://j2.example.invalid/v1",
                             "api_key_env": "SELBENCH_TEST_UNSET_KEY2"}
        p["methods"].append({"name": "perplexity", "label": "ppl2", "params": {"variant": 3}})
        p["methods"].append({"name": "random", "label": "random2", "params": {"temperature": 1}})

    monkeypatch.delenv("SELBENCH_TEST_UNSET_KEY", raising=False)
    monkeypatch.delenv("SELBENCH_TEST_UNSET_KEY2", raising=False)
    empty = tmp_path / "no-data"
    empty.mkdir()
    monkeypatch.setenv("SELBENCH_DATA_DIR", str(empty))
    rep = preflight(demo_copy(tmp_path / "proj", edit), "demo")
    problems = [str(p) for p in rep.problems]
    joined = "\n".join(problems)
    assert "judge.api_key_env: $SELBENCH_TEST_UNSET_KEY is not set" in joined
    assert "second_judge.api_key_env: $SELBENCH_TEST_UNSET_KEY2 is not set" in joined
    assert any("(ppl2)" in p and "variant" in p for p in problems)
    assert any("(random2)" in p and "temperature" in p for p in problems)
    assert any(p.startswith("pool:") for p in problems)
    for ev in ("lm_eval", "mt_bench", "alpaca_eval", "pairwise"):  # each evaluator's data files are missing
        assert any(f"evaluation.{ev}:" in p and "SELBENCH_DATA_DIR" in p for p in problems), ev


def test_unreachable_endpoint_and_refused_key(tmp_path, monkeypatch):
    from fake_judge import FakeJudge
    from selbench.judge.server import free_port

    port = free_port()
    ws = demo_copy(tmp_path / "a", lambda p: p.update(judge={"kind": "openai", "model": "m",
                                                              "base_url": f"http://127.0.0.1:{port}/v1"}))
    rep = preflight(ws, "demo")
    assert [p.where for p in rep.problems] == ["judge.base_url"] and "unreachable" in rep.problems[0].what
    with FakeJudge() as fake:
        fake.get_status = 401
        ws = demo_copy(tmp_path / "b", lambda p: p.update(judge={"kind": "openai", "model": "m",
                                                                  "base_url": fake.base_url, "api_key_env": "K"}))
        monkeypatch.setenv("K", "sk-wrong")
        rep = preflight(ws, "demo")
    assert len(rep.problems) == 1 and "refused the API key" in str(rep.problems[0]) and "$K" in str(rep.problems[0])


def test_cli_check_and_refresh_refuse_a_broken_board(tmp_path, monkeypatch):
    ws = demo_copy(tmp_path, lambda p: p["methods"].append({"name": "kcenter", "label": "kc2", "params": {"nope": 3}}))
    runner = CliRunner()
    r = runner.invoke(app, ["check", "--board", "demo", "--root", str(ws.root)])
    assert r.exit_code == 1 and "1 problem" in r.output and "(kc2)" in r.output and "nope" in r.output
    r = runner.invoke(app, ["refresh", "--board", "demo", "--root", str(ws.root)])
    assert r.exit_code == 2 and "preflight failed" in r.output and "nothing was run" in r.output
    assert not (ws.root / "results").exists()
