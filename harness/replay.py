"""Replay: score recorded judgments in the upstream formats, without asking a judge anything.

``score_judgments(paths, fmt)`` (and ``selbench score-judgments``) reads:

- ``cherry``: Cherry_LLM / AlpaGasus two-order review files (``{"Meta_Info", "data": [{"scores": "[8.0, 7.0]",
  "scores_reverse": ..., "review", "review_reverse"}]}``; Answer1 is the model under test). Several files (one per
  test set) are pooled as upstream's ``cal_rate`` pools them. Win score by the papers' rule (sign sum; win + tie is a
  win) and by FastChat's strict rule, and the flip rate.
- ``vicuna``: the Vicuna / FastChat legacy review jsonl (``{"question_id", "text", "score": [s1, s2]}``), one file
  per order: the first with the model under test as Assistant 1, the second (optional) with the orders swapped.
- ``fastchat_single``: FastChat llm_judge single-answer judgments (``model``, ``score``, ``turn``): MT-Bench score
  per model, overall and per turn, ratings of -1 excluded and counted.
- ``fastchat_pair``: FastChat pairwise judgments (``model_1``, ``model_2``, ``g1_winner``, ``g2_winner``):
  win/loss/tie rates by FastChat's rule (a win needs both games; errors dropped).
- ``alpaca_eval``: alpaca_eval ``annotations.json`` (``preference`` 1 = output_1 wins, 2 = output_2 wins): win rate
  per ``generator_2`` through ``alpaca_eval.metrics.get_winrate``.

Unparseable verdicts are counted as errors and excluded, never ties (upstream Cherry scores an unparseable review
as ``[-1, -1]``, an equal-score tie; where the review text is in the file it is re-parsed, multi-line forms
included). Reported counts let a reader redo either convention. tests/test_conformance.py checks both two-order
rules against the upstream code run on review fixtures: Cherry_LLM's ``get_scores_all`` + ``cal_rate`` (the papers'
rule) and FastChat's ``display_result_pairwise`` (the strict rule).
"""

from __future__ import annotations

import ast
import json
from collections import defaultdict
from pathlib import Path
from typing import Any, Sequence

from .judge.verdicts import Tally, combine_strict, combine_sum, parse_two_scores, scores_sign

FORMATS = ("cherry", "vicuna", "fastchat_single", "fastchat_pair", "alpaca_eval")


def _load(path: Path) -> Any:
    text = path.read_text(encoding="utf-8")
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        try:
            return [json.loads(line) for line in text.splitlines() if line.strip()]
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}: neither JSON nor JSON lines ({e})") from None


def detect_format(data: Any, path: Path) -> str:
    first = data["data"][0] if isinstance(data, dict) and data.get("data") else (data[0] if data else {})
    keys = set(first) if isinstance(first, dict) else set()
    for fmt, needed in (("cherry", {"scores", "scores_reverse"}), ("fastchat_pair", {"g1_winner", "g2_winner"}),
                        ("alpaca_eval", {"preference", "output_1", "output_2"}), ("vicuna", {"question_id", "score",
                                                                                           "text"}),
                        ("fastchat_single", {"model", "score", "turn"})):
        if needed <= keys:
            return fmt
    raise ValueError(f"{path}: cannot tell the judgment format from its fields {sorted(keys)}; pass the format")


def _pair(raw: Any, review: str | None) -> tuple[float, float] | None:
    """A recorded score pair; [-1, -1] (upstream's parse failure) falls back to re-parsing the review text."""
    if isinstance(raw, str):
        try:
            raw = ast.literal_eval(raw)
        except (ValueError, SyntaxError):
            raw = None
    if isinstance(raw, (list, tuple)) and len(raw) == 2 and min(raw) >= 0:
        return float(raw[0]), float(raw[1])
    return parse_two_scores(review)


def _two_order(pairs: Sequence[tuple[Any, Any]]) -> dict[str, Any]:
    """``pairs``: per comparison, the (Assistant 1, Assistant 2) scores of the order with the model under test
    first and of the order with it second (upstream's ``scores`` and ``scores_reverse``)."""
    main, strict = Tally(), Tally()
    for first, second in pairs:
        s1 = scores_sign(first, True) if first else None
        s2 = scores_sign(second, False) if second else None
        flipped = s1 is not None and s2 is not None and s1 != s2
        main.add(combine_sum(s1, s2), flipped)
        strict.add(combine_strict(s1, s2), flipped)
    return {"ws": main.ws, "ws_strict": strict.ws, "win": main.win, "tie": main.tie, "lose": main.lose,
            "errors": main.error, "flip_rate": main.flips / main.n if main.n else None,
            "strict": {"win": strict.win, "tie": strict.tie, "lose": strict.lose}, "n": main.n}


