"""Per-example gradient features of a LoRA adapter: a shared service for gradient-based selection (LESS).

For each conversation, the gradient of its mean response-token loss (the chat template and response-only labels of
the train stage, :func:`selbench.formatting.tokenize_conversation`, one example per forward, dropout off) with
respect to the adapter's LoRA parameters, flattened in ``named_parameters`` order; optionally Adam-preconditioned
with the warm-up optimizer's moments (:func:`adam_precondition`); rounded to float16 and projected by TRAK's
block-wise Rademacher projector (``trak.projectors.BasicProjector``, PyPI ``traker``); each row L2-normalised, so a
dot product of two features is their cosine. This follows princeton-nlp/LESS @8abf962
``less/data_selection/collect_grad_reps.py`` (``obtain_gradients``, ``obtain_gradients_with_adam``,
``collect_grads``: seed 0, ``block_size`` 128, model_id 0, float16 before projecting; ``merge_and_normalize_info``).

Deviations: the gradients, moments and projection are float32 whatever the model's dtype (LESS projects in its
bf16 model dtype); rows are projected in chunks of any size (each row's projection does not depend on the others);
``BasicProjector`` on every device (LESS takes TRAK's ``CudaProjector`` when ``fast_jl`` is installed on a GPU,
whose random matrix differs; on the CPU it falls back to ``BasicProjector``, as here).

The train stage writes the moments with ``finetune(..., save_optimizer_state=True)``: ``optimizer_state.pt`` beside
the adapter, ``{parameter name: {"exp_avg", "exp_avg_sq"}}``, keyed by name as LESS needs (its issue #4).
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from .formatting import IGNORE_INDEX, Tokenized

OPTIMIZER_STATE = "optimizer_state.pt"  # written by selbench.train.finetune(save_optimizer_state=True)
GRADS_VERSION = 1
# torch.optim.AdamW's defaults, which the train stage uses; LESS hard-codes the same (collect_grad_reps.py L113-115)
BETA1, BETA2, EPS = 0.9, 0.999, 1e-8
BLOCK_SIZE = 128  # LESS's fixed projector block size (collect_grad_reps.py L161)


def load_lora_model(base_path: str, adapter: str | Path, dtype: str = "float32", device: str = "cpu"):
    """The base model with the adapter, its LoRA parameters (only) requiring gradients, in eval mode."""
    from peft import PeftModel

    from .models import load_causal_lm

    model = PeftModel.from_pretrained(load_causal_lm(base_path, dtype, device=device), str(adapter),
                                      is_trainable=True)
    for name, p in model.named_parameters():
        p.requires_grad_("lora_" in name)
    return model.eval()


def lora_names(model) -> list[str]:
    return [n for n, p in model.named_parameters() if p.requires_grad]


def example_gradient(model, t: Tokenized, device: str = "cpu"):
    """Flat float32 gradient of ``t``'s mean loss over its labelled tokens (HF's shifted causal-LM loss), with
    logits computed only where a label is scored (``logits_to_keep``)."""
    import torch

    model.zero_grad(set_to_none=True)
    pos = [i for i in range(len(t) - 1) if t.labels[i + 1] != IGNORE_INDEX]
    ids = torch.tensor([t.input_ids], device=device)
    logits = model(input_ids=ids, logits_to_keep=torch.tensor(pos, device=device)).logits[0].float()
    labels = torch.tensor([t.labels[i + 1] for i in pos], device=device)
    torch.nn.functional.cross_entropy(logits, labels).backward()
    params = [p for p in model.parameters() if p.requires_grad]
    return torch.cat([(p.grad if p.grad is not None else torch.zeros_like(p)).reshape(-1).float() for p in params])


def load_adam_state(adapter: str | Path, names: Sequence[str], device: str = "cpu"):
    """(exp_avg, exp_avg_sq), flattened in ``names`` order, from the warm-up's ``optimizer_state.pt``."""
    import torch

    state = torch.load(Path(adapter) / OPTIMIZER_STATE, map_location=device, weights_only=True)
    missing = [n for n in names if n not in state]
    if missing:
        raise KeyError(f"{adapter}: no optimizer state for {len(missing)} LoRA parameters (e.g. {missing[0]})")
    return tuple(torch.cat([state[n][k].reshape(-1).float() for n in names]) for k in ("exp_avg", "exp_avg_sq"))


