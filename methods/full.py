"""The whole pool: the upper reference for what selection can save."""

from selbench.registry import register_method


@register_method("full", family="baseline", aspect="reference", full_pool=True,
                 description="Every example of the pool; its budget is the pool size.",
                 citation="Standard baseline (train on the full instruction pool).")
def select_full(pool, budget, ctx):
    return pool.ids
