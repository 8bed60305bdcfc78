"""Reward-model scoring: the plain baseline of keeping the examples a reward model scores highest, as used for
quality by MoDS (Du et al. 2023, "MoDS: Model-oriented Data Selection for Instruction Tuning", arXiv 2311.15653)
and InstructMining (Cao et al. 2023, arXiv 2307.06290).

Reference followed: CASIA-LM/MoDS ``quality-evaluation/quality-evaluation.py`` @3760373: the reward of an example is
``logits[0]`` of ``OpenAssistant/reward-model-deberta-v3-large-v2`` on ``tokenizer(question, answer)``, question =
the instruction (+ ``"\\n"`` + input when there is one), answer = the response. Here: the ``budget`` highest
rewards (MoDS thresholds instead; see ``mods``), ties in pool order.

``model`` names the reward model: a local directory (or a hub ID, loaded when the hub can be reached) is loaded
with ``AutoModelForSequenceClassification`` (``SignalCache.classifier_scores``, cached per model identity).
Offline there is no reward-model checkpoint; when ``model`` cannot be loaded, ``substitute`` is used and named in
the record (``extras["reward_model"]`` and a note); ``substitute: ""`` makes that an error instead:

* ``"base_loglik"``: the base model's mean token log-likelihood of the response given the instruction under the
  protocol's chat template (``-SignalCache.response_losses(conditioned=True)``, the signal ``ifd`` and
  ``perplexity`` share). A proxy only: it rewards fluent, predictable responses, not helpfulness.

Examples without a score (no scored token, a failed pair) are ranked after all scored ones, in pool order.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from selbench.registry import register_method
from selbench.select import Selection

SUBSTITUTES = ("base_loglik",)


def question(e) -> str:
    return f"{e.instruction}\n{e.input}" if e.input else e.instruction


def reward_scores(pool, ctx, model: str, substitute: str, outputs: list[str] | None = None
                  ) -> tuple[np.ndarray, dict, list[str]]:
    """Per-example rewards of (question, response), what scored them, and notes; shared with ``mods``. The
    responses are the pool's, or ``outputs`` (e.g. a seed model's answers, one per example)."""
    if substitute and substitute not in SUBSTITUTES:
        raise ValueError(f"reward: substitute must be one of {SUBSTITUTES} or '', got {substitute!r}")
    answers = [e.output for e in pool] if outputs is None else list(outputs)
    notes, err = [], None
    if model:
        from selbench.models import resolve_base_model
        from selbench.protocol import BaseModelSpec

        local = Path(model).expanduser().is_dir()
        try:
            ident = resolve_base_model(BaseModelSpec(path=model), ctx.cache).identity if local else f"hub:{model}"
            path = str(Path(model).expanduser().resolve()) if local else model
            scores = ctx.signals.classifier_scores([(question(e), a) for e, a in zip(pool, answers)], path,
                                                   identity=ident)
            return np.asarray(scores, dtype=np.float64), {"kind": "reward model", "model": model,
                                                          "identity": ident}, notes
        except (OSError, ValueError, ImportError) as e:  # not on disk, no hub access
            err = f"{type(e).__name__}: {str(e).splitlines()[0][:200]}"
            if not substitute:
                raise RuntimeError(f"reward: the reward model {model!r} cannot be loaded ({err}) and no "
                                   f"substitute is allowed") from e
    if not substitute:
        raise ValueError("reward: give `model` (a reward model) or a `substitute`")
    if outputs is None:  # the signal ifd and perplexity share
        scores = -ctx.signals.response_losses(pool, conditioned=True)
    else:
        from selbench.formatting import prompt_and_response_ids

        tok = ctx.base_model.tokenizer
        losses = ctx.signals.pair_token_losses([prompt_and_response_ids(tok, e.prompt, a)
                                                for e, a in zip(pool, answers)], name="reward_substitute")
        scores = np.array([-float(np.mean(t, dtype=np.float64)) if len(t) else np.nan for t in losses])
    h = ctx.base_model
    notes.append(f"reward model {model!r} not loadable ({err}): SUBSTITUTE '{substitute}' = the base model's mean "
                 f"token log-likelihood of the response given the instruction (a proxy, not a reward model)"
                 if model else f"no reward model given: substitute '{substitute}'")
    return scores, {"kind": "substitute", "substitute": substitute, "model": f"base model {h.identity}",
                    "requested": model, "load_error": err}, notes


@register_method("reward", family="small-model", aspect="quality",
                 description="Top examples by a reward model's score of (instruction, response); offline, a named "
                             "substitute (the base model's response log-likelihood).",
                 citation="Du et al. 2023, MoDS (arXiv 2311.15653); Cao et al. 2023, InstructMining "
                          "(arXiv 2307.06290); reward model: OpenAssistant/reward-model-deberta-v3-large-v2",
                 reference="CASIA-LM/MoDS @3760373 quality-evaluation/quality-evaluation.py")
def select_reward(pool, budget, ctx, model="OpenAssistant/reward-model-deberta-v3-large-v2",
                  substitute="base_loglik"):
    scores, who, notes = reward_scores(pool, ctx, model, substitute)
    ok = np.isfinite(scores)
    order = sorted(np.flatnonzero(ok).tolist(), key=lambda i: -scores[i]) + np.flatnonzero(~ok).tolist()
    notes.append(f"scored by {who['kind']} ({who['model']}); {int(ok.sum())} of {len(pool)} scored"
                 + (f", {int((~ok).sum())} unscored ranked last" if (~ok).any() else ""))
    return Selection([pool.examples[i].id for i in order[:budget]],
                     scores={pool.examples[i].id: float(scores[i]) for i in np.flatnonzero(ok)},
                     notes=notes, extras={"reward_model": who})
