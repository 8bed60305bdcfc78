"""LESS: Xia et al. 2024, "LESS: Selecting Influential Data for Targeted Instruction Tuning" (arXiv
2402.04333). Reference followed: princeton-nlp/LESS @8abf962 (``less/data_selection/get_info.py``,
``collect_grad_reps.py``, ``matching.py``, ``write_selected_data.py``; shared/notes/upstream-methods.md sec. 7).

1. **Warm-up**: LoRA on a seeded random ``warmup_fraction`` (0.05, the reference's ``percentage``) of the pool
   for ``warmup_epochs`` (4, as the reference), with the board's own recipe through the train stage (LoRA even
   when the board fine-tunes fully), cached under ``cache/less/<key>`` with AdamW's moments.
2. **Gradient features** (``selbench.grads``): per-example LoRA gradients of the mean response-token loss, the
   pool's Adam-preconditioned with the warm-up's moments, the target set's plain (SGD); TRAK Rademacher
   projection to ``proj_dim`` (8192) with ``proj_seed`` (0), rows L2-normalised; cached per (adapter, tokens).
3. **Matching** (``matching.py``): score = sum over checkpoints of (lr-weighted, renormalised) cosine to each
   target example, averaged within each target subtask, max over subtasks; the top ``budget``, ties by pool
   order (the reference sorts with ``torch.sort``, whose tie order is unspecified).

Target set: ``target`` names lm-eval tasks (default: the board's ``evaluation.lm_eval.tasks``); groups expand
to their tasks and each task is one subtask. Per task, ``n_target`` (5) examples of its few-shot split (else
its training, else its validation split; never its test split: a task with only a test split is skipped, with
a note), drawn by lm-eval's own sampler with its default few-shot seed 1234: the user turn is the task's
description + ``doc_to_text``, the reply the gold answer (``doc_to_choice[doc_to_target]``, or
``doc_to_target``). The reference uses few-shot dev examples (MMLU 5 per subject, BBH 3 CoT exemplars per task).
``heldout:alpaca_eval``: ``n_target`` AlpacaEval instructions + GPT-4-Turbo answers that no evaluator of the board
scores (``eval_distribution``'s held-out pairs, seed 1234), one subtask.

Deviation: one checkpoint, the warm-up's last (weight 1). The reference scores at each epoch's checkpoint; the
train stage saves only the final adapter. Examples with no response token inside ``max_seq_len`` get no score
and come last.
"""

from __future__ import annotations

import numpy as np
from selbench.registry import register_method
from selbench.select import Selection

FEWSHOT_SEED = 1234  # lm-eval's default fewshot_random_seed


def less_scores(train: list[np.ndarray], target: list[np.ndarray], weights: list[float],
                subtasks: list[str]) -> np.ndarray:
    """matching.py: ``sum_c w_c train_c @ target_c.T`` (w renormalised to sum 1), mean within each subtask of
    the target rows (``subtasks[j]`` names row j's), max over subtasks. [N] float64."""
    w = np.asarray(weights, dtype=np.float64)
    w = w / w.sum() if w.sum() != 1 else w
    sim = sum(c * (np.asarray(t, np.float64) @ np.asarray(v, np.float64).T) for c, t, v in zip(w, train, target))
    names = list(dict.fromkeys(subtasks))
    groups = np.array([names.index(s) for s in subtasks])
    return np.stack([sim[:, groups == g].mean(axis=1) for g in range(len(names))], axis=1).max(axis=1)


def target_conversations(tasks: list[str], n_target: int,
                         protocol=None) -> tuple[list[tuple[str, list[dict]]], list[str]]:
    """[(task, [user, assistant])] from each task's held-out few-shot docs, and the names of tasks skipped."""
    from selbench.lm_eval_runner import task_manager
    from selbench.methods.eval_distribution import held_out_pairs

    out, skipped = [], []
    for name in [t for t in tasks if t.startswith("heldout:")]:
        if name != "heldout:alpaca_eval":
            raise ValueError(f"less: unknown held-out target {name!r}; the one known is 'heldout:alpaca_eval'")
        out += [(name, [{"role": "user", "content": q}, {"role": "assistant", "content": a}])
                for q, a in held_out_pairs(protocol, FEWSHOT_SEED)[:n_target]]
    tasks = [t for t in tasks if not t.startswith("heldout:")]
    for name, task in (task_manager(tasks).load(tasks)["tasks"].items() if tasks else ()):
        c = task.config
        split = task.fewshot_cfg.split or c.training_split or c.validation_split
        if split is None or split == c.test_split or not getattr(task, "sampler", None):
            skipped.append(name)
            continue
        docs = task.sampler.set_rnd(FEWSHOT_SEED).sample(min(n_target, len(task.sampler.fewshot_docs())))
        for doc in docs:
            gold = task.doc_to_target(doc)
            if c.output_type == "multiple_choice" and isinstance(gold, int):
                gold = task.doc_to_choice(doc)[gold]
            user = (task.resolve_field(doc, c.description) or "") + task.doc_to_text(doc)
            out.append((name, [{"role": "user", "content": user},
                               {"role": "assistant", "content": str(gold).strip()}]))
    return out, skipped


