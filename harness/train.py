"""Fine-tuning stage: one plain recipe for every cell (torchtune-style: a loop you can read top to bottom).

LoRA (peft) or full fine-tuning of the base model on the selected examples, with the protocol's chat template,
loss on response tokens only, length-grouped batches to keep padding low, and a fixed seed that makes the run
deterministic on CPU. Saves the adapter (or weights) plus ``train_report.json``: loss curve, trained tokens,
padding fraction, wall time.

One process or many: under ``accelerate launch --multi_gpu`` or ``torchrun`` (DDP through accelerate; NCCL on GPUs,
gloo on CPU) every process builds the same
plan of micro-batches; an optimizer step takes ``grad_accum x processes`` consecutive ones, process ``r`` the
``r``-th group of ``grad_accum``. The global batch is ``batch_size x grad_accum x processes`` and every response
token of a step weighs the same, so 1 process with ``grad_accum: 2`` and 2 processes with ``grad_accum: 1`` follow
the same loss curve. With ``strategy: fsdp`` (``$SELBENCH_TRAIN_STRATEGY``) the processes shard the model instead of
replicating it (torch FSDP2, :mod:`selbench.fsdp`): what a 7B full fine-tune needs. ``recipe.gradient_checkpointing``
recomputes activations in the backward pass. ``python -m selbench.train JOB.json`` runs a recipe from a JSON job file,
as a launcher needs.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import random
import sys
import time
from pathlib import Path
from typing import Sequence

import torch
from tqdm.auto import tqdm

from .data import Example
from .formatting import IGNORE_INDEX, Tokenized, tokenize_conversation
from .fsdp import full_state_dict, shard_model
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


def _accelerator(device: str):
    """accelerate's ``Accelerator`` when this process is one of several (``accelerate launch``), else None."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return None
    from accelerate import Accelerator

    return Accelerator(cpu=device == "cpu")


