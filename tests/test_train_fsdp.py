"""FSDP (torch FSDP2 over gloo on the CPU) follows the 1-process loss curve and saves a complete model; gradient
checkpointing changes no gradient and no hash."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file

from selbench.protocol import Protocol, RecipeSpec
from selbench.train import STRATEGY_ENV, finetune, launch_finetune, train_strategy
from test_train_distributed import examples, recipe


def full_recipe(grad_accum: int, checkpointing: bool = False) -> dict:
    return {"finetune": "full", "lr": 1e-3, "batch_size": 2, "grad_accum": grad_accum, "max_seq_len": 64,
            "epochs": 1, "gradient_checkpointing": checkpointing}


def assert_same_curve(a: dict, b: dict) -> None:
    assert a["steps"] == b["steps"] and a["trained_tokens"] == b["trained_tokens"]
    for x, y in zip(a["loss_curve"], b["loss_curve"]):
        assert x["loss"] == pytest.approx(y["loss"], rel=1e-5, abs=1e-6), (a["loss_curve"], b["loss_curve"])


def assert_same_weights(a_file, b_file) -> None:
    a, b = load_file(a_file), load_file(b_file)
    assert a.keys() == b.keys() and a
    for k in a:
        assert torch.allclose(a[k], b[k], rtol=1e-4, atol=1e-6), k


def test_gradient_checkpointing_leaves_the_hash_and_the_cache_key_alone():
    pool = {"path": "p.json"}
    base = {"name": "b", "base_model": {"path": "m"}, "pool": pool, "budgets": [10], "methods": [{"name": "random"}]}
    on = Protocol.model_validate({**base, "recipe": {"gradient_checkpointing": True}})
    assert on.hash == Protocol.model_validate(base).hash
    assert "gradient_checkpointing" not in on.recipe.identity()
    assert on.recipe.identity() == {k: v for k, v in RecipeSpec().model_dump(mode="json").items()
                                    if k != "gradient_checkpointing"}


def test_gradient_checkpointing_computes_the_same_gradients(tmp_path, tiny_model_dir):
    data = examples(6)
    for make in (lambda gc: {**recipe(1), "gradient_checkpointing": gc}, lambda gc: full_recipe(1, gc)):
        plain = finetune(str(tiny_model_dir), data, RecipeSpec.model_validate(make(False)), 0, tmp_path / "plain",
                         progress=False)
        ckpt = finetune(str(tiny_model_dir), data, RecipeSpec.model_validate(make(True)), 0, tmp_path / "ckpt",
                        progress=False)
        assert [s["loss"] for s in plain["loss_curve"]] == [s["loss"] for s in ckpt["loss_curve"]]


def test_strategy_comes_from_the_environment(monkeypatch, tmp_path, tiny_model_dir):
    monkeypatch.delenv(STRATEGY_ENV, raising=False)
    assert train_strategy() == "ddp"
    monkeypatch.setenv(STRATEGY_ENV, "FSDP")
    assert train_strategy() == "fsdp"
    monkeypatch.setenv(STRATEGY_ENV, "zero3")
    with pytest.raises(ValueError, match="SELBENCH_TRAIN_STRATEGY"):
        train_strategy()
    with pytest.raises(ValueError, match="strategy 'deepspeed'"):
        launch_finetune(2, str(tiny_model_dir), examples(4), RecipeSpec.model_validate(recipe(2)), 0, tmp_path,
                        strategy="deepspeed")


@pytest.mark.slow
def test_fsdp_lora_on_two_processes_follows_one_process(tmp_path, tiny_model_dir):
    data = examples(10)  # the last step has one micro-batch: the second process joins it with a zero gradient
    one = finetune(str(tiny_model_dir), data, RecipeSpec.model_validate(recipe(2)), 0, tmp_path / "one",
                   progress=False)
    two = launch_finetune(2, str(tiny_model_dir), data, RecipeSpec.model_validate(recipe(2)), 0, tmp_path / "two",
                          strategy="fsdp")
    assert two["strategy"] == "fsdp" and two["processes"] == 2 and two["total_tokens"] == one["total_tokens"]
    assert_same_curve(one, two)
    assert_same_weights(tmp_path / "one" / "adapter_model.safetensors", tmp_path / "two" / "adapter_model.safetensors")


@pytest.mark.slow
def test_fsdp_full_fine_tune_with_checkpointing_saves_the_whole_model(tmp_path, tiny_model_dir):
    from transformers import AutoModelForCausalLM

    data = examples(8)
    one = finetune(str(tiny_model_dir), data, RecipeSpec.model_validate(full_recipe(2)), 0, tmp_path / "one",
                   progress=False)
    two = launch_finetune(2, str(tiny_model_dir), data, RecipeSpec.model_validate(full_recipe(2, True)), 0,
                          tmp_path / "two", strategy="fsdp")
    assert_same_curve(one, two)
    assert_same_weights(tmp_path / "one" / "model.safetensors", tmp_path / "two" / "model.safetensors")
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "two")  # loads as a plain model, tokenizer alongside
    assert model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()
    assert (tmp_path / "two" / "tokenizer.json").is_file()
