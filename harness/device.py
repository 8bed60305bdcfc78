"""Where tensors live: one device for every stage (training, signals, embeddings, generation, lm-eval, the local
judge). The protocol's ``device`` (default ``auto``: cuda, then mps, then cpu), overridden by ``$SELBENCH_DEVICE``.

Like the engine it is not part of the protocol's hash: a board means the same on any device. Every artifact computed
off the CPU carries its device in its cache key (``selbench.cache.artifact_key``), and records name it.
"""

from __future__ import annotations

import os
from typing import Any

DEVICE_ENV = "SELBENCH_DEVICE"
DEVICES = ("auto", "cpu", "cuda", "mps")


def resolve_device(setting: str | None = "auto") -> str:
    """``cpu``, ``cuda`` or ``mps``: ``$SELBENCH_DEVICE`` if set, else ``setting``; ``auto`` takes the first available
    of cuda and mps, else the CPU. Asking for a device that is not there is an error, not a silent fallback."""
    import torch

    choice = os.environ.get(DEVICE_ENV) or setting or "auto"
    if choice not in DEVICES:
        raise ValueError(f"device must be one of {DEVICES}, got {choice!r} (from ${DEVICE_ENV} or the protocol)")
    mps = getattr(torch.backends, "mps", None)
    available = {"cpu": True, "cuda": torch.cuda.is_available(), "mps": bool(mps and mps.is_available())}
    if choice == "auto":
        return next(d for d in ("cuda", "mps", "cpu") if available[d])
    if not available[choice]:
        raise ValueError(f"device {choice!r} is not available on this machine (${DEVICE_ENV} or the protocol's "
                         f"`device`); available: {[d for d, ok in available.items() if ok]}")
    return choice


def device_setting(protocol: Any) -> str:
    return getattr(protocol, "device", None) or "auto"


def resolve_dtype(dtype: str, device: str) -> str:
    """The protocol's ``dtype``; ``auto`` is bfloat16 on a CUDA device that supports it, else float32."""
    if dtype != "auto":
        return dtype
    if device == "cuda":
        import torch

        return "bfloat16" if torch.cuda.is_bf16_supported() else "float16"
    return "float32"