def warmup(ctx, pool, recipe, fraction: float, epochs: int):
    """The warm-up adapter (cached): the recipe, as LoRA, ``epochs`` on a seeded ``fraction`` of the pool."""
    from selbench.train import finetune

    base, n = ctx.base_model, len(pool)
    k = min(n, max(1, int(n * fraction)))
    ids = [pool.examples[i].id for i in sorted(ctx.rng.permutation(n)[:k])]
    recipe = recipe.model_copy(update={"epochs": epochs, "finetune": "lora"})
    inputs = {"method": "less", "stage": "warmup", "base": base.identity, "dtype": base.dtype,
              "recipe": recipe.model_dump(mode="json"), "seed": ctx.seed, "ids": ids}
    art = ctx.cache.get_or_compute("less", inputs, lambda tmp: finetune(
        base.path, pool.subset(ids), recipe, ctx.seed, tmp, dtype=base.dtype, progress=False,
        chat_template=recipe.chat_template, device=base.device, save_optimizer_state=True),
        engine=None, device=base.device, form="dir")
    return art, len(ids)


@register_method("less", family="trainable-LLM", aspect="importance",
                 description="LESS: LoRA warm-up on 5% of the pool, Adam-preconditioned per-example LoRA gradients "
                             "(random projection) matched by cosine to a target set's gradients (few-shot splits of "
                             "the board's lm-eval tasks), max over target subtasks; top budget.",
                 citation="Xia et al. 2024, LESS: Selecting Influential Data for Targeted Instruction Tuning "
                          "(arXiv 2402.04333)",
                 reference="princeton-nlp/LESS @8abf962 collect_grad_reps.py, get_info.py, matching.py")
def select_less(pool, budget, ctx, target=None, n_target=5, warmup_fraction=0.05, warmup_epochs=4,
                proj_dim=8192, proj_seed=0):
    from selbench.formatting import tokenize_conversation
    from selbench.grads import gradient_features
    from selbench.models import load_tokenizer
    from selbench.protocol import RecipeSpec

    recipe = getattr(ctx.protocol, "recipe", None) or RecipeSpec()
    lm_eval = getattr(getattr(ctx.protocol, "evaluation", None), "lm_eval", None)
    tasks = [target] if isinstance(target, str) else list(target or (lm_eval.tasks if lm_eval else []))
    if not tasks:
        raise ValueError("less: no target tasks: set `target` (lm-eval task names) or the board's lm_eval")
    convs, skipped = target_conversations(tasks, n_target, ctx.protocol)
    if not convs:  # before the warm-up and the pool's gradients, which cost the most
        raise ValueError(f"less: no target examples: every task of {tasks} has only a test split; name tasks with "
                         f"a few-shot, training or validation split, or 'heldout:alpaca_eval', in `target`")
    art, n_warm = warmup(ctx, pool, recipe, warmup_fraction, warmup_epochs)
    tok = load_tokenizer(ctx.base_model.path, recipe.chat_template)

    def feats(messages, optimizer):
        data = [tokenize_conversation(tok, m, recipe.max_seq_len, recipe.loss_on_responses_only)
                for m in messages]
        return gradient_features(ctx.cache, ctx.base_model, art.path, art.key, data, optimizer=optimizer,
                                 dim=proj_dim, seed=proj_seed)

    train = feats([e.messages for e in pool], "adam")
    tgt = feats([m for _, m in convs], "sgd")
    if not len(keep := np.flatnonzero(tgt["scored"])):
        raise ValueError(f"less: no target example of {tasks} has a response token within {recipe.max_seq_len}")
    subtasks = [convs[j][0] for j in keep]
    score = less_scores([train["features"]], [tgt["features"][keep]], [1.0], subtasks)
    score[~train["scored"]] = np.nan
    order = sorted(range(len(pool)), key=lambda i: (np.isnan(score[i]), -np.nan_to_num(score[i]), i))
    notes = [(f"warm-up: {n_warm} examples x {warmup_epochs} epochs (LoRA, the board's recipe), adapter "
             f"{art.key}; final checkpoint only (the reference sums over its epoch checkpoints)"),
             f"target: {len(keep)} examples in {len(set(subtasks))} subtasks: {', '.join(dict.fromkeys(subtasks))}"]
    if skipped:
        notes.append(f"target tasks skipped (no few-shot, training or validation split but test): {skipped}")
    if len(keep) < len(convs):
        notes.append(f"{len(convs) - len(keep)} target examples dropped: no response token in max_seq_len")
    if not train["scored"].all():
        notes.append(f"{int((~train['scored']).sum())} pool examples unscored (no response token): last")
    return Selection([pool.examples[i].id for i in order[:budget]],
                     scores={pool.examples[i].id: float(score[i]) for i in np.flatnonzero(train["scored"])},
                     notes=notes, extras={"warmup_adapter": art.key, "warmup_examples": n_warm,
                                          "target_examples": len(keep), "subtasks": sorted(set(subtasks)),
                                          "skipped_tasks": skipped, "checkpoints": 1})
