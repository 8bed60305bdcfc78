"""``selbench plan --board B``: what a refresh will cost, before it runs.

Counts come from the protocol and the data: cells (rows × budgets × seeds), training tokens (each budget × the
pool's mean example length × epochs), generated tokens (every judged evaluator's prompts × ``max_new_tokens``, the
baselines' answers for the pairwise score included) and judge tokens (every judged item's prompt and at most
``judge.max_tokens`` out). Times and money come from stated throughputs (:class:`Throughputs`, each overridable on the
command line), so the estimate says what it assumes. Token counts use 4 characters per token when no tokenizer is
at hand; generation and judge outputs are upper bounds (every answer at its token limit).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from statistics import median
from typing import Any

CHARS_PER_TOKEN = 4.0
# Published sizes, for evaluation data that is not on this machine
SET_SIZES = {"mt_bench": 80, "alpaca_eval": 805, "vicuna": 80, "koala": 180, "wizardlm": 218, "self_instruct": 252,
             "lima": 300}


@dataclass
class Throughputs:
    """Per GPU, 7B model, bf16, one A100-80GB-class device; the defaults are round numbers from public reports
    (FSDP full fine-tuning ~3k tokens/s/GPU, LoRA ~5k, vLLM batched decoding ~2k output tokens/s) and OpenAI's GPT-4
    (0613) list price. Measure your own and pass them."""

    train_tokens_per_s: float = 3000.0  # full fine-tuning (LoRA: lora_train_tokens_per_s)
    lora_train_tokens_per_s: float = 5000.0
    generate_tokens_per_s: float = 2000.0
    judge_usd_per_m_input: float = 30.0
    judge_usd_per_m_output: float = 60.0


@dataclass
class Plan:
    board: str
    finetune: str
    cells: int
    rows: int
    train_tokens: float
    generate_tokens: float
    judge_calls: int
    judge_input_tokens: float
    judge_output_tokens: float
    assumptions: Throughputs
    local_judge: bool = False
    notes: list[str] = field(default_factory=list)

    @property
    def gpu_hours(self) -> dict[str, float]:
        t = self.assumptions
        train_tps = t.lora_train_tokens_per_s if self.finetune == "lora" else t.train_tokens_per_s
        out = {"train": self.train_tokens / train_tps / 3600,
               "generate": self.generate_tokens / t.generate_tokens_per_s / 3600}
        if self.local_judge:  # a local judge's verdicts are generated tokens too
            out["judge"] = self.judge_output_tokens / t.generate_tokens_per_s / 3600
        return out

    @property
    def judge_usd(self) -> float:
        t = self.assumptions
        if self.local_judge:
            return 0.0
        return (self.judge_input_tokens * t.judge_usd_per_m_input
                + self.judge_output_tokens * t.judge_usd_per_m_output) / 1e6

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "gpu_hours": self.gpu_hours, "judge_usd": self.judge_usd}


def plan_board(ws, board: str, throughputs: Throughputs | None = None, pool_size: int | None = None,
               example_tokens: float | None = None) -> Plan:
    from . import registry
    from .data import load_pool
    from .evaluate import configured_evaluators
    from .protocol import load_protocol

    p = load_protocol(ws.protocol_path(board))
    t = throughputs or Throughputs()
    notes = []
    if pool_size is None or example_tokens is None:
        try:
            pool = load_pool(p.pool, ws.data_dir, name=board)
            pool_size = pool_size or pool.n_trainable
            chars = sum(len(m["content"]) for e in pool for m in e.messages) / max(len(pool), 1)
            example_tokens = example_tokens or chars / CHARS_PER_TOKEN
        except (OSError, ValueError) as e:
            raise ValueError(f"{board}: the pool does not load here ({e}); pass --pool-size and --example-tokens")
    notes.append(f"pool: {pool_size} trainable examples of ~{example_tokens:.0f} tokens")
    registry.load_all()
    cells, train_tokens = 0, 0.0
    for m in p.methods:
        full = registry.get_method(m.name).full_pool
        budgets = [pool_size] if full else [p.resolve_budget(b, pool_size) for b in p.budgets]
        n = len(set(budgets)) * len(p.seeds)
        cells += n
        train_tokens += sum(min(example_tokens, p.recipe.max_seq_len) * b * p.recipe.epochs
                            for b in set(budgets)) * len(p.seeds)
    gen, calls, j_in, j_out = 0.0, 0, 0.0, 0.0
    judge_out = p.judge.max_tokens
    for name, spec in configured_evaluators(p).items():
        spec = spec or {}
        if name == "mt_bench":
            n = spec.get("questions") and spec["questions"] * 8 or len(spec.get("question_ids") or []) or \
                SET_SIZES["mt_bench"]
            turns, out = len(spec.get("turns", [1, 2])), spec.get("max_new_tokens", 1024)
            gen += n * turns * out
            calls += n * turns
            j_in += n * turns * (600 + turns * out)  # template + question + reference + the answers
        elif name == "alpaca_eval":
            n, out = spec.get("max_instances") or SET_SIZES["alpaca_eval"], spec.get("max_new_tokens", 1024)
            gen += n * out
            calls += n
            j_in += n * (500 + 2 * out)  # the annotator's template, the reference and the model's answer
        elif name == "pairwise":
            sets = spec.get("sets") or ["vicuna", "koala", "wizardlm", "self_instruct", "lima"]
            n = sum(min(spec.get("per_set") or SET_SIZES[s], SET_SIZES[s]) for s in sets)
            out, refs = spec.get("max_new_tokens", 512), len(spec.get("baselines", ["full", "random"]))
            gen += n * out  # the baselines' answers are generated once per baseline cell, counted with them
            calls += n * refs * 2  # both orders
            j_in += n * refs * 2 * (300 + 2 * out)
    gen *= cells + 1  # every cell and the base model
    calls *= cells + 1
    j_in *= cells + 1
    j_out = calls * judge_out
    scored = [n for n in ("lm_eval", "ref_likelihood") if n in configured_evaluators(p)]
    if scored:
        notes.append(f"{' and '.join(scored)} log-likelihood scoring is not estimated (forward passes only: "
                     f"usually small next to training and generation)")
    local = calls > 0 and p.judge.kind == "local"
    if local:
        notes.append("the judge is a local server: its verdicts cost GPU time (judge row), not money")
    return Plan(board, p.recipe.finetune, cells, len(p.methods), train_tokens, gen, calls, j_in, j_out, t, local,
                notes)


def format_plan(plan: Plan) -> str:
    h = plan.gpu_hours
    t = plan.assumptions
    lines = [f"plan {plan.board}: {plan.cells} cells ({plan.rows} rows) + the base model; {plan.finetune} "
             "fine-tuning",
             f"  train     {plan.train_tokens / 1e6:10.1f} M tokens   ~{h['train']:8.1f} GPU-h",
             f"  generate  {plan.generate_tokens / 1e6:10.1f} M tokens   ~{h['generate']:8.1f} GPU-h  (upper bound)",
             f"  judge     {plan.judge_calls:10d} calls, {plan.judge_input_tokens / 1e6:.1f} M in + "
             f"{plan.judge_output_tokens / 1e6:.1f} M out tokens   ~${plan.judge_usd:,.0f}  (upper bound)",
             *([f"  local judge output                ~{h['judge']:8.1f} GPU-h"] if "judge" in h else []),
             f"  total     ~{sum(h.values()):.1f} GPU-h",
             f"  assuming  train {t.train_tokens_per_s:g} tok/s (LoRA {t.lora_train_tokens_per_s:g}), generate "
             f"{t.generate_tokens_per_s:g} tok/s per GPU; judge ${t.judge_usd_per_m_input:g}/M in, "
             f"${t.judge_usd_per_m_output:g}/M out"]
    lines += [f"  note      {n}" for n in plan.notes]
    return "\n".join(lines)


def measured_remaining(done: list[tuple[str, int, dict[str, Any]]], todo: list[tuple[str, int]]) -> str | None:
    """What the cells left take at the pace the board's current records measured: ``done`` holds (row, budget,
    timings) of each current record, ``todo`` (row, budget) of each cell a refresh would run. Training and evaluation
    are timed per budget (median over the records); selection is left out, as it is cached across seeds where the
    method allows and unknown for a row with no record yet."""
    per_budget: dict[int, list[float]] = {}
    for _, budget, t in done:
        if t.get("train_s") is not None and t.get("eval_s") is not None:
            per_budget.setdefault(budget, []).append(t["train_s"] + t["eval_s"])
    if not per_budget or not todo:
        return None
    every = [s for v in per_budget.values() for s in v]
    left_s = sum(median(per_budget.get(b) or every) for _, b in todo)
    by_budget = ", ".join(f"{b}: {median(v) / 60:.1f}" for b, v in sorted(per_budget.items()))
    new_rows = len({r for r, _ in todo} - {r for r, _, _ in done})
    selection = (f"plus selection for {new_rows} row(s) with no record yet" if new_rows
                 else "plus any selection not cached")
    return (f"train + evaluate took a median of {median(every) / 60:.1f} min per cell (by budget {by_budget}; "
            f"{len(every)} records, on the machines that wrote them); the {len(todo)} cell(s) left: "
            f"~{duration_text(left_s)}, {selection}")


def duration_text(seconds: float) -> str:
    """Hours from 90 minutes up, minutes below."""
    return f"{seconds / 3600:.1f} h" if seconds >= 5400 else f"{seconds / 60:.0f} min"
