"""Shared services for the selection methods that ask the board's LLM judge (``alpagasus``, ``instag``, ``deita``):
the cost of a selection's judging, read from a per-selection :class:`~selbench.judge.client.Ledger`, and how it
reaches the record; the seeded tie-break of score orders; the judge's next-token logprobs for DEITA-style scorers.

Every judgment goes through the judge client (:meth:`JudgeClient.judge_many`, :meth:`JudgeClient.top_logprobs_many`),
whose per-judgment cache is keyed by the judge's identity, the messages and the request parameters (a
structured-output constraint included): a re-run, or another method sending the same prompts on the same pool, asks
the judge nothing it asked before (the ledger's ``cached`` counts those answers, ``calls`` only the requests sent).
A judge that cannot be reached raises ``JudgeUnavailable``: nothing is selected on a partial set of judgments.

Cost in the record: the harness stores a selection's wall and CPU seconds itself (``selbench.select``); the judge
counts go into the selection's notes (one line), ``extras[key]`` and ``ctx.stats[key]``, which the cached selection
keeps and the record's ``selection.cost.judge`` shows.
"""

from __future__ import annotations

from typing import Any

from .judge.client import Ledger

COUNTS = ("calls", "cached", "retries", "parse_retries", "parse_errors", "errors", "prompt_tokens",
          "completion_tokens", "cached_prompt_tokens", "cached_completion_tokens")


def require_judge(ctx, method: str):
    if getattr(ctx, "judge", None) is None:
        raise ValueError(f"{method}: the board has no judge (protocol `judge:`); this method asks an LLM judge")
    return ctx.judge


def count_errors(verdicts) -> dict[str, int]:
    """Error verdicts by kind: unparseable after the re-asks (``"parse"``), or rejected by the judge (e.g. a prompt
    longer than its context). Both are counted, never scores. A judge that cannot be reached at all raises
    ``JudgeUnavailable`` from the client instead: nothing is selected on a partial set of judgments."""
    parse = sum(1 for v in verdicts if v.error == "parse")
    return {"parse": parse, "other": sum(1 for v in verdicts if v.error is not None) - parse}


def judge_cost(ledger: Ledger, n_items: int, judge=None, what: str = "judgments") -> tuple[str, dict[str, Any]]:
    """(a note for the record, the counts) of one selection's judging."""
    counts = {k: int(getattr(ledger, k)) for k in COUNTS}
    counts["items"] = n_items
    ident = getattr(judge, "identity", None) if judge is not None else None
    if ident is not None:
        counts["judge"] = ident
    note = (f"judge cost: {n_items} {what}, {counts['calls']} requests sent, {counts['cached']} answers from the "
            f"judgment cache, {counts['prompt_tokens'] + counts['cached_prompt_tokens']} prompt + "
            f"{counts['completion_tokens'] + counts['cached_completion_tokens']} completion tokens ("
            f"{counts['cached_prompt_tokens'] + counts['cached_completion_tokens']} of them in cached answers), "
            f"{counts['parse_errors']} unparseable after {counts['parse_retries']} re-asks, "
            f"{counts['retries']} transport retries")
    return note, counts


def record_cost(sel, ctx, key: str, note: str, counts: dict[str, Any]) -> None:
    sel.notes.append(note)
    sel.extras[key] = counts
    stats = getattr(ctx, "stats", None)
    if isinstance(stats, dict):
        stats[key] = counts


def seeded_rank(n: int, rng) -> list[int]:
    """rank[i] = position of item i in a seeded permutation: the tie-break of score orders."""
    perm = rng.permutation(n)
    rank = [0] * n
    for pos, i in enumerate(perm.tolist()):
        rank[i] = pos
    return rank


def judge_top_logprobs(judge, msgs_list, top_k: int, ledger: Ledger) -> tuple[list[list | None], int]:
    """Each prompt's ``[[token, logprob], ...]`` of the judge's first answer token (``[]`` where the judge rejected
    the request, e.g. a prompt over its context) and the number rejected. The first prompt is asked alone: when
    its answer has no logprobs (the endpoint gives none) the result is ``[None]`` and nothing more is asked."""
    if not msgs_list:
        return [], 0
    first = judge.top_logprobs_many(msgs_list[:1], top_k, ledger)[0]
    if first is None:
        return [None], 0
    out = [first, *judge.top_logprobs_many(msgs_list[1:], top_k, ledger, desc="judge logprobs")]
    rejected = sum(isinstance(x, Exception) for x in out)
    return [[] if isinstance(x, Exception) else x for x in out], rejected
