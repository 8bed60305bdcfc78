"""Longest responses: Zhao et al. 2024, "Long Is More for Alignment: A Simple but Tough-to-Beat Baseline for
Instruction Fine-Tuning" (ICML 2024, arXiv 2402.04833).

The paper keeps the 1,000 examples with the longest responses in tokens; its repository
(tml-epfl/long-is-more-for-alignment) ships only the selected files, so we follow the paper: rank by the number of
tokens of the response under the base model's tokenizer, ties broken by pool order.
"""

from selbench.registry import register_method
from selbench.select import Selection


@register_method("longest", family="indicator-based", aspect="quality",
                 description="The examples with the longest responses, in base-model tokens.",
                 citation="Zhao et al. 2024, Long Is More for Alignment (arXiv 2402.04833)",
                 reference="paper (the repo ships selected files only)")
def select_longest(pool, budget, ctx):
    tok = ctx.base_model.tokenizer
    lengths = {}
    outputs = [e.output for e in pool]
    for start in ctx.progress(range(0, len(outputs), 512), desc="longest: tokenising"):
        batch = tok(outputs[start:start + 512], add_special_tokens=False)["input_ids"]
        for e, ids in zip(pool.examples[start:start + 512], batch):
            lengths[e.id] = float(len(ids))
    order = sorted(range(len(pool)), key=lambda i: (-lengths[pool.examples[i].id], i))
    return Selection([pool.examples[i].id for i in order[:budget]], scores=lengths)
