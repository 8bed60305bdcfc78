"""`selbench plan`: the counts behind a refresh's estimate, from the protocol and the data."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from selbench.cli import app
from selbench.paths import Workspace
from selbench.plan import Throughputs, plan_board

REPO = Path(__file__).resolve().parents[1]


def test_gpu_board_estimate():
    from selbench import registry
    from selbench.protocol import load_protocol

    protocol = load_protocol(REPO / "leaderboards" / "cherry-7b" / "protocol.yaml")
    for m in protocol.methods:
        registry.validate_params(registry.get_method(m.name), m.params, m.row)
    p = plan_board(Workspace(REPO), "cherry-7b", pool_size=52002, example_tokens=200)
    # 7 rows x 3 budgets x 3 seeds + full x 3 seeds
    assert p.cells == 7 * 3 * 3 + 3 and p.finetune == "full"
    budgets = [2600, 5200, 7800]  # 5/10/15% of 52,002
    assert p.train_tokens == pytest.approx((7 * sum(budgets) + 52002) * 3 * 200 * 3)  # x seeds x tokens x epochs
    n_pairwise = 80 + 180 + 218 + 252 + 300
    assert p.judge_calls == (80 * 2 + 805 + n_pairwise * 2 * 2) * (p.cells + 1)
    assert p.gpu_hours["train"] == pytest.approx(p.train_tokens / 3000 / 3600)
    assert p.judge_usd > 1000 and not p.local_judge
    cheaper = plan_board(Workspace(REPO), "cherry-7b", Throughputs(judge_usd_per_m_input=2.5,
                                                                   judge_usd_per_m_output=10.0), 52002, 200)
    assert cheaper.judge_usd < p.judge_usd / 5


def test_pool_measured_when_it_loads_and_cli(tmp_path, tiny_model_dir):
    from test_end_to_end import make_workspace

    ws = make_workspace(tmp_path, tiny_model_dir, [{"name": "random"}, {"name": "longest"}])
    p = plan_board(ws, "tiny")
    assert p.cells == 2 and "60 trainable examples" in " ".join(p.notes) and p.judge_calls == 0
    r = CliRunner().invoke(app, ["plan", "--board", "tiny", "--root", str(ws.root)])
    assert r.exit_code == 0 and "GPU-h" in r.output and "2 cells" in r.output
    assert "0 of 2 cells current, base model to run; a refresh runs 2 cell(s) and the base model" in r.output

    from selbench.pipeline import Board
    from selbench.record import BASE_ROW, record_path
    from selbench.cache import stable_hash

    board = Board(ws, "tiny")  # a current record (the right inputs hash) is a resume point; a stale one is not
    done, stale = board.cells()
    board.cell_path(done).parent.mkdir(parents=True)
    board.cell_path(done).write_text(json.dumps({"inputs_hash": stable_hash(board.cell_inputs(done)),
                                                 "timings": {"select_s": 5.0, "train_s": 50.0, "eval_s": 70.0}}))
    board.cell_path(stale).parent.mkdir(parents=True, exist_ok=True)
    board.cell_path(stale).write_text(json.dumps({"inputs_hash": "0" * 16}))
    base = record_path(ws.results, "tiny", BASE_ROW, None, 0)
    base.parent.mkdir(parents=True)
    base.write_text(json.dumps({"inputs_hash": stable_hash(board.base_inputs())}))
    assert board.pending() == ([stale], True)
    r = CliRunner().invoke(app, ["plan", "--board", "tiny", "--root", str(ws.root)])
    assert r.exit_code == 0, r.output
    assert "1 of 2 cells current, base model current; a refresh runs 1 cell(s)" in r.output
    # the pace the records measured: train + evaluate per cell, times the cells left (a new row's selection unknown)
    assert ("measured train + evaluate took a median of 2.0 min per cell (by budget 8: 2.0; 1 records, on the "
            "machines that wrote them); the 1 cell(s) left: ~2 min, plus selection for 1 row(s) with no record yet"
            ) in " ".join(r.output.split())
    r = CliRunner().invoke(app, ["plan", "--board", "cherry-7b", "--root", str(REPO)], env={"HF_HUB_OFFLINE": "1"})
    assert r.exit_code == 2 and "--pool-size" in r.output
