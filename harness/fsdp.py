"""FSDP for :mod:`selbench.train`: torch's FSDP2 (``fully_shard``) on each decoder layer, then on the whole model.

The same code on GPUs (NCCL) and on the CPU (gloo), so the CPU test runs what a GPU run runs. Not accelerate's FSDP
plugin: accelerate (1.15) turns FSDP on only for multi-accelerator runs; a multi-process CPU run stays
``DistributedType.MULTI_CPU`` and ignores the plugin, so it could never be tested without a GPU per process.

The settings are those of the usual accelerate FSDP config for full fine-tuning: full sharding (parameters,
gradients and optimizer state; parameters re-sharded after each layer's forward), one unit per decoder layer (the
model's ``_no_split_modules``), the full state dict gathered on the main process to save. Parameters stay in float32
("master weights") and, when the run's dtype is lower (bfloat16 on CUDA), each layer computes in that dtype
(``MixedPrecisionPolicy``) while gradients are reduced in float32: AdamW at Alpaca's lr 2e-5 on bfloat16 weights
would round many updates away.
"""

from __future__ import annotations

import torch


def decoder_layer_classes(model: torch.nn.Module) -> set[str]:
    """Class names each FSDP unit wraps: what the model (or the model inside a peft wrapper) will not split."""
    names: set[str] = set()
    for m in model.modules():
        names |= set(getattr(m, "_no_split_modules", None) or ())
    if not names:
        raise ValueError(f"{type(model).__name__} names no `_no_split_modules`: no decoder layer class to shard on")
    return names


def shard_model(model: torch.nn.Module, compute_dtype: torch.dtype = torch.float32) -> torch.nn.Module:
    """Shard ``model`` (float32 parameters) in place over the default process group and return it."""
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    mp = MixedPrecisionPolicy(param_dtype=compute_dtype, reduce_dtype=torch.float32) \
        if compute_dtype != torch.float32 else MixedPrecisionPolicy()
    layers = decoder_layer_classes(model)
    units = [m for m in model.modules() if type(m).__name__ in layers]
    if not units:
        raise ValueError(f"no module of class {sorted(layers)} in {type(model).__name__}")
    for m in units:
        fully_shard(m, mp_policy=mp, reshard_after_forward=True)
    fully_shard(model, mp_policy=mp, reshard_after_forward=True)
    return model


def full_state_dict(model: torch.nn.Module, trainable_only: bool, dtype: torch.dtype) -> dict[str, torch.Tensor]:
    """The unsharded state dict, on the CPU of the main process (empty elsewhere); every process must call it.
    ``trainable_only``: the LoRA weights alone, so a 7B base is not gathered to save an adapter."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    sd = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True,
                                                               ignore_frozen_params=trainable_only))
    tied = tied_names(model)
    return {k: v.to(dtype) for k, v in sd.items() if k not in tied}


def tied_names(model: torch.nn.Module) -> set[str]:
    """Names of parameters that are another name's parameter (a tied ``lm_head``): gathered, they come back as
    copies, which ``save_pretrained`` would write twice; the model re-ties them on load."""
    seen, tied = set(), set()
    for name, p in model.named_parameters(remove_duplicate=False):
        if id(p) in seen:
            tied.add(name)
        seen.add(id(p))
    return tied
