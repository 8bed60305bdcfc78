"""LLM-judged evaluators (MT-Bench, AlpacaEval, pairwise win score) and the judge client/server they share.

Importing this package registers the evaluators ``mt_bench``, ``alpaca_eval`` and ``pairwise``.
"""

from . import alpaca_eval, mt_bench, pairwise  # noqa: F401  (register evaluators)
from .client import JudgeClient, Ledger, Verdict
from .server import open_judge

__all__ = ["JudgeClient", "Ledger", "Verdict", "open_judge"]
