"""Positive control: random's subset, retrained on examples drawn from the evaluation distribution.

Each selected pool example is replaced by an AlpacaEval instruction with its GPT-4-Turbo answer (the references
that ``ref_likelihood``'s ``alpaca_eval`` set scores), taken from the instructions *no evaluator of the board
scores*: those past the reference-likelihood items in that set's fixed order, and past the judged AlpacaEval
evaluator's ``max_instances``. Training on the test distribution (not the test items) has a known, positive effect
on those metrics, so this row must come out above ``random``; if it does not, the board cannot see gains.
"""

import json

import numpy as np

from selbench.paths import data_dir
from selbench.ref_likelihood import RefLikelihoodSettings, reference_pairs
from selbench.registry import register_method
from selbench.methods.random import random_ids
from selbench.select import Selection


def held_out_pairs(protocol, shuffle_seed: int) -> list[tuple[str, str]]:
    root = data_dir()
    if root is None:
        raise FileNotFoundError("eval_distribution needs the data directory (set SELBENCH_DATA_DIR)")
    sections = protocol.evaluation.model_dump() if protocol is not None else {}
    rl = RefLikelihoodSettings.model_validate(sections.get("ref_likelihood") or {})
    pairs = reference_pairs(root / "open_ended", "alpaca_eval", rl.shuffle_seed)
    scored = set(pairs[: rl.per_set]) if "alpaca_eval" in rl.sets else set()
    judged: set[str] = set()
    if sections.get("alpaca_eval"):
        rows = json.loads((root / "open_ended" / "alpaca_eval" / "reference_outputs" / "gpt4_1106_preview" /
                           "model_outputs.json").read_text(encoding="utf-8"))
        judged = {r["instruction"] for r in rows[: sections["alpaca_eval"].get("max_instances") or len(rows)]}
    rest = [p for p in pairs if p not in scored and p[0] not in judged]
    np.random.default_rng(shuffle_seed).shuffle(rest)
    return rest


@register_method("eval_distribution", family="control", aspect="planted-gain",
                 description="Positive control: random's subset with each example replaced by a held-out "
                             "AlpacaEval instruction and its GPT-4-Turbo answer (the evaluation distribution).",
                 citation="Planted-effect control (selbench); cf. target-distribution selection, Xia et al. 2024 "
                          "(LESS) and Xie et al. 2023 (DSIR).")
def select_eval_distribution(pool, budget, ctx):
    ids = random_ids(pool, budget, ctx)
    pairs = held_out_pairs(ctx.protocol, ctx.seed)
    if len(pairs) < budget:
        raise ValueError(f"eval_distribution: only {len(pairs)} held-out AlpacaEval examples for budget {budget}")
    swapped = {i: {"instruction": q, "input": "", "output": a} for i, (q, a) in zip(ids, pairs)}
    return Selection(ids, notes=[f"{budget} examples replaced by held-out AlpacaEval instructions with "
                                 "GPT-4-Turbo answers"], replacements=swapped)
