"""One recipe on 1 or 2 processes: DDP through accelerate (gloo on CPU) with the same global batch follows the same
loss curve as one process."""

from __future__ import annotations

import pytest

from conftest import alpaca_rows
from selbench.data import Example
from selbench.protocol import RecipeSpec
from selbench.train import finetune, launch_finetune


def examples(n: int) -> list[Example]:
    out = []
    for i, r in enumerate(alpaca_rows(n)):
        msgs = ({"role": "user", "content": r["instruction"]}, {"role": "assistant", "content": r["output"]})
        out.append(Example(id=f"e{i}", messages=msgs, instruction=r["instruction"], output=r["output"]))
    return out


def recipe(grad_accum: int) -> dict:
    # LoRA dropout 0: with dropout, each process draws its own masks and the curves would differ by that noise
    return {"finetune": "lora", "lora": {"r": 4, "alpha": 8, "dropout": 0.0, "target_modules": ["q_proj", "v_proj"]},
            "lr": 1e-3, "batch_size": 2, "grad_accum": grad_accum, "max_seq_len": 64, "epochs": 1}


@pytest.mark.slow
def test_two_processes_follow_the_one_process_loss_curve(tmp_path, tiny_model_dir):
    data = examples(10)  # 5 micro-batches of 2: the last step has 1, so one process joins it with nothing
    one = finetune(str(tiny_model_dir), data, RecipeSpec.model_validate(recipe(2)), 0, tmp_path / "one",
                   progress=False)
    two = launch_finetune(2, str(tiny_model_dir), data, RecipeSpec.model_validate(recipe(2)), 0, tmp_path / "two")
    assert two["grad_accum_per_process"] == 1 and two["processes"] == 2
    assert two["steps"] == one["steps"] == 3
    assert two["trained_tokens"] == one["trained_tokens"] and two["total_tokens"] == one["total_tokens"]
    for a, b in zip(one["loss_curve"], two["loss_curve"]):
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-5, abs=1e-6), (one["loss_curve"], two["loss_curve"])
    assert (tmp_path / "two" / "adapter_model.safetensors").is_file()
