"""Verdict parsing and the two-order combination rules."""

from __future__ import annotations

import math

import pytest

from selbench.judge.verdicts import (Tally, combine_strict, combine_sum, judge_pair, pair_v2_sign, parse_pair_v2,
                                    parse_rating, parse_two_scores, rating_or_none, scores_sign, win_score)


@pytest.mark.parametrize("text,expected", [
    ("Rating: [[7]]", 7.0), ("[[8.5]] is my rating", 8.5), ("Rating: [3]", 3.0), ("[[10]] then [[2]]", 10.0),
    ("Rating: 7", -1.0), ("", -1.0), (None, -1.0), ("[[seven]]", -1.0),
])
def test_parse_rating(text, expected):
    assert parse_rating(text) == expected
    assert rating_or_none(text) == (None if expected < 0 else expected)


@pytest.mark.parametrize("text,expected", [
    ("blah [[A]]", "A"), ("[[B]]", "B"), ("[[C]]", "tie"), ("[[A]] or [[B]]", "A"), ("[[B]] ... [[A]]", "A"),
    ("A is better", "error"), ("[A]", "error"), ("", "error"), (None, "error"),
])
def test_parse_pair_v2(text, expected):
    assert parse_pair_v2(text) == expected


@pytest.mark.parametrize("text,expected", [
    ("8 6\nbecause", (8.0, 6.0)), ("8, 6", (8.0, 6.0)), ("  7.5 7.5  \n", (7.5, 7.5)), ("10,9\nx", (10.0, 9.0)),
    ("8 6 5", None), ("8", None), ("Assistant 1: 8 Assistant 2: 6", None), ("", None), (None, None),
    ("eight six", None), ("\n8 6", (8.0, 6.0)),  # leading whitespace is stripped before taking the first line
])
def test_parse_two_scores(text, expected):
    assert parse_two_scores(text) == expected


# Cherry/AlpaGasus table: rows = order 1 (model first), columns = order 2 (model second), mapped to model signs.
SUM_TABLE = {(1, 1): "win", (1, 0): "win", (1, -1): "tie",
             (0, 1): "win", (0, 0): "tie", (0, -1): "lose",
             (-1, 1): "tie", (-1, 0): "lose", (-1, -1): "lose"}
STRICT_TABLE = {(1, 1): "win", (-1, -1): "lose"}


@pytest.mark.parametrize("s1,s2", list(SUM_TABLE))
def test_combination_tables(s1, s2):
    assert combine_sum(s1, s2) == SUM_TABLE[(s1, s2)]
    assert combine_strict(s1, s2) == STRICT_TABLE.get((s1, s2), "tie")


def test_paper_table_from_scores():
    # k1, k2: model / baseline in order 1 (model first); in order 2 the baseline is shown first.
    cases = {((8, 6), (6, 8)): "win", ((8, 6), (7, 7)): "win", ((8, 6), (8, 6)): "tie",
             ((7, 7), (6, 8)): "win", ((7, 7), (7, 7)): "tie", ((7, 7), (8, 6)): "lose",
             ((6, 8), (6, 8)): "tie", ((6, 8), (7, 7)): "lose", ((6, 8), (8, 6)): "lose"}
    for (o1, o2), want in cases.items():
        assert combine_sum(scores_sign(o1, True), scores_sign(o2, False)) == want


def test_pair_v2_signs_and_errors():
    assert [pair_v2_sign(v, True) for v in ("A", "B", "tie", "error", None)] == [1, -1, 0, None, None]
    assert [pair_v2_sign(v, False) for v in ("A", "B", "tie")] == [-1, 1, 0]
    # always "[[A]]": position bias -> one win, one loss -> tie, and a flip
    t, st = Tally(), Tally()
    judge_pair(pair_v2_sign("A", True), pair_v2_sign("A", False), t, st)
    assert (t.tie, st.tie, t.flips) == (1, 1, 1)


def test_errors_are_counted_not_ties():
    assert combine_sum(None, 1) == "error" and combine_strict(1, None) == "error"
    t, st = Tally(), Tally()
    judge_pair(scores_sign(None, True), scores_sign((8, 6), False), t, st)
    assert (t.error, t.tie, t.n) == (1, 0, 0)
    assert math.isnan(t.ws)


def test_ws_on_recorded_judge_outputs():
    # (order-1 text with the model first, order-2 text with the model second)
    recorded = [("9 5\nA is better", "5 9\nsame"),      # win, win -> win (strict win)
                ("7 7", "6 8"),                         # tie, win -> win (strict tie)
                ("6 8", "8 6"),                         # lose, lose -> lose (strict lose)
                ("8 6", "8 6"),                         # win, lose -> tie, flip
                ("8 6", "I refuse"),                    # error
                ("7,7\n", "7 7")]                       # tie
    t, st = Tally(), Tally()
    for a, b in recorded:
        judge_pair(scores_sign(parse_two_scores(a), True), scores_sign(parse_two_scores(b), False), t, st)
    assert (t.win, t.tie, t.lose, t.error) == (2, 2, 1, 1)
    assert t.ws == pytest.approx((2 - 1) / 5 + 1)
    assert (st.win, st.tie, st.lose, st.error) == (1, 3, 1, 1)
    assert st.ws == pytest.approx(1.0)
    assert t.flips == 2 and t.flip_rate == pytest.approx(2 / 5)  # (7 7 | 6 8) and (8 6 | 8 6) disagree
    pooled = t.merge(t)
    assert pooled.ws == pytest.approx(t.ws) and pooled.error == 2
    assert t.ws_stderr is not None and t.ws_stderr > 0


def test_win_score_bounds():
    assert win_score(3, 0, 0) == 2.0 and win_score(0, 0, 3) == 0.0 and win_score(1, 2, 1) == 1.0
    assert math.isnan(win_score(0, 0, 0))
