"""Replay of recorded judgments in the upstream formats, against scores computed by hand."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from selbench.cli import app
from selbench.judge.verdicts import parse_two_scores
from selbench.replay import score_judgments


def cherry_file(path, rows):
    path.write_text(json.dumps({"Meta_Info": {"dataset_name": "vicuna"}, "data": rows}))
    return path


def test_cherry_two_order_reviews(tmp_path):
    # model = Answer1; "scores" judged (model, baseline), "scores_reverse" judged (baseline, model)
    a = cherry_file(tmp_path / "vicuna_reviews_gpt4.json", [
        {"scores": "[8.0, 6.0]", "scores_reverse": "[5.0, 9.0]"},   # both orders prefer the model: win
        {"scores": "[8.0, 8.0]", "scores_reverse": "[6.0, 7.0]"},   # tie then model: win (papers), tie (strict)
        {"scores": "[9.0, 6.0]", "scores_reverse": "[9.0, 6.0]"},   # orders disagree: tie, flip
        {"scores": "[-1, -1]", "review": "Scores:\nAssistant 1: 4\nAssistant 2: 7\nBecause...",
         "scores_reverse": "[8.0, 3.0]"},                          # multi-line review re-parsed: lose
    ])
    b = cherry_file(tmp_path / "koala_reviews_gpt4.json", [
        {"scores": "[-1, -1]", "review": "I cannot decide.", "scores_reverse": "[3.0, 4.0]"},  # error, not a tie
        {"scores": "[7.0, 7.0]", "scores_reverse": "[7.0, 7.0]"},   # tie
    ])
    out = score_judgments([a, b])
    r = out["result"]
    assert out["format"] == "cherry"
    assert (r["win"], r["tie"], r["lose"], r["errors"]) == (2, 2, 1, 1)
    assert r["ws"] == pytest.approx((2 - 1) / 5 + 1)  # 1.2
    assert r["strict"] == {"win": 1, "tie": 3, "lose": 1} and r["ws_strict"] == pytest.approx(1.0)
    assert r["flip_rate"] == pytest.approx(2 / 5)  # rows 2 (0 vs +1) and 3 (+1 vs -1)


def test_vicuna_reviews_one_and_two_orders(tmp_path):
    first = tmp_path / "review_model_vs_gpt35.jsonl"
    second = tmp_path / "review_gpt35_vs_model.jsonl"
    first.write_text("\n".join(json.dumps(r) for r in [
        {"question_id": 1, "text": "8 6\nok", "score": [8, 6]},
        {"question_id": 2, "text": "5 9\nok", "score": [5, 9]},
        {"question_id": 3, "text": "garbled", "score": [-1, -1]}]))
    one = score_judgments([first], "vicuna")["result"]
    assert (one["win"], one["tie"], one["lose"], one["errors"]) == (1, 0, 1, 1)
    assert one["mean_score_model"] == pytest.approx(6.5)
    second.write_text("\n".join(json.dumps(r) for r in [
        {"question_id": 1, "text": "6 8", "score": [6, 8]},   # model (now Assistant 2) preferred again: win
        {"question_id": 2, "text": "7 7", "score": [7, 7]},   # lose + tie = lose
        {"question_id": 3, "text": "9 2", "score": [9, 2]}]))
    two = score_judgments([first, second], "vicuna")["result"]
    assert (two["win"], two["tie"], two["lose"], two["errors"]) == (1, 0, 1, 1) and two["ws"] == pytest.approx(1.0)


def test_fastchat_single_and_pair(tmp_path):
    single = tmp_path / "gpt-4_single.jsonl"
    single.write_text("\n".join(json.dumps(r) for r in [
        {"question_id": 81, "model": "m", "score": 8, "turn": 1, "judgment": "[[8]]"},
        {"question_id": 81, "model": "m", "score": 6, "turn": 2, "judgment": "[[6]]"},
        {"question_id": 82, "model": "m", "score": -1, "turn": 1, "judgment": "no rating"},
        {"question_id": 82, "model": "m", "score": 4, "turn": 2, "judgment": "[[4]]"}]))
    r = score_judgments([single])["result"]["m"]
    assert r == {"score": pytest.approx(6.0), "turn1": 8.0, "turn2": 5.0, "errors": 1}
    pair = tmp_path / "gpt-4_pair.jsonl"
    pair.write_text("\n".join(json.dumps({"question_id": i, "model_1": "m", "model_2": "b", "g1_winner": g1,
                                          "g2_winner": g2, "turn": 1})
                              for i, (g1, g2) in enumerate([("model_1", "model_1"), ("model_1", "tie"),
                                                            ("model_2", "model_2"), ("error", "model_1"),
                                                            ("tie", "tie")])))
    p = score_judgments([pair])["result"]["m vs b"]
    assert (p["win"], p["loss"], p["tie"], p["errors"]) == (1, 1, 2, 1)
    assert p["win_rate_adjusted"] == pytest.approx((1 + 0.5 * 2) / 4)


def test_alpaca_eval_annotations_and_cli(tmp_path):
    ann = tmp_path / "annotations.json"
    rows = [{"instruction": f"i{k}", "output_1": "ref", "output_2": "ours", "generator_1": "gpt4_turbo",
             "generator_2": "ours", "annotator": "x", "preference": p}
            for k, p in enumerate([2.0, 1.0, 2.0, 1.5, None])]
    ann.write_text(json.dumps(rows))
    r = score_judgments([ann])["result"]["ours"]
    assert r["win_rate"] == pytest.approx(100 * (1 + 0 + 1 + 0.5) / 4) and r["n"] == 4 and r["errors"] == 1
    out = CliRunner().invoke(app, ["score-judgments", str(ann)])
    assert out.exit_code == 0 and json.loads(out.output)["result"]["ours"]["win_rate"] == pytest.approx(62.5)
    bad = tmp_path / "x.json"
    bad.write_text(json.dumps([{"foo": 1}]))
    out = CliRunner().invoke(app, ["score-judgments", str(bad)])
    assert out.exit_code == 2 and "cannot tell the judgment format" in " ".join(out.output.split())


def test_review_parser_multi_line_forms_never_tie():
    assert parse_two_scores("Scores:\nAssistant 1: 10\nAssistant 2: 6\n\nExplanation") == (10.0, 6.0)
    assert parse_two_scores("Assistant 1: 9/10\nAssistant 2: 7/10") == (9.0, 7.0)
    assert parse_two_scores("Assistant 1 was better than Assistant 2: 5") is None
    assert parse_two_scores("8 6\nmore") == (8.0, 6.0)
