"""AlpaGasus: Chen et al. 2023, "AlpaGasus: Training a Better Alpaca with Fewer Data" (ICLR 2024, arXiv 2307.08701).

Reference followed: gpt4life/alpagasus (the authors' README endorses it as the implementation; the official
Lichang-Chen/AlpaGasus is a project page), ``rating/chatgpt_rating.py`` @42f57bf and ``rating/filter.py`` @0d0b90c:
the judge rates every (instruction, input, response) triplet for **accuracy on 0-5**, the score alone on the first
line of its answer; examples with ``score >= 4.5`` are kept. Upstream's judge is ``gpt-3.5-turbo-0301`` at
temperature 0 (here: the board's ``judge:``, with its temperature).

Deviations (documented):

* the rating prompt is our own wording of the same task (upstream's text is not copied); ``prompt_file`` replaces
  it: a ``.json`` file ``{"system": ..., "user": ...}`` or a text file holding the user template, with the
  placeholders ``{instruction}``, ``{input}``, ``{output}`` (its sha256 enters the selection's cache key);
* parsing (:func:`parse_score`): the first line's number, else a ``score:``/``rating:`` label anywhere; a number
  outside [0, 5] or no number is an **error**, counted and never a score (upstream turns it into -1, and its
  ``Score:`` branch reads one character). The judge client re-asks an unparseable rating ``max_parse_retries``
  times before it counts as an error;
* with a judge that takes structured outputs (``server: vllm``) the answer is constrained to a score in [0, 5] on
  the first line (:data:`SCORE_CONSTRAINT`), so even a weak judge's ratings parse;
* exactly ``budget``: upstream keeps every example over the threshold (9k of 52k). Here the examples with
  ``score >= threshold`` come first, highest score first, ties in the cell's seeded order; the budget is filled by
  score below the threshold, then (only if ratings failed) with unrated examples in seeded order, with a note.

Cost: judge requests, cached answers, tokens and parse errors of this selection are in its notes (see
``selbench.judged_selection``); wall and CPU seconds are recorded by the harness.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from selbench.judge.client import Ledger
from selbench.judged_selection import count_errors, judge_cost, record_cost, require_judge, seeded_rank
from selbench.registry import register_method
from selbench.select import Selection

SYSTEM = ("You review training data for AI assistants. For each example you check whether the assistant's "
          "response correctly and accurately carries out the user's instruction.")
USER = ("Instruction:\n{instruction}\n\nInput:\n{input}\n\nResponse:\n{output}\n\n"
        "How accurate is this response, given the instruction and the input? Give it a score from 0 to 5 "
        "(decimals such as 3.5 are allowed): 5 means fully correct and accurate, 0 means wrong or unrelated. "
        "Write only the score on the first line, then one sentence explaining it on the second line.")
SCORE_CONSTRAINT = {"regex": r"(5(\.0)?|[0-4](\.[0-9])?)(\n[\s\S]*)?"}
_NUM = r"([+-]?\d+(?:\.\d+)?)"
_FIRST = re.compile(rf"^(?:score|rating|accuracy)?\s*[:=]?\s*{_NUM}\s*(?:/\s*5(?:\.0+)?|out of 5)?\s*\.?$",
                    re.IGNORECASE)
_LABELLED = re.compile(rf"\b(?:score|rating)\s*[:=]\s*\**\s*{_NUM}", re.IGNORECASE)


def parse_score(text: str | None) -> float | None:
    """A 0-5 accuracy score from the judge's answer, or None (an error, never a score)."""
    if not text or not text.strip():
        return None
    first = text.strip().splitlines()[0].strip().strip("*#` ").strip()
    m = _FIRST.match(first) or _LABELLED.search(text)
    if not m:
        return None
    x = float(m.group(1))
    return x if 0.0 <= x <= 5.0 else None


