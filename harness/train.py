"""Fine-tuning stage: one plain recipe for every cell (torchtune-style: a loop you can read top to bottom).

LoRA (peft) or full fine-tuning of the base model on the selected examples, with the protocol's chat template,
loss on response tokens only, length-grouped batches to keep padding low, and a fixed seed that makes the run
deterministic on CPU. Saves the adapter (or weights) plus ``train_report.json``: loss curve, trained tokens,
padding fraction, wall time.
"""

from __future__ import annotations

import json
import logging
import math
import random
import time
from pathlib import Path
from typing import Sequence

import torch
from tqdm.auto import tqdm

from .data import Example
from .formatting import IGNORE_INDEX, Tokenized, tokenize_conversation
from .models import load_tokenizer, torch_dtype

log = logging.getLogger(__name__)

def length_grouped_batches(lengths: Sequence[int], batch_size: int, rng: random.Random) -> list[list[int]]:
    """Shuffle, sort within mega-batches of 50 batches by length, cut into batches, shuffle the batches.

    The same idea as HF's ``LengthGroupedSampler``: similar lengths share a batch (little padding) while the
    order of batches stays random.
    """
    idx = list(range(len(lengths)))
    rng.shuffle(idx)
    mega = batch_size * 50
    batches = []
    for start in range(0, len(idx), mega):
        chunk = sorted(idx[start:start + mega], key=lambda i: -lengths[i])
        batches += [chunk[i:i + batch_size] for i in range(0, len(chunk), batch_size)]
    rng.shuffle(batches)
    return batches


def collate(items: list[Tokenized], pad_id: int) -> dict[str, torch.Tensor]:
    width = max(len(t) for t in items)
    ids = torch.full((len(items), width), pad_id, dtype=torch.long)
    labels = torch.full((len(items), width), IGNORE_INDEX, dtype=torch.long)
    mask = torch.zeros((len(items), width), dtype=torch.long)
    for row, t in enumerate(items):
        n = len(t)
        ids[row, :n] = torch.tensor(t.input_ids)
        labels[row, :n] = torch.tensor(t.labels)
        mask[row, :n] = 1
    return {"input_ids": ids, "labels": labels, "attention_mask": mask}


def _set_determinism(seed: int) -> None:
    random.seed(seed)
    torch.manual_seed(seed)
    torch.use_deterministic_algorithms(True, warn_only=True)


def finetune(base_path: str, examples: list[Example], recipe, seed: int, out_dir: str | Path,
             dtype: str = "float32", chat_template: str | None = None, progress: bool = True,
             device: str = "cpu") -> dict:
    """Train on ``examples`` with ``recipe`` (a ``RecipeSpec``) and save the result into ``out_dir``."""
    from transformers import AutoModelForCausalLM, get_scheduler

    out_dir = Path(out_dir)
    t_start = time.perf_counter()
    _set_determinism(seed)
    tok = load_tokenizer(base_path, chat_template or recipe.chat_template)
    data = [tokenize_conversation(tok, e.messages, recipe.max_seq_len, recipe.loss_on_responses_only)
            for e in examples]
    data = [d for d in data if d.trained_tokens > 0]
    if not data:
        raise ValueError("no example has a response token inside max_seq_len; raise recipe.max_seq_len")

    model = AutoModelForCausalLM.from_pretrained(base_path, dtype=torch_dtype(dtype)).to(device)
    if recipe.finetune == "lora":
        from peft import LoraConfig, get_peft_model

        model = get_peft_model(model, LoraConfig(r=recipe.lora.r, lora_alpha=recipe.lora.alpha,
                                                 lora_dropout=recipe.lora.dropout,
                                                 target_modules=list(recipe.lora.target_modules),
                                                 task_type="CAUSAL_LM"))
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=recipe.lr, weight_decay=recipe.weight_decay)

    rng = random.Random(seed)
    epochs = math.ceil(recipe.epochs)
    lengths = [len(d) for d in data]
    plan = []  # (epoch, batch indices); a fractional last epoch uses a prefix of its batches
    for ep in range(epochs):
        batches = length_grouped_batches(lengths, recipe.batch_size, rng) if recipe.group_by_length else \
            [list(range(len(data)))[i:i + recipe.batch_size] for i in range(0, len(data), recipe.batch_size)]
        if ep == epochs - 1 and recipe.epochs < epochs:
            batches = batches[: max(1, round(len(batches) * (recipe.epochs - ep)))]
        plan += [(ep, b) for b in batches]
    steps = math.ceil(len(plan) / recipe.grad_accum)
    scheduler = get_scheduler(recipe.scheduler, optimizer, num_warmup_steps=int(recipe.warmup_ratio * steps),
                              num_training_steps=steps)

    curve, trained_tokens, padded, real = [], 0, 0, 0
    pbar = tqdm(total=steps, desc="train", leave=False, disable=not progress, dynamic_ncols=True)
    step_loss, step_tokens = 0.0, 0
    for i, (ep, batch_idx) in enumerate(plan):
        batch = {k: v.to(device) for k, v in collate([data[j] for j in batch_idx], tok.pad_token_id).items()}
        n_tok = int((batch["labels"][:, 1:] != IGNORE_INDEX).sum())
        out = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
        # Sum over tokens, then normalise by the tokens of the whole accumulated step: every response token
        # weighs the same however the batches split it.
        logits = out.logits[:, :-1].reshape(-1, out.logits.size(-1)).float()
        loss_sum = torch.nn.functional.cross_entropy(logits, batch["labels"][:, 1:].reshape(-1),
                                                     ignore_index=IGNORE_INDEX, reduction="sum")
        loss_sum.backward()
        step_loss += loss_sum.item()
        step_tokens += n_tok
        trained_tokens += n_tok
        padded += batch["input_ids"].numel()
        real += int(batch["attention_mask"].sum())
        if (i + 1) % recipe.grad_accum == 0 or i == len(plan) - 1:
            for p in params:
                if p.grad is not None:
                    p.grad.div_(max(step_tokens, 1))
            torch.nn.utils.clip_grad_norm_(params, recipe.max_grad_norm)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            curve.append({"step": len(curve) + 1, "epoch": ep, "loss": step_loss / max(step_tokens, 1),
                          "lr": scheduler.get_last_lr()[0]})
            pbar.set_postfix(loss=f"{curve[-1]['loss']:.3f}")
            pbar.update(1)
            step_loss, step_tokens = 0.0, 0
    pbar.close()

    model.save_pretrained(out_dir)
    if recipe.finetune == "full":
        tok.save_pretrained(out_dir)
    report = {"steps": steps, "examples": len(data), "dropped_examples": len(examples) - len(data),
              "trained_tokens": trained_tokens, "total_tokens": real,
              "padding_fraction": round(1 - real / padded, 4) if padded else 0.0,
              "final_loss": curve[-1]["loss"], "loss_curve": curve, "device": device, "dtype": dtype,
              "wall_s": round(time.perf_counter() - t_start, 2)}
    (out_dir / "train_report.json").write_text(json.dumps(report, indent=2))
    return report
