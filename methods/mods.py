"""MoDS: Du et al. 2023, "MoDS: Model-oriented Data Selection for Instruction Tuning" (arXiv 2311.15653).

Reference followed: CASIA-LM/MoDS @3760373 (``quality-evaluation/``, ``diverse-data-selection/``, ``inference/``,
``merge.py``; see also shared/notes/upstream-methods.md section 4). Three stages, then the union:

1. **Quality**: a reward model scores every (question, response) (``methods/reward.py``: ``logits[0]`` of
   ``tokenizer(question, answer)``); the high-quality set keeps ``reward > quality_threshold`` (README: 0.0).
2. **Coverage (seed set)**: k-center greedy (``methods/kcenter.py``, Euclidean, the first centre drawn with the
   cell's seeded generator; upstream unseeded) over the high-quality set's embeddings of the instruction alone
   (here the shared all-MiniLM-L6-v2 of instruction+input; upstream ``bert-base-uncased`` [CLS] of the
   instruction), ``seed_fraction`` of the budget.
3. **Necessity**: a seed model is fine-tuned on the seed set with the board's own recipe (the harness's train
   stage, cached under ``cache/mods/<hash>``), answers every other high-quality instruction (greedy decoding of at
   most ``max_new_tokens`` with the protocol's chat template and engine; upstream: beam search 4, 1024 tokens, the
   Alpaca prompt), and the reward model scores those answers; the instructions answered worst are kept, those
   with ``reward < necessity_threshold`` (upstream keeps below a threshold it leaves to the user), lowest first.
4. **Union** (``merge.py``): seed set + necessity set, cut to exactly ``budget``; if short, filled with the
   rest of the high-quality set by quality, then the others by quality, with a note.

Offline there is no reward model: ``substitute`` (``"base_loglik"``, the base model's mean token log-likelihood
of the response given the instruction) stands in, named in the notes and ``extras["reward_model"]``. Its scale
has no meaningful 0, so with the substitute the quality threshold is the ``substitute_quantile`` quantile of the
pool's scores and the necessity stage ranks (lowest first) without a threshold.
"""

from __future__ import annotations

import numpy as np
from selbench.methods.kcenter import kcenter_greedy
from selbench.methods.reward import reward_scores
from selbench.registry import register_method
from selbench.select import Selection


def _recipe(ctx):
    recipe = getattr(ctx.protocol, "recipe", None)
    if recipe is None:
        from selbench.protocol import RecipeSpec

        recipe = RecipeSpec()
    return recipe


def train_seed_model(ctx, pool, ids: list[str]):
    """The base model fine-tuned on ``ids`` with the board's recipe (cached); a model to generate with."""
    from selbench.evaluate import ModelUnderTest
    from selbench.train import finetune

    base, recipe = ctx.base_model, _recipe(ctx)
    inputs = {"method": "mods", "base": base.identity, "dtype": base.dtype, "recipe": recipe.model_dump(mode="json"),
              "seed": ctx.seed, "ids": ids}
    art = ctx.cache.get_or_compute("mods", inputs, lambda tmp: finetune(
        base.path, pool.subset(ids), recipe, ctx.seed, tmp, dtype=base.dtype, chat_template=recipe.chat_template,
        progress=False, device=base.device), engine=None, device=base.device, form="dir")
    lora = recipe.finetune == "lora"
    return ModelUnderTest(name=f"mods-seed:{art.key}", base_path=base.path if lora else str(art.path),
                          adapter=str(art.path) if lora else None, identity=f"{base.identity}+mods-seed:{art.key}",
                          dtype=base.dtype, chat_template=base.chat_template, device=base.device), art.key


@register_method("mods", family="small-model", aspect="quality",
                 description="MoDS: reward-model quality filter, k-center seed set, a seed model fine-tuned on it, "
                             "then the instructions its answers score worst on; union, filled to the budget.",
                 citation="Du et al. 2023, MoDS: Model-oriented Data Selection for Instruction Tuning "
                          "(arXiv 2311.15653)",
                 reference="CASIA-LM/MoDS @3760373 quality-evaluation/, diverse-data-selection/, inference/, merge.py")