def load_prompt(prompt_file: str) -> tuple[str, str]:
    """(system, user template): ours, or from ``prompt_file``."""
    if not prompt_file:
        return SYSTEM, USER
    p = Path(prompt_file).expanduser()
    if not p.is_file():
        raise FileNotFoundError(f"alpagasus: prompt_file {prompt_file!r} does not exist")
    text = p.read_text(encoding="utf-8")
    if p.suffix == ".json":
        d = json.loads(text)
        system, user = d.get("system", ""), d["user"]
    else:
        system, user = SYSTEM, text
    if "{output}" not in user or "{instruction}" not in user:
        raise ValueError(f"alpagasus: prompt_file {prompt_file}: the user template needs {{instruction}} and "
                         f"{{output}} placeholders")
    return system, user


def rating_messages(e, system: str = SYSTEM, user: str = USER) -> list[dict[str, str]]:
    body = (user.replace("{instruction}", e.instruction).replace("{input}", e.input or "(none)")
            .replace("{output}", e.output))
    return ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": body}]


def rank_by_score(n: int, scores: dict[int, float], threshold: float, budget: int, rank: list[int]
                  ) -> tuple[list[int], dict[str, int]]:
    """Pool indices: rated ones by (score desc, seeded rank), then unrated in seeded order; cut to ``budget``."""
    rated = sorted(scores, key=lambda i: (-scores[i], rank[i]))
    unrated = sorted((i for i in range(n) if i not in scores), key=lambda i: rank[i])
    chosen = (rated + unrated)[:budget]
    above = sum(1 for i in rated if scores[i] >= threshold)
    info = {"rated": len(rated), "above_threshold": above, "unrated": len(unrated),
            "filled_below_threshold": max(0, min(budget, len(rated)) - above),
            "filled_unrated": max(0, budget - len(rated))}
    return chosen, info


@register_method("alpagasus", uses_judge=True, family="strong-LLM", aspect="quality",
                 description="AlpaGasus: the LLM judge rates each triplet's accuracy 0-5; keep score >= 4.5, fill "
                             "the budget by score (ties seeded); unparseable ratings counted as errors.",
                 citation="Chen et al. 2023, AlpaGasus: Training a Better Alpaca with Fewer Data (ICLR 2024, "
                          "arXiv 2307.08701)",
                 reference="gpt4life/alpagasus @42f57bf rating/chatgpt_rating.py + @0d0b90c rating/filter.py")
def select_alpagasus(pool, budget, ctx, threshold=4.5, prompt_file="", max_tokens=64):
    judge = require_judge(ctx, "alpagasus")
    system, user = load_prompt(prompt_file)
    ledger = Ledger()
    verdicts = judge.judge_many([rating_messages(e, system, user) for e in pool], parse_score, ledger,
                                desc="alpagasus: rating", max_tokens=max_tokens, constraint=SCORE_CONSTRAINT)
    errors = count_errors(verdicts)
    scores = {i: float(v.value) for i, v in enumerate(verdicts) if v.ok and v.value is not None}
    chosen, info = rank_by_score(len(pool), scores, threshold, budget, seeded_rank(len(pool), ctx.rng))
    notes = [(f"{info['rated']} of {len(pool)} rated, {info['above_threshold']} with score >= {threshold:g}, "
              f"{info['unrated']} errors, not scores ({errors['parse']} unparseable, {errors['other']} rejected by "
              f"the judge)")]
    if info["filled_below_threshold"] or info["filled_unrated"]:
        notes.append(f"threshold left {info['above_threshold']} for a budget of {budget}: filled with "
                     f"{info['filled_below_threshold']} below the threshold by score and {info['filled_unrated']} "
                     f"unrated in seeded order")
    constraint = judge.constraint(SCORE_CONSTRAINT) if hasattr(judge, "constraint") else None
    extras = {**info, "errors": errors, "threshold": threshold, "prompt": prompt_file or "ours",
              "verdict_constraint": constraint}
    sel = Selection([pool.examples[i].id for i in chosen], scores={pool.examples[i].id: s for i, s in scores.items()},
                    notes=notes, extras=extras)
    record_cost(sel, ctx, "judge", *judge_cost(ledger, len(pool), judge, "ratings"))
    return sel