def finetune(base_path: str, examples: list[Example], recipe, seed: int, out_dir: str | Path,
             dtype: str = "float32", chat_template: str | None = None, progress: bool = True,
             device: str = "cpu", save_optimizer_state: bool = False, strategy: str = "ddp") -> dict:
    """Train on ``examples`` with ``recipe`` (a ``RecipeSpec``) and save the result into ``out_dir``.

    ``save_optimizer_state``: also write AdamW's final moments per trainable parameter name,
    ``{name: {"exp_avg", "exp_avg_sq"}}``, to ``optimizer_state.pt`` (LESS's Adam-preconditioned gradients,
    ``selbench.grads``). ``strategy``: ``ddp`` or ``fsdp``, when several processes run it."""
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

    accelerator = _accelerator(device)  # None in a single process
    world, rank = (accelerator.num_processes, accelerator.process_index) if accelerator else (1, 0)
    if accelerator:
        device = str(accelerator.device)
    sharded = accelerator is not None and strategy == "fsdp"
    if sharded:  # float32 master weights, computing in `dtype`; fully_shard moves each shard to the device
        model = AutoModelForCausalLM.from_pretrained(base_path, dtype=torch.float32)
    else:
        model = AutoModelForCausalLM.from_pretrained(base_path, dtype=torch_dtype(dtype)).to(device)
    if recipe.gradient_checkpointing:  # non-reentrant: LoRA needs no input that requires grad
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    if recipe.finetune == "lora":
        from peft import LoraConfig, get_peft_model

        model = get_peft_model(model, LoraConfig(r=recipe.lora.r, lora_alpha=recipe.lora.alpha,
                                                 lora_dropout=recipe.lora.dropout,
                                                 target_modules=list(recipe.lora.target_modules),
                                                 task_type="CAUSAL_LM"))
    model.train()
    if sharded:
        model = shard_model(model, torch_dtype(dtype))
    elif accelerator:
        model = accelerator.prepare_model(model)
    params = [p for p in model.parameters() if p.requires_grad]  # FSDP: the shards, so made after shard_model
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
    per_step = recipe.grad_accum * world  # micro-batches of one optimizer step, over all processes
    steps = math.ceil(len(plan) / per_step)
    scheduler = get_scheduler(recipe.scheduler, optimizer, num_warmup_steps=int(recipe.warmup_ratio * steps),
                              num_training_steps=steps)

    counted = [sum(1 for x in d.labels[1:] if x != IGNORE_INDEX) for d in data]  # tokens the loss counts, each

    def n_tokens(batch_idx) -> int:
        return sum(counted[j] for j in batch_idx)

    curve, trained_tokens, padded, real = [], 0, 0, 0
    t_loop = time.perf_counter()  # the optimizer steps alone: what bench/train_bench.py compares
    pbar = tqdm(total=steps, desc="train", leave=False, disable=not progress or rank > 0, dynamic_ncols=True)
    for s in range(steps):
        group = plan[s * per_step:(s + 1) * per_step]
        step_tokens = sum(n_tokens(b) for _, b in group)  # of the whole step, on every process: no collective
        mine = group[rank * recipe.grad_accum:(rank + 1) * recipe.grad_accum]
        weight = 1.0
        if not mine:  # a short last step left this process nothing: it joins DDP's all-reduce with a zero gradient
            mine, weight = group[:1], 0.0
        step_loss = 0.0
        for k, (ep, batch_idx) in enumerate(mine):
            batch = {key: v.to(device) for key, v in collate([data[j] for j in batch_idx], tok.pad_token_id).items()}
            # FSDP reduce-scatters every micro-batch: its no_sync would hold unsharded gradients
            sync = accelerator.no_sync(model) if accelerator and not sharded and k < len(mine) - 1 else \
                contextlib.nullcontext()
            with sync:
                out = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
                # Sum over tokens, then normalise by the tokens of the whole step: every response token weighs the
                # same however the batches (and processes) split it.
                logits = out.logits[:, :-1].reshape(-1, out.logits.size(-1)).float()
                loss_sum = torch.nn.functional.cross_entropy(logits, batch["labels"][:, 1:].reshape(-1),
                                                             ignore_index=IGNORE_INDEX, reduction="sum")
                (loss_sum if weight == 1.0 else loss_sum * weight).backward()
            if weight:
                step_loss += loss_sum.item()
                trained_tokens += n_tokens(batch_idx)
                padded += batch["input_ids"].numel()
                real += int(batch["attention_mask"].sum())
        for p in params:  # DDP/FSDP averaged the gradients over the processes: undo, divide by the step's tokens
            if p.grad is not None:
                p.grad.div_(max(step_tokens, 1) / world)
        torch.nn.utils.clip_grad_norm_(params, recipe.max_grad_norm)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        if accelerator:
            step_loss = float(accelerator.reduce(torch.tensor([step_loss], device=device), "sum").item())
        curve.append({"step": s + 1, "epoch": group[-1][0], "loss": step_loss / max(step_tokens, 1),
                      "lr": scheduler.get_last_lr()[0]})
        pbar.set_postfix(loss=f"{curve[-1]['loss']:.3f}")
        pbar.update(1)
    pbar.close()
    loop_s = time.perf_counter() - t_loop
    state = None  # the model's own state dict, except under FSDP
    if accelerator:
        totals = accelerator.reduce(torch.tensor([trained_tokens, padded, real], device=device), "sum").tolist()
        trained_tokens, padded, real = (int(x) for x in totals)
        accelerator.wait_for_everyone()
        if sharded:
            state = full_state_dict(model, recipe.finetune == "lora", torch_dtype(dtype))
        model = accelerator.unwrap_model(model)
        if rank > 0:  # the main process saves
            return {}

    model.save_pretrained(out_dir, state_dict=state)
    if save_optimizer_state:
        names = {p: n for n, p in model.named_parameters() if p.requires_grad}
        torch.save({names[p]: {k: optimizer.state[p][k].detach().cpu() for k in ("exp_avg", "exp_avg_sq")}
                    for p in params if p in optimizer.state}, out_dir / "optimizer_state.pt")
    if recipe.finetune == "full":
        tok.save_pretrained(out_dir)
    report = {"steps": steps, "examples": len(data), "dropped_examples": len(examples) - len(data),
              "trained_tokens": trained_tokens, "total_tokens": real,
              "padding_fraction": round(1 - real / padded, 4) if padded else 0.0,
              "final_loss": curve[-1]["loss"], "loss_curve": curve, "device": device, "dtype": dtype,
              "loop_s": round(loop_s, 2), "wall_s": round(time.perf_counter() - t_start, 2)}
    (out_dir / "train_report.json").write_text(json.dumps(report, indent=2))
    return report


