"""LESS (methods/less.py) and its gradient-feature service (harness/grads.py) on the tiny random llama: the train
stage's optimizer state, per-example LoRA gradients, Adam preconditioning on hand-made numbers, the seeded
projection, the matching rule, the target set from lm-eval's few-shot splits, and the method end to end.
Agreement with LESS's own code: tests/test_conformance.py::test_less_features_and_matching_match_less."""

from __future__ import annotations

import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from conftest import alpaca_rows
from selbench.cache import ArtifactCache
from selbench.data import Pool, normalise_row
from selbench.formatting import tokenize_conversation
from selbench.grads import (
    OPTIMIZER_STATE,
    adam_precondition,
    example_gradient,
    gradient_features,
    load_lora_model,
    lora_names,
    project,
)
from selbench.methods.eval_distribution import held_out_pairs
from selbench.methods.less import less_scores, target_conversations
from selbench.models import BaseModelHandle, ResolvedModel, load_tokenizer
from selbench.paths import data_dir
from selbench.protocol import RecipeSpec
from selbench.ref_likelihood import reference_pairs
from selbench.registry import get_method
from selbench.select import SelectionContext, run_selection
from selbench.train import finetune

RECIPE = RecipeSpec(lr=1e-3, epochs=2, batch_size=2, max_seq_len=160)


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """The tiny model's per-example forwards and backwards are too small to share: on a busy 2-core machine two
    intra-op threads made this file 5x slower (100 s against 21 s)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def pool() -> Pool:
    rows = alpaca_rows(24)
    rows[5]["instruction"] = "an overly long prompt " * 60  # no response token within max_seq_len: unscored
    return Pool([normalise_row(r, "alpaca", f"row {i}") for i, r in enumerate(rows)])


@pytest.fixture(scope="module")
def handle(tiny_model_dir):
    return BaseModelHandle(ResolvedModel(str(tiny_model_dir), "tiny", "tiny"), chat_template="model")


@pytest.fixture(scope="module")
def adapter(tmp_path_factory, pool, handle):
    out = tmp_path_factory.mktemp("warmup")
    finetune(handle.path, pool.subset(pool.ids[:6]), RECIPE, 0, out, progress=False, save_optimizer_state=True)
    return out


def tokenized(handle, pool):
    tok = load_tokenizer(handle.path, RECIPE.chat_template)
    return [tokenize_conversation(tok, e.messages, RECIPE.max_seq_len) for e in pool]


def test_train_stage_saves_adam_moments_by_lora_name(adapter, handle):
    state = torch.load(adapter / OPTIMIZER_STATE, weights_only=True)
    model = load_lora_model(handle.path, adapter)
    names = lora_names(model)
    assert names and set(state) == set(names) and all("lora_" in n for n in names)
    for n in names:
        p = model.get_parameter(n)
        assert state[n]["exp_avg"].shape == p.shape and (state[n]["exp_avg_sq"] >= 0).all()
    assert any(state[n]["exp_avg"].abs().sum() > 0 for n in names)


def test_adam_precondition_by_hand():
    g = torch.tensor([1.0, -2.0, 0.0])
    m = torch.tensor([0.5, 0.0, 1e-5 / 0.9])
    v = torch.tensor([0.25, 4.0, 0.0])
    out = adam_precondition(g, m, v).tolist()
    assert out[0] == pytest.approx(0.55 / math.sqrt(0.25075 + 1e-8), rel=1e-6)  # 0.9*0.5 + 0.1*1; 0.999*.25 + .001
    assert out[1] == pytest.approx(-0.2 / math.sqrt(3.996 + 0.004 + 1e-8), rel=1e-6)
    assert out[2] == pytest.approx(1e-5 / math.sqrt(1e-8), rel=1e-5)  # eps inside the root: 0.1, not 1000


def test_projection_is_seeded_and_preserves_geometry():
    g = torch.randn(6, 700, generator=torch.Generator().manual_seed(0))
    a, b, c = project(g, 512, seed=0), project(g, 512, seed=0), project(g, 512, seed=1)
    assert a.shape == (6, 512) and torch.equal(a, b) and not torch.allclose(a, c)
    cos = torch.nn.functional.cosine_similarity
    assert (cos(a[:1], a) - cos(g[:1], g)).abs().max() < 0.15  # Johnson-Lindenstrauss: cosines roughly kept


def test_example_gradient_is_the_mean_response_loss_gradient(adapter, handle, pool):
    model = load_lora_model(handle.path, adapter)
    t = tokenized(handle, pool)[0]
    g = example_gradient(model, t)
    model.zero_grad()
    ids, labels = torch.tensor([t.input_ids]), torch.tensor([t.labels])
    model(input_ids=ids, labels=labels).loss.backward()  # HF's own causal-LM loss, as LESS takes it
    ref = torch.cat([p.grad.reshape(-1) for p in model.parameters() if p.requires_grad])
    assert g.shape == ref.shape and torch.allclose(g, ref, atol=1e-6) and g.abs().sum() > 0


def test_gradient_features_shapes_determinism_and_seed(adapter, handle, pool, tmp_path):
    data = tokenized(handle, pool)[:8]
    run = lambda cache, **kw: gradient_features(ArtifactCache(tmp_path / cache), handle, adapter, "warmup", data,
                                                **{"optimizer": "adam", "dim": 64, "seed": 0, **kw})
    a, b = run("one"), run("two")
    f = a["features"]
    assert f.shape == (8, 64) and f.dtype == np.float32 and np.array_equal(f, b["features"])
    assert not a["scored"][5] and a["scored"].sum() == 7 and not f[5].any()
    assert np.allclose(np.linalg.norm(f[a["scored"]], axis=1), 1, atol=1e-5)
    assert not np.allclose(run("one", seed=1)["features"], f)  # another projection
    assert not np.allclose(run("one", optimizer="sgd")["features"], f)  # no preconditioning
    assert len(list((tmp_path / "one" / "grads").iterdir())) == 3  # one artifact per setting; the rerun read it


def test_less_scores_mean_within_max_over_subtasks():
    train = np.array([[1.0, 0.0], [0.0, 1.0], [0.6, 0.8]])
    target = np.array([[1.0, 0.0], [0.0, 1.0], [0.0, 1.0]])
    s = less_scores([train], [target], [1.0], ["a", "b", "b"])
    assert s.tolist() == pytest.approx([1.0, 1.0, 0.8])
    s = less_scores([train], [target], [1.0], ["a", "a", "a"])  # one subtask: the mean
    assert s.tolist() == pytest.approx([1 / 3, 2 / 3, (0.6 + 1.6) / 3])
    # checkpoints: weights renormalised, similarities summed before the mean and the max (matching.py L75-79)
    two = less_scores([train, train[::-1]], [target, target], [3.0, 1.0], ["a", "b", "b"])
    sim = 0.75 * train @ target.T + 0.25 * train[::-1] @ target.T
    assert two.tolist() == pytest.approx(np.maximum(sim[:, 0], sim[:, 1:].mean(axis=1)).tolist())


def test_target_set_from_fewshot_splits_never_test():
    convs, skipped = target_conversations(["gsm8k_local", "arc_easy_local", "mmlu_local"], 3)
    assert skipped == ["arc_easy_local"]  # test split only
    assert [t for t, _ in convs] == ["gsm8k_local"] * 3 + ["mmlu_local"] * 3
    assert all(m[0]["role"] == "user" and m[1]["content"] in "ABCD" for t, m in convs if t == "mmlu_local")
    assert all(m[0]["content"].startswith("Question:") and m[1]["content"] for t, m in convs if t == "gsm8k_local")
    assert target_conversations(["gsm8k_local"], 3)[0] == convs[:3]  # lm-eval's sampler, fixed seed


def test_target_set_from_held_out_alpaca_eval():
    """The board's own distribution as the target: AlpacaEval pairs that no evaluator scores, never scored ones."""
    convs, skipped = target_conversations(["arc_easy_local", "heldout:alpaca_eval"], 4)
    assert skipped == ["arc_easy_local"] and [t for t, _ in convs] == ["heldout:alpaca_eval"] * 4
    pairs = [(m[0]["content"], m[1]["content"]) for _, m in convs]
    assert pairs == held_out_pairs(None, 1234)[:4]
    scored = reference_pairs(data_dir() / "open_ended", "alpaca_eval", 0)[:200]  # ref_likelihood's default items
    assert len(set(scored)) == 200 and not set(scored) & set(pairs)
    with pytest.raises(ValueError, match="unknown held-out target 'heldout:mt_bench'"):
        target_conversations(["heldout:mt_bench"], 2)


