"""Planted-effect controls and the reference-likelihood evaluator, on real code paths (tiny llama)."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from conftest import alpaca_rows
from selbench import registry
from selbench.cache import ArtifactCache
from selbench.data import Pool, normalise_row
from selbench.evaluate import EvalContext, ModelUnderTest, evaluate_cached, load_evaluators
from selbench.protocol import Protocol
from selbench.select import SelectionContext, cached_selection, run_selection


@pytest.fixture
def pool():
    return Pool([normalise_row(r, "alpaca", f"t:{i}") for i, r in enumerate(alpaca_rows(40))])


def protocol(**evaluation) -> Protocol:
    return Protocol.model_validate({"name": "t", "base_model": {"path": "m"}, "pool": {"path": "p"},
                                    "budgets": [8], "methods": [{"name": "random"}], "evaluation": evaluation})


def test_shuffled_responses_keeps_randoms_subset_and_mismatches_every_answer(tmp_path, pool):
    ctx = SelectionContext(seed=3, cache=ArtifactCache(tmp_path))
    rand, _ = run_selection(registry.get_method("random"), pool, 10, ctx)
    shuf, _ = run_selection(registry.get_method("shuffled_responses"), pool, 10, ctx)
    assert shuf.ids == rand.ids and shuf.hash != rand.hash  # same examples, different training data
    trained = shuf.training_examples(pool)
    originals = {e.id: e for e in pool.subset(shuf.ids)}
    assert sorted(e.output for e in trained) == sorted(e.output for e in originals.values())
    for e in trained:
        assert e.output != originals[e.id].output and e.instruction == originals[e.id].instruction
        assert e.messages[-1] == {"role": "assistant", "content": e.output}  # what the trainer tokenizes
    # the replacements survive the selection cache
    again, meta = cached_selection(registry.get_method("shuffled_responses"), pool, 10, ctx, {}, {"test": "k"})
    again, meta = cached_selection(registry.get_method("shuffled_responses"), pool, 10, ctx, {}, {"test": "k"})
    assert meta["cached"] and again.hash == shuf.hash


def test_eval_distribution_trains_on_held_out_alpaca_eval_items(tmp_path, pool, data_dir):
    from selbench.ref_likelihood import RefLikelihoodSettings, reference_pairs

    proto = protocol(ref_likelihood={"sets": ["alpaca_eval"], "per_set": 50},
                     alpaca_eval={"max_instances": 10})
    ctx = SelectionContext(seed=0, cache=ArtifactCache(tmp_path), protocol=proto)
    sel, _ = run_selection(registry.get_method("eval_distribution"), pool, 8, ctx)
    trained = sel.training_examples(pool)
    scored = {q for q, _ in reference_pairs(data_dir / "open_ended", "alpaca_eval", 0)[:50]}
    rows = json.loads((data_dir / "open_ended/alpaca_eval/reference_outputs/gpt4_1106_preview/model_outputs.json")
                      .read_text())
    by_instruction = {r["instruction"]: r["output"] for r in rows}
    judged = {r["instruction"] for r in rows[:10]}
    for e in trained:
        assert e.instruction in by_instruction and e.output == by_instruction[e.instruction]
        assert e.instruction not in scored and e.instruction not in judged
        assert e.messages[0]["content"] == e.instruction
    assert RefLikelihoodSettings().per_set == 200


@pytest.mark.slow
def test_ref_likelihood_scores_items_and_moves_with_the_adapter(tmp_path, tiny_model_dir):
    from selbench.protocol import RecipeSpec
    from selbench.train import finetune

    cache = ArtifactCache(tmp_path / "cache")
    spec = {"sets": ["alpaca_eval", "mt_bench"], "per_set": 6, "max_len": 96}
    ctx = EvalContext(protocol(ref_likelihood=spec), cache, None)
    ev = load_evaluators()["ref_likelihood"]
    base = ModelUnderTest("base", str(tiny_model_dir), None, "tiny")
    res, cached = evaluate_cached(ev, base, spec, ctx)
    assert not cached and res.counts == {"items": 12, "scored": 12, "unscored": 0}
    assert res.metrics["nll"].higher_is_better is False and math.isfinite(res.metrics["nll"].value)
    items = [d["item"] for d in res.details]
    assert len(set(items)) == 12 and all(d["scores"]["nll"] > 0 and d["scores"]["bpb"] > 0 for d in res.details)
    assert np.isclose(np.mean([d["scores"]["nll"] for d in res.details]), res.metrics["nll"].value)
    gains = [d["scores"]["instruction_gain"] for d in res.details]  # NLL after another item's instruction - own
    assert res.metrics["instruction_gain"].higher_is_better and np.isclose(np.mean(gains),
                                                                          res.metrics["instruction_gain"].value)
    assert len(set(np.round(gains, 6))) > 1 and all(np.isfinite(gains))

    recipe = RecipeSpec(lr=5e-3, batch_size=4, max_seq_len=96, lora={"r": 4, "alpha": 8,
                                                                      "target_modules": ["q_proj", "v_proj"]})
    from selbench.data import Pool as P

    examples = list(P([normalise_row(r, "alpaca", f"t:{i}") for i, r in enumerate(alpaca_rows(16))]))
    finetune(str(tiny_model_dir), examples, recipe, 0, tmp_path / "adapter")
    tuned = ModelUnderTest("tuned", str(tiny_model_dir), str(tmp_path / "adapter"), "tiny+adapter")
    res2, _ = evaluate_cached(ev, tuned, spec, ctx)
    assert [d["item"] for d in res2.details] == items  # the same items in every cell: paired
    assert res2.metrics["nll"].value != pytest.approx(res.metrics["nll"].value, abs=1e-6)
    assert evaluate_cached(ev, base, spec, ctx)[1]  # cached the second time
