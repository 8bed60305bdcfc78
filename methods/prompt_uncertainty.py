"""Prompt uncertainty: Kung et al. 2023, "Active Instruction Tuning: Improving Cross-Task Generalization by
Training on Prompt Sensitive Tasks" (EMNLP 2023, arXiv 2311.00288).

Reference implementation: PlusLabNLP/Active-IT @5807f2b, AL type ``PI-NL-I10-TDTE-High-0.2-Mean-abs-bald``
(``ni_dataset.py`` perturbations, ``ni_trainer.py`` loss, ``TLAL_utils.py`` score). The reference scores *tasks*
(Natural Instructions definitions, 10 instances each) with T5; we apply its formula per example:

* perturbation 0 = the original prompt; perturbations 1..k drop each word of the **instruction** independently
  with probability ``drop_prob`` (0.2); the ``input`` is kept (the reference also perturbs the positive examples'
  inputs, which Alpaca-style pools do not have). Words = whitespace-separated tokens, rejoined with spaces.
* ``p = exp(-mean token NLL)`` of the response after the chat-template prompt under the base model;
  the reference's label is the model's own greedy prediction ("NL"); we use the dataset response (generation for
  every example is too slow on CPU and the response is what is trained on).
* ``score = mean_k |p_k - p_0|``; the highest scores are selected (ties -> earlier pool index).

Randomness: perturbations come from ``numpy.random.default_rng([seed, example-ID hash])``, so an example's
perturbations do not depend on pool order. Cost: ``k + 1`` forward passes per example (the original one is the
shared ``response_losses`` signal). Examples with no scored response token get no score and come last.
"""

from __future__ import annotations

import hashlib

import numpy as np

from selbench.formatting import prompt_and_response_ids
from selbench.registry import register_method
from selbench.select import Selection


def perturb(text: str, rng: np.random.Generator, drop_prob: float) -> str:
    words = text.split()
    keep = rng.random(len(words)) >= drop_prob
    return " ".join(w for w, k in zip(words, keep) if k)


@register_method("prompt_uncertainty", family="indicator-based", aspect="importance",
                 description="Active-IT prompt uncertainty per example: mean |p_perturbed - p_original| of the "
                             "response likelihood under random word drops of the instruction; highest kept.",
                 citation="Kung et al. 2023, Active Instruction Tuning (EMNLP 2023, arXiv 2311.00288)",
                 reference="PlusLabNLP/Active-IT @5807f2b (prompt uncertainty, Mean-abs, drop 0.2), per example")
def select_prompt_uncertainty(pool, budget, ctx, k=10, drop_prob=0.2):
    tok = (ctx.signals.base_model or ctx.base_model).tokenizer
    p0 = np.exp(-ctx.signals.response_losses(pool, conditioned=True, template="chat"))
    pairs, texts = [], []
    for e in pool:
        rng = np.random.default_rng([int(ctx.seed), int(hashlib.sha256(e.id.encode()).hexdigest()[:15], 16)])
        for _ in range(k):
            instr = perturb(e.instruction, rng, drop_prob)
            prompt = f"{instr}\n\n{e.input}" if e.input else instr
            texts.append(prompt)
            pairs.append(prompt_and_response_ids(tok, prompt, e.output))
    losses = ctx.signals.pair_token_losses(pairs, name=f"prompt_uncertainty[k={k},p={drop_prob},seed={ctx.seed}]")
    pk = np.array([np.exp(-np.mean(x, dtype=np.float64)) if len(x) else np.nan for x in losses])
    pk = pk.reshape(len(pool), k) if k else np.zeros((len(pool), 0))
    with np.errstate(invalid="ignore"):
        score = np.abs(pk - p0[:, None]).mean(axis=1) if k else np.zeros(len(pool))
    finite = np.isfinite(score)
    order = sorted(range(len(pool)), key=lambda i: (not finite[i], -score[i] if finite[i] else 0.0, i))
    chosen = order[:budget]
    notes = [f"prompt uncertainty: k={k} perturbations, drop_prob={drop_prob}, label = dataset response"]
    if int(finite.sum()) < budget:
        notes.append(f"only {int(finite.sum())} examples have a score; topped up with unscored ones in pool order")
    scores = {pool.examples[i].id: float(score[i]) for i in range(len(pool)) if finite[i]}
    return Selection([pool.examples[i].id for i in chosen], scores=scores, notes=notes,
                     extras={"example_perturbation": texts[:k]})
