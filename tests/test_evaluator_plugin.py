"""An evaluator from an installed package (entry-point group ``selbench.evaluators``) runs on a board without any
edit to selbench's files, its settings are validated when the board loads, and its headline reaches the board."""

from __future__ import annotations

import sys
import textwrap

import pytest

from selbench import evaluate, pipeline
from test_end_to_end import make_workspace

PLUGIN = textwrap.dedent('''
    """A third-party evaluator: words per answer on a few fixed prompts."""
    from pydantic import BaseModel, ConfigDict

    from selbench.evaluate import EvalResult, Metric, register_evaluator
    from selbench.generate import Decoding, generate

    PROMPTS = ["Name a colour.", "Say hello.", "Count to three.", "Name a fruit."]


    class Settings(BaseModel):
        model_config = ConfigDict(extra="forbid")
        max_new_tokens: int = 6


    @register_evaluator("answer_words", settings=Settings, headline=("words",))
    def answer_words(model, spec, ctx):
        s = Settings.model_validate(spec or {})
        answers = generate(model, [[p] for p in PROMPTS], Decoding(max_new_tokens=s.max_new_tokens), ctx.cache)
        rows = [{"item": f"p{i}", "scores": {"words": float(len(a[0].split()))}, "answer": a[0]}
                for i, a in enumerate(answers)]
        mean = sum(r["scores"]["words"] for r in rows) / len(rows)
        return EvalResult({"words": Metric(mean)}, rows, {"prompts": len(rows)})
''')


@pytest.fixture
def installed_plugin(tmp_path, monkeypatch):
    """A package installed the way pip leaves one: the module plus a dist-info folder with its entry point."""
    site = tmp_path / "site"
    (site / "sb_answer_words").mkdir(parents=True)
    (site / "sb_answer_words" / "__init__.py").write_text(PLUGIN)
    info = site / "sb_answer_words-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: sb-answer-words\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text("[selbench.evaluators]\nanswer_words = sb_answer_words\n")
    monkeypatch.syspath_prepend(str(site))
    monkeypatch.setattr(evaluate, "_LOADED", False)
    monkeypatch.setattr(evaluate, "EVALUATORS", dict(evaluate.EVALUATORS))  # restored afterwards
    yield
    sys.modules.pop("sb_answer_words", None)


@pytest.mark.slow
def test_entry_point_evaluator_runs_on_a_board(tmp_path, tiny_model_dir, installed_plugin):
    ws = make_workspace(tmp_path, tiny_model_dir, [{"name": "random"}, {"name": "longest"}],
                        evaluation={"answer_words": {"max_new_tokens": 5}})
    s = pipeline.refresh(ws, "tiny")
    assert not s.failed and len(s.done) == 3, s.failed
    table = s.leaderboard["table"].set_index("method")
    assert "answer_words/words" in table and "answer_words/words:ci_low" in table
    assert "answer_words/words:vs_random" in table  # paired on the plugin's item IDs
    md = (ws.root / "leaderboards" / "tiny" / "LEADERBOARD.md").read_text()
    assert "answer_words/words" in md


def test_evaluator_settings_and_names_fail_when_the_board_loads(tmp_path, tiny_model_dir, installed_plugin):
    ws = make_workspace(tmp_path / "a", tiny_model_dir, [{"name": "random"}],
                        evaluation={"answer_words": {"max_new_tokns": 5}})
    with pytest.raises(ValueError, match=r"evaluation\.answer_words\.max_new_tokns"):
        pipeline.Board(ws, "tiny")
    ws = make_workspace(tmp_path / "b", tiny_model_dir, [{"name": "random"}], evaluation={"answer_wrds": {}})
    with pytest.raises(ValueError, match="answer_wrds names no known evaluator"):
        pipeline.Board(ws, "tiny")