def score_cherry(datas: Sequence[Any]) -> dict[str, Any]:
    pairs = [(_pair(d.get("scores"), d.get("review")), _pair(d.get("scores_reverse"), d.get("review_reverse")))
             for data in datas for d in data["data"]]
    return _two_order(pairs)


def score_vicuna(first: list[dict], second: list[dict] | None) -> dict[str, Any]:
    if second is None:
        parsed = [_pair(r.get("score"), r.get("text")) for r in first]
        ok = [p for p in parsed if p]
        signs = [(p[0] > p[1]) - (p[0] < p[1]) for p in ok]
        return {"win": signs.count(1), "tie": signs.count(0), "lose": signs.count(-1), "errors": len(parsed) - len(ok),
                "mean_score_model": sum(p[0] for p in ok) / len(ok) if ok else None,
                "mean_score_other": sum(p[1] for p in ok) / len(ok) if ok else None, "orders": 1}
    swapped = {r["question_id"]: _pair(r.get("score"), r.get("text")) for r in second}
    pairs = []
    for r in first:
        pairs.append((_pair(r.get("score"), r.get("text")), swapped.get(r["question_id"])))
    return {**_two_order(pairs), "orders": 2}


def score_fastchat_single(rows: list[dict]) -> dict[str, Any]:
    by_model: dict[str, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    errors: dict[str, int] = defaultdict(int)
    for r in rows:
        if r["score"] is None or r["score"] < 0:
            errors[r["model"]] += 1
            continue
        by_model[r["model"]][f"turn{r['turn']}"].append(float(r["score"]))
        by_model[r["model"]]["score"].append(float(r["score"]))
    return {m: {**{k: sum(v) / len(v) for k, v in sorted(g.items())}, "errors": errors[m]}
            for m, g in sorted(by_model.items())}


def score_fastchat_pair(rows: list[dict]) -> dict[str, Any]:
    out: dict[str, dict[str, float]] = {}
    groups: dict[tuple[str, str], list[dict]] = defaultdict(list)
    for r in rows:
        groups[(r["model_1"], r["model_2"])].append(r)
    for (m1, m2), rs in sorted(groups.items()):
        ok = [r for r in rs if "error" not in (r["g1_winner"], r["g2_winner"])]
        win = sum(1 for r in ok if r["g1_winner"] == r["g2_winner"] == "model_1")
        loss = sum(1 for r in ok if r["g1_winner"] == r["g2_winner"] == "model_2")
        tie = len(ok) - win - loss  # a tie, or games that disagree
        n = len(ok)
        out[f"{m1} vs {m2}"] = {"win": win, "loss": loss, "tie": tie, "errors": len(rs) - n,
                                "win_rate": win / n if n else None, "loss_rate": loss / n if n else None,
                                "win_rate_adjusted": (win + 0.5 * tie) / n if n else None}
    return out


def score_alpaca_eval(rows: list[dict]) -> dict[str, Any]:
    import pandas as pd
    from alpaca_eval.metrics import get_winrate

    df = pd.DataFrame(rows)
    out = {}
    for gen, g in df.groupby(df.get("generator_2", pd.Series(["model"] * len(df)))):
        ok = g[g["preference"].notna()]
        wr = get_winrate(ok) if len(ok) else {}
        out[str(gen)] = {"win_rate": float(wr["win_rate"]) if len(ok) else None,
                         "standard_error": float(wr["standard_error"]) if len(ok) else None,
                         "discrete_win_rate": float(wr["discrete_win_rate"]) if len(ok) else None,
                         "n": int(len(ok)), "errors": int(len(g) - len(ok))}
    return out


def score_judgments(paths: Sequence[str | Path], fmt: str = "auto") -> dict[str, Any]:
    """Scores from recorded judgment files (see the module docstring for the formats)."""
    paths = [Path(p) for p in paths]
    if not paths:
        raise ValueError("score_judgments needs at least one file")
    datas = [_load(p) for p in paths]
    fmt = detect_format(datas[0], paths[0]) if fmt == "auto" else fmt
    if fmt not in FORMATS:
        raise ValueError(f"unknown judgment format {fmt!r}; one of {FORMATS}")
    if fmt == "cherry":
        result = score_cherry(datas)
    elif fmt == "vicuna":
        if len(datas) > 2:
            raise ValueError("vicuna: give one file per order (at most two)")
        result = score_vicuna(datas[0], datas[1] if len(datas) == 2 else None)
    else:
        rows = [r for d in datas for r in d]
        result = {"fastchat_single": score_fastchat_single, "fastchat_pair": score_fastchat_pair,
                  "alpaca_eval": score_alpaca_eval}[fmt](rows)
    return {"format": fmt, "files": [p.name for p in paths], "result": result}
