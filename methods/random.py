"""Uniform random subset: the reference row every selection method must beat.

Seeded with the cell's seed (``numpy.random.default_rng``), so the same seed gives the same subset; references
such as DiverseEvol's ``RandomSampling`` and DQ's ``random_sample`` do the same thing unseeded.
"""

from selbench.registry import register_method
from selbench.select import Selection


@register_method("random", family="baseline", aspect="reference",
                 description="Uniform random subset of the budget size (seeded).",
                 citation="Standard baseline; see e.g. Chen et al. 2024, AlpaGasus (random 9k).")
def select_random(pool, budget, ctx):
    return Selection(random_ids(pool, budget, ctx))


def random_ids(pool, budget, ctx) -> list[str]:
    """The seeded uniform draw; the planted-effect controls start from the same subset."""
    return [pool.examples[i].id for i in ctx.rng.choice(len(pool), size=budget, replace=False)]
