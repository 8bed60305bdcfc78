"""Answers of a model under test to prompt sets, cached: batched greedy generation with the model's chat template.

A conversation is a list of user turns; turn k is generated with the model's own earlier answers in the context
(MT-Bench's second turn sees the first answer). Results are cached per (model identity, prompts, decoding, engine),
so a baseline model evaluated by several evaluators or cells is generated once.

Two engines (``Decoding.engine``, see :mod:`.vllm_engine`): transformers ``generate`` in length-sorted batches, or
vLLM with the LoRA adapter per request. Both get the same token IDs: the prompt rendered with the protocol's chat
template and cut to its last ``max_prompt_tokens``. In fp32 their greedy answers are equal (tests/test_vllm_engine.py).
"""

from __future__ import annotations

import contextlib
import gc
import logging
from typing import Literal, Sequence

from pydantic import BaseModel, ConfigDict, Field

from .cache import ArtifactCache
from .vllm_engine import engine_device, resolve_engine

log = logging.getLogger(__name__)


class Decoding(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    max_new_tokens: int = Field(512, gt=0)
    temperature: float = Field(0.0, ge=0)  # 0 = greedy
    top_p: float = Field(1.0, gt=0, le=1)
    batch_size: int = Field(8, gt=0)
    max_prompt_tokens: int = Field(2048, gt=0)  # longer prompts keep their last tokens
    seed: int = 0
    engine: Literal["auto", "transformers", "vllm"] = "auto"  # resolved (and $SELBENCH_ENGINE applied) per call


def generate(model, conversations: Sequence[Sequence[str]], decoding: Decoding, cache: ArtifactCache | None,
             desc: str = "generating") -> list[list[str]]:
    """One answer per user turn of every conversation, in order."""
    convs = [list(c) for c in conversations]
    engine = resolve_engine(decoding.engine)

    def run() -> list[list[str]]:
        if engine == "vllm":
            return _vllm_generate(model, convs, decoding, desc, cache_root=cache.root if cache else None)
        return _hf_generate(model, convs, decoding, desc)

    if cache is None:
        return run()
    inputs = {"model": model.identity, "chat_template": model.chat_template, "prompts": convs,
              "decoding": decoding.model_dump(exclude={"batch_size", "engine"})}
    return cache.get_or_compute("generations", inputs, lambda: {
        "model": model.name, "identity": model.identity, "engine": engine, "answers": run()},
        engine=engine, device=engine_device(engine, getattr(model, "device", "cpu"))).value["answers"]


def _prompt_limit(dec: Decoding, model_limit: int | None) -> int:
    limit = model_limit or dec.max_prompt_tokens + dec.max_new_tokens
    return max(1, min(dec.max_prompt_tokens, limit - dec.max_new_tokens))


def _turn_messages(conv: list[str], answers: list[str], k: int) -> list[dict[str, str]]:
    msgs = []
    for i in range(k):
        msgs += [{"role": "user", "content": conv[i]}, {"role": "assistant", "content": answers[i]}]
    return msgs + [{"role": "user", "content": conv[k]}]


def _hf_generate(model, convs: list[list[str]], dec: Decoding, desc: str) -> list[list[str]]:
    import torch
    from tqdm.auto import tqdm

    from .formatting import render
    from .models import load_causal_lm, load_tokenizer

    tok = load_tokenizer(model.base_path, model.chat_template)
    tok.padding_side = "left"
    lm = load_causal_lm(model.base_path, model.dtype, adapter=model.adapter, device=getattr(model, "device", "cpu"))
    max_prompt = _prompt_limit(dec, getattr(lm.config, "max_position_embeddings", None))
    answers: list[list[str]] = [[] for _ in convs]
    torch.manual_seed(dec.seed)
    try:
        for k in range(max(map(len, convs), default=0)):
            todo = [i for i, c in enumerate(convs) if len(c) > k]
            prompts = {i: tok(render(tok, _turn_messages(convs[i], answers[i], k), add_generation_prompt=True),
                              add_special_tokens=False)["input_ids"][-max_prompt:] for i in todo}
            todo.sort(key=lambda i: len(prompts[i]))  # similar lengths per batch: less padding
            bar = tqdm(total=len(todo), desc=f"{desc} ({model.name}, turn {k + 1})", disable=len(todo) < 2)
            for b in range(0, len(todo), dec.batch_size):
                idx = todo[b: b + dec.batch_size]
                batch = tok.pad({"input_ids": [prompts[i] for i in idx]}, return_tensors="pt").to(lm.device)
                kw = dict(do_sample=True, temperature=dec.temperature, top_p=dec.top_p) if dec.temperature > 0 \
                    else dict(do_sample=False)
                with torch.no_grad():
                    out = lm.generate(**batch, max_new_tokens=dec.max_new_tokens, pad_token_id=tok.pad_token_id,
                                      **kw)
                texts = tok.batch_decode(out[:, batch["input_ids"].shape[1]:], skip_special_tokens=True)
                for i, t in zip(idx, texts):
                    answers[i].append(t.strip())
                bar.update(len(idx))
            bar.close()
    finally:
        del lm
        gc.collect()
    return answers


def _vllm_generate(model, convs: list[list[str]], dec: Decoding, desc: str, engine=None,
                   cache_root=None) -> list[list[str]]:
    """``engine``: a started :class:`~.vllm_engine.VllmEngine` on ``model.base_path`` to use (else the refresh's
    shared engine, or one started for this call and released after it: :func:`~.vllm_engine.acquire`)."""
    from vllm import SamplingParams

    from .formatting import encode, render
    from .models import load_tokenizer
    from .vllm_engine import acquire, model_max_len

    tok = load_tokenizer(model.base_path, model.chat_template)
    max_prompt = _prompt_limit(dec, model_max_len(model.base_path))
    params = SamplingParams(max_tokens=dec.max_new_tokens, temperature=dec.temperature,
                            top_p=dec.top_p if dec.temperature > 0 else 1.0, seed=dec.seed)
    answers: list[list[str]] = [[] for _ in convs]
    with contextlib.ExitStack() as stack:
        if engine is None:
            engine = stack.enter_context(acquire(model.base_path, model.dtype, max_prompt + dec.max_new_tokens,
                                                 model.adapter, cache_root=cache_root, seed=dec.seed))
        for k in range(max(map(len, convs), default=0)):
            todo = [i for i, c in enumerate(convs) if len(c) > k]
            prompts = [encode(tok, render(tok, _turn_messages(convs[i], answers[i], k), add_generation_prompt=True))
                       [-max_prompt:] for i in todo]
            log.info("%s (%s, turn %d): %d prompts through vLLM", desc, model.name, k + 1, len(todo))
            outs = engine.generate_ids(prompts, params, adapter=model.adapter, use_tqdm=len(todo) > 1)
            for i, o in zip(todo, outs):
                answers[i].append(tok.decode(o.outputs[0].token_ids, skip_special_tokens=True).strip())
    return answers
