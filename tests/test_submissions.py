"""Rows run without editing a protocol: an ad hoc plugin method with parameters, and an `ids` submission."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from selbench.cache import read_json, stable_hash
from selbench.cli import app
from selbench.data import load_pool
from selbench.protocol import PoolSpec
from test_end_to_end import make_workspace

PLUGIN = '''
from selbench.registry import register_method


@register_method("every_kth", family="small-model", aspect="diversity", description="Every k-th example.",
                 citation="test plugin")
def every_kth(pool, budget, ctx, k: int = 2):
    return pool.ids[::k][:budget]
'''

def flat(text: str) -> str:
    return " ".join(text.split())  # rich wraps long error lines


EVAL = {"ref_likelihood": {"sets": ["mt_bench"], "per_set": 3, "max_len": 64}}


@pytest.mark.slow
def test_ad_hoc_plugin_row_and_ids_submission_leave_the_protocol_untouched(tmp_path, tiny_model_dir):
    ws = make_workspace(tmp_path / "ws", tiny_model_dir, [{"name": "random"}], evaluation=EVAL)
    protocol_file = ws.protocol_path("tiny")
    before = protocol_file.read_bytes()
    plugin = tmp_path / "outside" / "every_kth.py"
    plugin.parent.mkdir()
    plugin.write_text(PLUGIN)
    runner = CliRunner()
    common = ["--board", "tiny", "--root", str(ws.root)]

    r = runner.invoke(app, ["run", *common, "--method", "every_kth", "--plugin", str(plugin), "--param", "k=3"])
    assert r.exit_code == 0, r.output
    rec = read_json(ws.results / "tiny" / "every_kth" / "8" / "seed0.json")
    assert rec["method"]["ad_hoc"] is True and rec["method"]["params"] == {"k": 3}
    assert protocol_file.read_bytes() == before

    r = runner.invoke(app, ["run", *common, "--method", "every_kth", "--plugin", str(plugin), "--param", "k=x"])
    assert r.exit_code == 2 and "parameter 'k' must be int" in flat(r.output), r.output
    r = runner.invoke(app, ["run", *common, "--method", "random", "--param", "nope=1"])
    assert r.exit_code == 2 and "has no parameter 'nope'" in flat(r.output), r.output

    # A submission: row indices of the pool file for budget 8, from code the harness never sees.
    pool = load_pool(PoolSpec(path=str(ws.root / "pool.json"), format="alpaca"))
    submission = tmp_path / "team_a.json"
    submission.write_text(json.dumps({"8": [3, 5, 7, 11, 13, 17, 19, 23]}))
    r = runner.invoke(app, ["run", *common, "--method", "ids", "--label", "team_a", "--param",
                            f"file={submission}"])
    assert r.exit_code == 0, r.output
    rec = read_json(ws.results / "tiny" / "team_a" / "8" / "seed0.json")
    assert rec["method"]["name"] == "ids" and rec["method"]["ad_hoc"]
    assert any("sha256" in n for n in rec["selection"]["notes"])
    expected = [pool.examples[i].id for i in (3, 5, 7, 11, 13, 17, 19, 23)]
    assert rec["selection"]["hash"] == stable_hash(sorted(expected))
    # Editing the submission makes the cell stale; a bad row index names itself.
    submission.write_text(json.dumps({"8": [0, 1, 2, 3, 4, 5, 6, 999]}))
    r = runner.invoke(app, ["run", *common, "--method", "ids", "--label", "team_a", "--param",
                            f"file={submission}"])
    assert r.exit_code == 2 and "row index 999 is not in the board's pool" in flat(r.output), r.output
    assert protocol_file.read_bytes() == before