def adam_precondition(g, exp_avg, exp_avg_sq, beta1: float = BETA1, beta2: float = BETA2, eps: float = EPS):
    """One Adam update direction for gradient ``g`` from the moments: ``m / sqrt(v + eps)`` with
    ``m = beta1 exp_avg + (1 - beta1) g`` and ``v = beta2 exp_avg_sq + (1 - beta2) g^2``; eps inside the square
    root and no bias correction, as LESS's ``obtain_gradients_with_adam`` (collect_grad_reps.py L123-125)."""
    m = beta1 * exp_avg + (1 - beta1) * g
    v = beta2 * exp_avg_sq + (1 - beta2) * g ** 2
    return m / (v + eps).sqrt()


def project(grads, dim: int, seed: int = 0, device: str = "cpu"):
    """[n, D] gradients -> [n, dim]: rounded to float16, then TRAK's Rademacher ``BasicProjector`` (seeded)."""
    import torch
    from trak.projectors import BasicProjector, ProjectionType

    proj = BasicProjector(grad_dim=grads.shape[1], proj_dim=dim, seed=seed, proj_type=ProjectionType.rademacher,
                          device=device, dtype=torch.float32, block_size=BLOCK_SIZE)
    return proj.project(grads.to(torch.float16), model_id=0).float()


def normalise(x):
    import torch

    return torch.nn.functional.normalize(x, dim=1)


def tokens_digest(data: Sequence[Tokenized]) -> str:
    h = hashlib.sha256()
    for t in data:
        h.update(np.asarray(t.input_ids, dtype=np.int64).tobytes() + b"|")
        h.update(np.asarray(t.labels, dtype=np.int64).tobytes() + b"#")
    return h.hexdigest()[:16]


def gradient_features(cache, base, adapter: str | Path, adapter_key: str, data: Sequence[Tokenized], *,
                      optimizer: str, dim: int, seed: int = 0, chunk_bytes: int = 1 << 30,
                      progress: bool = True) -> dict[str, np.ndarray]:
    """``{"features": [n, dim] float32 unit rows, "scored": [n] bool}`` for tokenized examples ``data`` under the
    adapter (``optimizer``: ``"adam"`` preconditioned or ``"sgd"`` plain), cached in ``cache`` under kind
    ``grads`` and keyed by the base model, the adapter's cache key, the tokens and every setting. An example with no
    labelled token has no gradient: a zero row, ``scored`` False. Gradients are held ``chunk_bytes`` at a time: the
    projector regenerates its ``dim / 128`` random blocks once per chunk (on the CPU the dominant cost after the
    backward passes)."""
    if optimizer not in ("adam", "sgd"):
        raise ValueError(f"optimizer must be 'adam' or 'sgd', got {optimizer!r}")
    inputs = {"v": GRADS_VERSION, "base": base.identity, "dtype": base.dtype, "adapter": adapter_key,
              "optimizer": optimizer, "dim": dim, "seed": seed, "block_size": BLOCK_SIZE, "n": len(data),
              "tokens": tokens_digest(data)}

    def compute() -> dict[str, np.ndarray]:
        import torch
        from tqdm.auto import tqdm

        model = load_lora_model(base.path, adapter, base.dtype, base.device)
        names = lora_names(model)
        moments = load_adam_state(adapter, names, base.device) if optimizer == "adam" else None
        scored = np.array([any(x != IGNORE_INDEX for x in t.labels[1:]) for t in data], dtype=bool)
        n_params = sum(model.get_parameter(n).numel() for n in names)
        rows = max(1, min(len(data), chunk_bytes // (4 * n_params)))
        out, todo = np.zeros((len(data), dim), dtype=np.float32), np.flatnonzero(scored)
        bar = tqdm(total=len(todo), desc=f"{optimizer} gradients", leave=False, disable=not progress)
        for start in range(0, len(todo), rows):
            chunk = todo[start:start + rows]
            grads = torch.empty((len(chunk), n_params), device=base.device)
            for j, i in enumerate(chunk):
                g = example_gradient(model, data[i], base.device)
                grads[j] = adam_precondition(g, *moments) if moments is not None else g
                bar.update(1)
            with torch.no_grad():
                out[chunk] = normalise(project(grads, dim, seed, base.device)).cpu().numpy()
            del grads
        bar.close()
        return {"features": out, "scored": scored}

    return cache.get_or_compute("grads", inputs, compute, engine=None, device=base.device, form="npz").value
