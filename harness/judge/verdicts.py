"""Parsing judge outputs and combining two-order pairwise verdicts. Pure functions, no I/O.

Sign convention for one ordered judgment: +1 the model under test is preferred, -1 the other model is preferred,
0 tie. A judgment that cannot be parsed is ``None`` (an error): it never becomes a tie.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field

_RATING = re.compile(r"\[\[(\d+\.?\d*)\]\]")
_RATING_FALLBACK = re.compile(r"\[(\d+\.?\d*)\]")
_NUMBER = re.compile(r"^[+-]?(\d+(\.\d*)?|\.\d+)$")


def parse_rating(text: str | None) -> float:
    """MT-Bench single grading: ``[[x]]`` (fallback ``[x]``) -> x, anything else -> -1 (FastChat's convention)."""
    if not text:
        return -1.0
    m = _RATING.search(text) or _RATING_FALLBACK.search(text)
    return float(m.group(1)) if m else -1.0


def rating_or_none(text: str | None) -> float | None:
    r = parse_rating(text)
    return None if r < 0 else r


_BULLET = re.compile(r"^(?:[-*\u2022]|\d+[.)])\s+")


def parse_string_list(text: str | None, key: str | None = None, item_key: str | None = None) -> list[str] | None:
    """A list of strings from a judge's answer, or None. The first JSON value that is one, also inside a code fence:
    a list of strings (or of ``{item_key: str}`` objects), or ``{key: [...]}``; else a list written one item per
    line (``- item``, ``* item``, ``1. item``). An empty list is returned as it is (the caller decides)."""
    if not text or not text.strip():
        return None

    def strings(obj):
        if isinstance(obj, dict) and key is not None:
            obj = obj.get(key)
        if not isinstance(obj, list):
            return None
        out = [it.get(item_key) if isinstance(it, dict) and item_key is not None else it for it in obj]
        return out if all(isinstance(it, str) for it in out) else None

    body, dec = re.sub(r"```(?:json)?", "", text).strip(), json.JSONDecoder()
    for m in list(re.finditer(r"[\[{]", body))[:8]:
        try:
            found = strings(dec.raw_decode(body[m.start():])[0])
        except json.JSONDecodeError:
            continue
        if found is not None:
            return found
    lines = [ln.strip() for ln in body.splitlines() if ln.strip()]
    if lines and all(_BULLET.match(ln) and _BULLET.sub("", ln).strip() for ln in lines):
        return [_BULLET.sub("", ln) for ln in lines]
    return None


def parse_pair_v2(text: str | None) -> str:
    """MT-Bench pairwise ``pair-v2``: "A", "B", "tie" (``[[C]]``) or "error". Checked in FastChat's order, so a
    judgment containing both ``[[A]]`` and ``[[B]]`` is "A"."""
    if not text:
        return "error"
    for tag, verdict in (("[[A]]", "A"), ("[[B]]", "B"), ("[[C]]", "tie")):
        if tag in text:
            return verdict
    return "error"


def pair_v2_or_none(text: str | None) -> str | None:
    v = parse_pair_v2(text)
    return None if v == "error" else v


_ASSISTANT_SCORE = re.compile(r"^\W*Assistant\s*([12])\W*(?:score\W*)?:?\s*([+-]?\d+(?:\.\d+)?)\s*(?:/\s*10)?\W*$",
                              re.IGNORECASE | re.MULTILINE)


def parse_two_scores(text: str | None) -> tuple[float, float] | None:
    """Vicuna/AlpaGasus review: two scores alone on the first line ("8 6" or "8, 6"), or the multi-line form a
    reviewer sometimes writes instead, one line per assistant before any explanation ("Scores:\nAssistant 1:
    10\nAssistant 2: 6"); anything else -> None."""
    if not text or not text.strip():
        return None
    fields = text.strip().splitlines()[0].replace(",", " ").split()
    if len(fields) == 2 and all(_NUMBER.match(f) for f in fields):
        return float(fields[0]), float(fields[1])
    head = "\n".join(text.strip().splitlines()[:4])  # the score lines lead the review
    found: dict[str, float] = {}
    for m in _ASSISTANT_SCORE.finditer(head):
        found.setdefault(m.group(1), float(m.group(2)))
    return (found["1"], found["2"]) if len(found) == 2 else None


# Structured-output constraints (vLLM ``structured_outputs``) that make a judge write a verdict its parser reads.
# The free explanation before a bracketed verdict may hold no brackets and at most ``max_tokens - 8`` characters
# (a token is at least one character), so the verdict always fits in the token budget.
_RATING_1_10 = "(10|[1-9])"


def _explained(verdict_regex: str, max_tokens: int) -> dict[str, str]:
    return {"regex": rf"[^\[\]]{{0,{max(0, max_tokens - 8)}}}{verdict_regex}"}


def rating_constraint(max_tokens: int) -> dict[str, str]:
    """MT-Bench single grading: an explanation, then ``[[1]]`` .. ``[[10]]``."""
    return _explained(rf"\[\[{_RATING_1_10}\]\]", max_tokens)


def pair_v2_constraint(max_tokens: int) -> dict[str, str]:
    """MT-Bench pair-v2: an explanation, then ``[[A]]``, ``[[B]]`` or ``[[C]]``."""
    return _explained(r"\[\[(A|B|C)\]\]", max_tokens)


def two_scores_constraint() -> dict[str, str]:
    """Review format: two 1-10 scores alone on the first line, then any explanation."""
    return {"regex": rf"{_RATING_1_10} {_RATING_1_10}(\n[\s\S]*)?"}


def _sign(x: float) -> int:
    return (x > 0) - (x < 0)


def scores_sign(scores: tuple[float, float] | None, model_first: bool) -> int | None:
    """Sign of one ordered review: (first, second) scores, the model under test shown first or second."""
    if scores is None:
        return None
    model, other = scores if model_first else scores[::-1]
    return _sign(model - other)


def pair_v2_sign(verdict: str | None, model_first: bool) -> int | None:
    """Sign of one ordered pair-v2 verdict ("A"/"B"/"tie"); "error"/None stays None."""
    if verdict in (None, "error"):
        return None
    if verdict == "tie":
        return 0
    model_slot = "A" if model_first else "B"
    return 1 if verdict == model_slot else -1


def combine_sum(s1: int | None, s2: int | None) -> str:
    """The papers' rule (Cherry/AlpaGasus): s = s1 + s2; s>0 win, s<0 lose, else tie. Win + tie is a win."""
    if s1 is None or s2 is None:
        return "error"
    s = s1 + s2
    return "win" if s > 0 else "lose" if s < 0 else "tie"


def combine_strict(s1: int | None, s2: int | None) -> str:
    """FastChat's rule: only a verdict both orders agree on counts; any disagreement is a tie."""
    if s1 is None or s2 is None:
        return "error"
    if s1 != s2 or s1 == 0:
        return "tie"
    return "win" if s1 > 0 else "lose"


@dataclass
class Tally:
    """Win/tie/lose counts of two-order comparisons; errors are kept apart and excluded from N."""

    win: int = 0
    tie: int = 0
    lose: int = 0
    error: int = 0
    flips: int = 0  # parsed pairs whose two orders disagree (position inconsistency)
    outcomes: list[int] = field(default_factory=list)

    def add(self, outcome: str, flipped: bool = False) -> None:
        if outcome == "error":
            self.error += 1
            return
        setattr(self, outcome, getattr(self, outcome) + 1)
        self.outcomes.append({"win": 1, "tie": 0, "lose": -1}[outcome])
        self.flips += bool(flipped)

    def merge(self, other: "Tally") -> "Tally":
        return Tally(self.win + other.win, self.tie + other.tie, self.lose + other.lose, self.error + other.error,
                     self.flips + other.flips, self.outcomes + other.outcomes)

    @property
    def n(self) -> int:
        return self.win + self.tie + self.lose

    @property
    def ws(self) -> float:
        """Winning score (W - L) / N + 1 in [0, 2]; 1 is parity. NaN when nothing was judged."""
        return win_score(self.win, self.tie, self.lose)

    @property
    def ws_stderr(self) -> float | None:
        n = len(self.outcomes)
        if n < 2:
            return None
        mean = sum(self.outcomes) / n
        var = sum((o - mean) ** 2 for o in self.outcomes) / (n - 1)
        return math.sqrt(var / n)

    @property
    def flip_rate(self) -> float:
        return self.flips / self.n if self.n else float("nan")


# One comparison's contribution to the win score: its mean over comparisons is (win - lose) / n + 1.
OUTCOME_WS = {"win": 2.0, "tie": 1.0, "lose": 0.0}


def win_score(win: int, tie: int, lose: int) -> float:
    n = win + tie + lose
    return (win - lose) / n + 1 if n else float("nan")


def judge_pair(s1: int | None, s2: int | None, main: Tally, strict: Tally) -> tuple[str, str]:
    """Record one comparison (s1: model shown first, s2: model shown second) in both tallies."""
    flipped = s1 is not None and s2 is not None and s1 != s2
    a, b = combine_sum(s1, s2), combine_strict(s1, s2)
    main.add(a, flipped)
    strict.add(b, flipped)
    return a, b
