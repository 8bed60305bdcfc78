"""Hub lookups that fail, fail once per process.

Offline, every attempt to reach the Hugging Face Hub spends ~25-30 s in huggingface_hub's retries before it gives
up. A refresh asks for the same hub files in every cell (alpaca_eval's ``df_gamed.csv``, a reward model's
checkpoint), so :func:`once` remembers a failed lookup by its key and raises the same error at once the next time
in this process. Successes are not remembered: the next call loads from the hub cache as usual.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")
_FAILED: dict[str, BaseException] = {}


def once(key: str, fetch: Callable[[], T], errors: tuple[type[BaseException], ...] = (OSError, ValueError)) -> T:
    """``fetch()``, unless a lookup under ``key`` already failed with one of ``errors`` in this process: then that
    error again, without asking the hub."""
    if key in _FAILED:
        raise _FAILED[key]
    try:
        return fetch()
    except errors as e:
        _FAILED[key] = e
        raise