def select_mods(pool, budget, ctx, model="OpenAssistant/reward-model-deberta-v3-large-v2", substitute="base_loglik",
                quality_threshold=0.0, necessity_threshold=0.0, substitute_quantile=0.5, seed_fraction=0.5,
                max_new_tokens=128, embed_model="all-MiniLM-L6-v2"):
    from selbench.generate import Decoding, generate

    n = len(pool)
    quality, who, notes = reward_scores(pool, ctx, model, substitute)
    ok = np.isfinite(quality)
    real = who["kind"] == "reward model"
    thr = quality_threshold if real else (float(np.quantile(quality[ok], substitute_quantile)) if ok.any() else 0.0)
    hq = np.flatnonzero(ok & (quality > thr))
    k = min(len(hq), budget, max(1, round(seed_fraction * budget))) if budget else 0
    seed_idx: list[int] = []
    if k:
        X = ctx.signals.sentence_embeddings(pool, model_name=embed_model, fields="instruction+input", normalize=True)
        first = int(ctx.rng.integers(len(hq)))
        local, _, _ = kcenter_greedy(X[hq], k, first=first)
        seed_idx = [int(hq[j]) for j in local]
    chosen, need_info = list(seed_idx), {}
    seed_set, hq_set = set(seed_idx), set(hq.tolist())
    rest = [int(i) for i in hq if int(i) not in seed_set]
    if seed_idx and rest and len(chosen) < budget:
        seed_model, key = train_seed_model(ctx, pool, [pool.examples[i].id for i in seed_idx])
        engine = getattr(ctx.protocol, "engine", "auto") if ctx.protocol is not None else "auto"
        dec = Decoding(max_new_tokens=max_new_tokens, engine=engine, seed=ctx.seed)
        answers = [a[0] for a in generate(seed_model, [[pool.examples[i].prompt] for i in rest], dec, ctx.cache,
                                          desc="mods: seed model answers")]
        need, _, _ = reward_scores([pool.examples[i] for i in rest], ctx, model, substitute, outputs=answers)
        cand = sorted((j for j in range(len(rest)) if np.isfinite(need[j]) and (not real or need[j] <
                       necessity_threshold)), key=lambda j: (need[j], j))
        picked = [rest[j] for j in cand[: budget - len(chosen)]]
        chosen += picked
        need_info = {"seed_model": key, "candidates": len(rest), "below_threshold": len(cand), "kept": len(picked)}
    taken = set(chosen)
    fill = sorted((i for i in range(n) if i not in taken),
                  key=lambda i: (i not in hq_set, -quality[i] if ok[i] else np.inf, i))
    n_fill = budget - len(chosen)
    chosen += fill[:n_fill]
    notes += [f"quality: {len(hq)} of {n} with {who['kind']} score > {thr:.4g}"
              + ("" if real else f" (the substitute's {substitute_quantile:g} quantile)"),
              f"seed set: {len(seed_idx)} by k-center over the high-quality set (first centre seeded)",
              (f"necessity: seed model answered {need_info['candidates']} high-quality instructions; "
               f"{need_info['kept']} answered worst kept" + (f" (reward < {necessity_threshold:g}: "
                                                             f"{need_info['below_threshold']})" if real else ""))
              if need_info else "necessity: no seed model (nothing left to answer or no seed set)"]
    if n_fill > 0:
        notes.append(f"union short of the budget by {n_fill}: filled by quality (high-quality set first)")
    return Selection([pool.examples[i].id for i in chosen],
                     scores={pool.examples[i].id: float(quality[i]) for i in np.flatnonzero(ok)}, notes=notes,
                     extras={"reward_model": who, "quality_threshold": thr, "high_quality": len(hq),
                             "seed": len(seed_idx), "necessity": need_info, "filled": max(0, n_fill)})
