"""DiverseEvol: Wu et al. 2023, "Self-Evolved Diverse Data Sampling for Efficient Instruction Tuning"
(arXiv 2311.08182).

Reference followed: OFA-Sys/DiverseEvol @a22e952, ``evol_schedules/kcenter_sampling.py`` with
``evol_schedule_base.py`` and ``train.py``: start from a random labelled set; each round fine-tunes the model on
the current labelled set, embeds the whole pool with that model (mean over all tokens of the last hidden layer, the
prompt plus response), and adds ``n_query`` examples by k-center greedy (``argmax_u min_{l in L} d(u, l)``,
Euclidean, the labelled set growing with each pick) in that embedding space.

Mapping to the benchmark (documented choices):

* ``rounds`` counts every selection round including the initial random one (default 3: a random set, then two
  train -> embed -> k-center rounds). The budget is split evenly over the rounds, the first rounds taking one
  extra when it does not divide; ``sizes`` (a list summing to the budget) overrides the split. Upstream's
  configuration is 100 initial + 10 rounds of 100 with LLaMA-7B.
* The initial set is drawn with the cell's seeded generator (upstream: unseeded ``torch.randperm``).
* Each round's model is trained with the board's own recipe (``ctx.protocol.recipe``; ``RecipeSpec()`` defaults
  without a protocol) from the base model, as in upstream's ``train.py`` which restarts from the base weights.
  Adapters are cached under ``cache/diverseevol/<hash>`` keyed by base model, recipe, seed and the ordered
  training IDs, so reruns and later cells reuse them.
* Embeddings: ``ctx.signals.hidden_state_embeddings(pool, model=<fine-tuned handle>, pooling="mean")`` renders
  the conversation with the protocol's chat template (upstream: the Alpaca prompt + output + EOS), truncated at
  the signal cache's ``max_len`` (upstream: 512). Whitening is off, as upstream's default.
* Picks come from :func:`methods.kcenter.kcenter_greedy`: those of exact float64 distances, ties to the lowest
  index (its float32 Gram-form scan is error-bounded; upstream's ``sqrt(sq + sq^T - 2G)`` can make ``argmax``
  favour NaN).
"""

from __future__ import annotations

import numpy as np

from selbench.models import BaseModelHandle, ResolvedModel
from selbench.registry import register_method
from selbench.select import Selection
from selbench.methods.kcenter import kcenter_greedy


def round_sizes(budget: int, rounds: int) -> list[int]:
    rounds = max(1, min(int(rounds), budget)) if budget else 1
    base, extra = divmod(budget, rounds)
    return [base + (1 if r < extra else 0) for r in range(rounds)]


def _recipe(ctx):
    recipe = getattr(ctx.protocol, "recipe", None)
    if recipe is None:
        from selbench.protocol import RecipeSpec

        recipe = RecipeSpec()
    return recipe


def _train_round(ctx, pool, ids: list[str], recipe) -> BaseModelHandle:
    """Fine-tune the base model on ``ids`` (cached) and return a handle to the result."""
    from selbench.train import finetune

    base = ctx.base_model
    inputs = {"method": "diverseevol", "base": base.identity, "dtype": base.dtype,
              "recipe": recipe.model_dump(mode="json"), "seed": ctx.seed, "ids": ids}
    art = ctx.cache.get_or_compute("diverseevol", inputs, lambda tmp: finetune(
        base.path, pool.subset(ids), recipe, ctx.seed, tmp, dtype=base.dtype, chat_template=recipe.chat_template,
        progress=False, device=base.device), engine=None, device=base.device, form="dir")
    out, key = art.path, art.key
    if recipe.finetune == "lora":
        return BaseModelHandle(base.resolved, dtype=base.dtype, chat_template=base.chat_template,
                               device=base.device, adapter=str(out), adapter_identity=f"diverseevol:{key}")
    resolved = ResolvedModel(str(out), f"{base.identity}+diverseevol-full:{key}", f"DiverseEvol round model {key}")
    return BaseModelHandle(resolved, dtype=base.dtype, chat_template=base.chat_template, device=base.device)


@register_method("diverseevol", family="trainable-LLM", aspect="diversity",
                 description="Iterative k-center in the embedding space of the model fine-tuned on the previous "
                             "rounds' selection.",
                 citation="Wu et al. 2023, Self-Evolved Diverse Data Sampling for Efficient Instruction Tuning "
                          "(arXiv 2311.08182)",
                 reference="OFA-Sys/DiverseEvol @a22e952 evol_schedules/kcenter_sampling.py")
def select_diverseevol(pool, budget, ctx, rounds=3, sizes=None, pooling="mean"):
    if budget == 0:
        return Selection([])
    sizes = [int(s) for s in sizes] if sizes else round_sizes(budget, rounds)
    if sum(sizes) != budget or any(s <= 0 for s in sizes):
        raise ValueError(f"diverseevol: sizes {sizes} must be positive and sum to the budget {budget}")
    recipe = _recipe(ctx)
    selected = [int(i) for i in ctx.rng.choice(len(pool), size=sizes[0], replace=False)]
    rounds_log = [{"round": 0, "added": sizes[0], "how": "random (seeded)"}]
    for r, q in enumerate(sizes[1:], start=1):
        ids = [pool.examples[i].id for i in selected]
        handle = _train_round(ctx, pool, ids, recipe)
        X = ctx.signals.hidden_state_embeddings(pool, model=handle, pooling=pooling)
        if not np.isfinite(X).all():
            raise ValueError(f"diverseevol round {r}: non-finite hidden-state embeddings")
        picks, _, min_dist = kcenter_greedy(X, q, already_selected=selected)
        selected += picks
        rounds_log.append({"round": r, "added": q, "trained_on": len(ids), "adapter": handle.adapter_identity
                           or handle.identity, "coverage_radius": round(float(min_dist.max()), 6)})
    return Selection([pool.examples[i].id for i in selected],
                     notes=[f"rounds {len(sizes)} with sizes {sizes}; {len(sizes) - 1} fine-tuned embedders"],
                     extras={"rounds": rounds_log})
