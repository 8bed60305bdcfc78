"""Length-controlled AlpacaEval: alpaca_eval's own GLM when its df_gamed.csv is given as a local file (or reachable
on the hub), else a column named ``lc_win_rate_approx``. The df_gamed.csv here is synthetic, in the hub file's
columns (``index, instruction_difficulty, model, preference, std_delta_len, not_gamed_baseline``): the hub is not
reachable from the tests."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from selbench.judge.alpaca_eval import AlpacaEvalSettings, _length_controlled, alpaca_eval_lc
from selbench.leaderboard import headline_columns
from selbench.protocol import Protocol


class Ctx:
    data_dir = None


N = 60


def annotations(seed=0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    len_ref = rng.integers(200, 2000, N)
    len_model = rng.integers(50, 600, N)  # mostly shorter than the reference, as a small model's answers are
    p = 1 / (1 + np.exp(-(-1.0 + 0.002 * (len_model - len_ref))))
    pref = np.where(rng.random(N) < p, 2.0, 1.0)
    return pd.DataFrame({"instruction": [f"q{i}" for i in range(N)], "output_1": ["r" * n for n in len_ref],
                         "output_2": ["m" * n for n in len_model], "generator_1": "gpt4_1106_preview",
                         "generator_2": "model", "annotator": "judge", "preference": pref})


def gamed_csv(path, difficulty, seed=1):
    rng = np.random.default_rng(seed)
    rows = []
    for model, sign in (("gpt4_verbose", 1.0), ("gpt4_concise", -1.0)):
        d = sign * np.abs(rng.normal(1.0, 0.5, N))
        pref = 1 / (1 + np.exp(-(0.8 * np.tanh(d) + difficulty)))
        rows.append(pd.DataFrame({"index": np.arange(N), "instruction_difficulty": difficulty, "model": model,
                                  "preference": pref, "std_delta_len": d, "not_gamed_baseline": False}))
    pd.concat(rows).to_csv(path, index=False)
    return path


def test_local_df_gamed_file_runs_alpaca_evals_glm(tmp_path):
    ok = annotations()
    diff = np.random.default_rng(2).normal(0, 1, N)
    f1 = gamed_csv(tmp_path / "df_gamed.csv", diff)
    name, value, se, info = _length_controlled(ok, AlpacaEvalSettings(lc_gamed_file=str(f1)), Ctx())
    assert name == "lc_win_rate" and info["lc_method"] == "alpaca_eval_glm" and len(info["lc_gamed_sha256"]) == 64
    assert 0 < value < 100 and se is not None and info["lc_n"] == N
    assert value == pytest.approx(alpaca_eval_lc(ok, f1)[0])
    # the file is what the GLM reads: other instruction difficulties give another figure
    f2 = gamed_csv(tmp_path / "df_gamed_2.csv", diff[::-1].copy())
    assert abs(alpaca_eval_lc(ok, f2)[0] - value) > 0.01
    # each annotation's difficulty is looked up by its position (the index), so a subset keeps its rows' own
    sub = ok.iloc[10:]
    moved = sub.reset_index(drop=True)
    assert abs(alpaca_eval_lc(sub, f1)[0] - alpaca_eval_lc(moved, f1)[0]) > 0.01


def test_without_the_file_offline_the_column_is_the_approximation(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    import huggingface_hub.constants as hc

    monkeypatch.setattr(hc, "HF_HUB_OFFLINE", True)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))  # no cached copy
    name, value, se, info = _length_controlled(annotations(), AlpacaEvalSettings(), Ctx())
    assert name == "lc_win_rate_approx" and info["lc_method"] == "length_logistic_fallback"
    assert info["lc_unavailable"] and 0 < value < 100
    with pytest.raises(FileNotFoundError, match="lc_gamed_file"):
        _length_controlled(annotations(), AlpacaEvalSettings(lc_gamed_file=str(tmp_path / "nope.csv")), Ctx())


def test_an_unreachable_hub_is_asked_once_per_process(monkeypatch):
    """Offline, each hub attempt spends ~30 s in huggingface_hub's retries: the next cells fail over at once."""
    import huggingface_hub

    calls = []

    def unreachable(**kw):
        calls.append(kw["filename"])
        raise huggingface_hub.errors.LocalEntryNotFoundError("no network")

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", unreachable)
    from selbench import hub

    monkeypatch.setattr(hub, "_FAILED", {})
    for _ in range(3):
        name, value, se, info = _length_controlled(annotations(), AlpacaEvalSettings(), Ctx())
        assert name == "lc_win_rate_approx" and "no network" in info["lc_unavailable"]
    assert calls == ["df_gamed.csv"]


def test_leaderboard_shows_the_lc_column_that_was_produced():
    proto = Protocol.model_validate({
        "name": "t", "base_model": {"path": "x"}, "pool": {"path": "p.json"}, "budgets": [1], "seeds": [0],
        "evaluation": {"alpaca_eval": {}}, "methods": [{"name": "random"}]})
    assert headline_columns(["alpaca_eval/win_rate", "alpaca_eval/lc_win_rate_approx"], proto) == \
        ["alpaca_eval/win_rate", "alpaca_eval/lc_win_rate_approx"]
    # a judge that produced nothing still shows all its headline columns (empty), so the failure is visible
    assert {"alpaca_eval/win_rate", "alpaca_eval/lc_win_rate", "alpaca_eval/lc_win_rate_approx"} <= \
        set(headline_columns([], proto))

