"""Faults during a refresh: a judge that is down fails the evaluation loudly, records nothing judged, and the next
refresh asks only what is missing; no secret reaches any file; `--force --methods X` leaves the base row alone."""

from __future__ import annotations

import json

import pytest

from selbench import pipeline
from selbench.cache import read_json

from fake_judge import FakeJudge
from test_end_to_end import make_workspace

CANARY = "sk-canary-0000-MUST-NOT-LEAK"


@pytest.mark.slow
def test_down_judge_fails_loudly_then_resumes_only_whats_missing(tmp_path, tiny_model_dir, monkeypatch, caplog):
    monkeypatch.setenv("SELBENCH_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("CANARY_KEY", CANARY)
    evaluation = {"mt_bench": {"question_ids": [81, 101], "turns": [1], "max_new_tokens": 6}}
    with FakeJudge() as fake:
        judge = {"kind": "openai", "model": "fake-judge", "base_url": fake.base_url, "api_key_env": "CANARY_KEY",
                 "max_retries": 1}
        ws = make_workspace(tmp_path / "proj", tiny_model_dir, [{"name": "random"}, {"name": "longest"}],
                            evaluation, judge)
        fake.faults.extend([None])  # the base model's first judgment is answered, then the judge goes down
        fake.always = "500"
        s = pipeline.refresh(ws, "tiny")
        assert list(s.failed) == ["base"] and fake.base_url in s.failed["base"] and "HTTP 500" in s.failed["base"]
        assert s.stopped and "retries what is missing" in s.stopped
        assert not list(ws.results.rglob("*.json"))  # no record, so nothing judged is "current"
        n_first = len(fake.requests)
        assert n_first == 3  # one answer, one failed request and its retry; nothing else was asked

        fake.always = None
        s2 = pipeline.refresh(ws, "tiny")
        assert not s2.failed and s2.done == ["base", "random/8/seed0", "longest/8/seed0"]
        # only what was missing is asked: never the judgment answered before the outage (nor one twice; the tiny
        # models' answers may coincide, and then their judgments are one cached judgment)
        asked = [json.dumps(r["messages"]) for r in fake.requests]
        assert asked[0] not in asked[n_first:] and len(set(asked[n_first:])) == len(asked[n_first:]) >= 1
        assert all(h == f"Bearer {CANARY}" for h in fake.auth_headers if h)
    base = read_json(ws.results / "tiny" / "base" / "seed0.json")
    assert base["evaluation"]["mt_bench"]["counts"]["judge/cached"] == 1
    assert base["evaluation"]["mt_bench"]["counts"]["errors"] == 0

    # --force --methods X recomputes X's cells and leaves the base record (and the other rows) untouched
    before = {p: p.stat().st_mtime_ns for p in ws.results.rglob("*.json")}
    s3 = pipeline.refresh(ws, "tiny", rows=["longest"], force=True)
    after = {p: p.stat().st_mtime_ns for p in ws.results.rglob("*.json")}
    changed = sorted(str(p.relative_to(ws.results)) for p in after if after[p] != before[p])
    assert changed == ["tiny/longest/8/seed0.json"] and s3.skipped == ["base"]

    # the key never reaches results, leaderboards, caches (wandb runs included) or the log
    files = [p for d in (ws.results, ws.leaderboards, tmp_path / "cache") for p in d.rglob("*") if p.is_file()]
    assert any("wandb" in str(p) for p in files)
    assert not [p for p in files if CANARY.encode() in p.read_bytes()]
    assert CANARY not in caplog.text
