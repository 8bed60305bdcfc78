"""Negative control: a random subset whose responses are shuffled across its examples.

Every instruction is paired with another selected example's answer (a seeded derangement: no example keeps its
own), so the fine-tune sees the pool's answer style but learns that answers need not match instructions. Its harm
is known in direction, which makes it the board's self-test: on a board whose metrics are sensitive enough, this row
comes out significantly below ``random`` at the same budget. If it does not, the board cannot resolve the effects
selection methods claim either.

The subset is the one ``random`` picks for the same seed and budget, so the only difference from ``random`` is the
planted mismatch.
"""

import numpy as np

from selbench.registry import register_method
from selbench.methods.random import random_ids
from selbench.select import Selection


def derangement(n: int, rng: np.random.Generator) -> np.ndarray:
    """A uniformly random permutation with no fixed point (rejection sampling; ~e tries on average)."""
    if n < 2:
        raise ValueError("a derangement needs at least 2 elements")
    while True:
        p = rng.permutation(n)
        if not np.any(p == np.arange(n)):
            return p


@register_method("shuffled_responses", family="control", aspect="planted-harm",
                 description="Negative control: random's subset with responses shuffled across examples "
                             "(instructions and answers no longer match).",
                 citation="Planted-effect control (selbench); cf. mismatched-pair ablations in Zhou et al. 2023, "
                          "LIMA, and Xia et al. 2024 on random baselines.")
def select_shuffled(pool, budget, ctx):
    ids = random_ids(pool, budget, ctx)
    perm = derangement(len(ids), np.random.default_rng([ctx.seed, 1]))
    outputs = [pool[i].output for i in ids]
    swapped = {ids[k]: {"output": outputs[perm[k]]} for k in range(len(ids))}
    return Selection(ids, notes=[f"responses deranged across the {len(ids)} selected examples"],
                     replacements=swapped)