PROCESSES_ENV = "SELBENCH_TRAIN_PROCESSES"


def train_processes() -> int:
    """Processes one training run uses: ``$SELBENCH_TRAIN_PROCESSES`` (default 1)."""
    return max(1, int(os.environ.get(PROCESSES_ENV, "1") or 1))


STRATEGY_ENV = "SELBENCH_TRAIN_STRATEGY"
STRATEGIES = ("ddp", "fsdp")


def train_strategy() -> str:
    """How several training processes share the model: ``$SELBENCH_TRAIN_STRATEGY``, ``ddp`` (default: each holds a
    replica) or ``fsdp`` (each holds a shard of parameters, gradients and optimizer state)."""
    strategy = (os.environ.get(STRATEGY_ENV) or "ddp").lower()
    if strategy not in STRATEGIES:
        raise ValueError(f"${STRATEGY_ENV} is {strategy!r}; expected one of {STRATEGIES}")
    return strategy


def launch_finetune(processes: int, base_path: str, examples: list[Example], recipe, seed: int, out_dir: str | Path,
                    dtype: str = "float32", device: str = "cpu", strategy: str | None = None) -> dict:
    """:func:`finetune` on ``processes`` processes with the recipe's global batch: each process takes
    ``grad_accum / processes`` micro-batches per step. ``accelerate launch --multi_gpu`` on GPUs, ``torchrun`` (gloo)
    on the CPU, where accelerate's own launcher needs MPI. ``strategy``: ``ddp`` or ``fsdp`` (default
    :func:`train_strategy`)."""
    import subprocess

    from .judge.server import free_port

    strategy = strategy or train_strategy()
    if strategy not in STRATEGIES:
        raise ValueError(f"strategy {strategy!r}; expected one of {STRATEGIES}")
    if recipe.grad_accum % processes:
        raise ValueError(f"recipe.grad_accum {recipe.grad_accum} is not divisible by {processes} processes: the "
                         f"global batch (batch_size x grad_accum) must split evenly")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    job = {"base_path": base_path, "examples": [e.to_dict() for e in examples], "seed": seed, "dtype": dtype,
           "device": device, "out_dir": str(out_dir), "strategy": strategy,
           "recipe": {**recipe.model_dump(mode="json"), "grad_accum": recipe.grad_accum // processes}}
    job_file = out_dir / "train_job.json"
    job_file.write_text(json.dumps(job))
    port = str(free_port())
    launcher = ["-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", str(processes),
                "--main_process_port", port] if device == "cuda" else \
        ["-m", "torch.distributed.run", "--nproc_per_node", str(processes), "--master_port", port]
    r = subprocess.run([sys.executable, *launcher, "-m", "selbench.train", str(job_file)], capture_output=True,
                       text=True, env={**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")})
    job_file.unlink()
    if r.returncode != 0:
        raise RuntimeError(f"training on {processes} processes failed (exit {r.returncode}):\n{r.stderr[-3000:]}")
    report = json.loads((out_dir / "train_report.json").read_text())
    return {**report, "processes": processes, "strategy": strategy,
            "grad_accum_per_process": job["recipe"]["grad_accum"]}


def main(argv: list[str]) -> int:
    """``[accelerate launch ...] python -m selbench.train JOB.json``: the job names base_path, examples (dicts with
    ``id`` and ``messages``), recipe (a RecipeSpec as JSON), seed, out_dir, dtype, device and strategy."""
    from .protocol import RecipeSpec

    job = json.loads(Path(argv[0]).read_text(encoding="utf-8"))
    examples = [Example(id=e["id"], messages=tuple(e["messages"]), instruction=e.get("instruction", ""),
                        input=e.get("input", ""), output=e.get("output", "")) for e in job["examples"]]
    finetune(job["base_path"], examples, RecipeSpec.model_validate(job["recipe"]), job["seed"], job["out_dir"],
             dtype=job.get("dtype", "float32"), device=job.get("device", "cpu"), progress=False,
             strategy=job.get("strategy", "ddp"))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