def test_less_end_to_end(pool, handle, tmp_path):
    protocol = SimpleNamespace(recipe=RECIPE, evaluation=SimpleNamespace(
        lm_eval=SimpleNamespace(tasks=["arc_easy_local", "gsm8k_local", "mmlu_local"])))
    ctx = lambda: SelectionContext(seed=0, cache=ArtifactCache(tmp_path / "cache"), base_model=handle,
                                   protocol=protocol)
    spec = get_method("less")
    sel, wall = run_selection(spec, pool, 7, ctx(), {"n_target": 2, "proj_dim": 64, "warmup_fraction": 0.25})
    assert len(sel.ids) == 7 == len(set(sel.ids)) and wall > 0
    assert sel.extras["warmup_examples"] == 6 and sel.extras["target_examples"] == 4
    assert sel.extras["subtasks"] == ["gsm8k_local", "mmlu_local"] and sel.extras["skipped_tasks"] == ["arc_easy_local"]
    assert pool.examples[5].id not in sel.scores and len(sel.scores) == len(pool) - 1
    assert [sel.scores[i] for i in sel.ids] == sorted(sel.scores.values(), reverse=True)[:7]
    assert any("final checkpoint only" in n for n in sel.notes)
    assert len(list((tmp_path / "cache" / "less").iterdir())) == 1  # the warm-up adapter
    again, _ = run_selection(spec, pool, 7, ctx(), {"n_target": 2, "proj_dim": 64, "warmup_fraction": 0.25})
    assert again.ids == sel.ids and len(list((tmp_path / "cache" / "grads").iterdir())) == 2  # reused
    other, _ = run_selection(spec, pool, 7, ctx(), {"n_target": 2, "proj_dim": 64, "warmup_fraction": 0.25,
                                                    "target": ["mmlu_local"]})
    assert other.extras["subtasks"] == ["mmlu_local"] and other.extras["target_examples"] == 2
    with pytest.raises(ValueError, match="no target tasks"):
        spec.fn(pool, 7, SelectionContext(seed=0, cache=ArtifactCache(tmp_path / "c2"), base_model=handle))
    with pytest.raises(ValueError, match="no target examples: every task of .'arc_easy_local'. has only a test"):
        spec.fn(pool, 7, ctx(), target=["arc_easy_local"])
    assert len(list((tmp_path / "cache" / "less").iterdir())) == 1  # failed before any warm-up of its own
    protocol.evaluation.model_dump = lambda: {"ref_likelihood": {"sets": ["alpaca_eval"], "per_set": 200}}
    held, _ = run_selection(spec, pool, 7, ctx(), {"n_target": 2, "proj_dim": 64, "warmup_fraction": 0.25,
                                                   "target": ["heldout:alpaca_eval"]})
    assert held.extras["subtasks"] == ["heldout:alpaca_eval"] and held.extras["target_examples"] == 2
    assert len(held.ids) == 7 and held.scores != sel.scores  # another target, other scores
