"""Helpers shared by the judged evaluators: section validation, data files, judge prompts."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError

from ..cache import read_jsonl
from ..paths import data_dir as default_data_dir
from ..protocol import describe_validation_error

S = TypeVar("S", bound=BaseModel)


def parse_section(model: type[S], raw: Any, section: str) -> S:
    """Validate ``evaluation.<section>``; errors name the field, e.g. ``evaluation.mt_bench.turns: ...``."""
    if isinstance(raw, model):
        return raw
    try:
        return model.model_validate(raw or {})
    except ValidationError as e:
        raise ValueError(describe_validation_error(e, f"evaluation.{section}: invalid settings",
                                                   f"evaluation.{section}.")) from None


def open_ended_dir(ctx) -> Path:
    root = ctx.data_dir or default_data_dir()
    if root is None or not (Path(root) / "open_ended").is_dir():
        raise FileNotFoundError(f"open-ended evaluation data not found under {root}/open_ended "
                                f"(set SELBENCH_DATA_DIR)")
    return Path(root) / "open_ended"


def mt_bench_judge_prompts(ctx) -> dict[str, dict[str, Any]]:
    return {p["name"]: p for p in read_jsonl(open_ended_dir(ctx) / "mt_bench" / "judge_prompts.jsonl")}


def chat(system: str, user: str) -> list[dict[str, str]]:
    return ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": user}]


def mean_sem(xs: list[float]) -> tuple[float, float | None]:
    if not xs:
        return float("nan"), None
    m = sum(xs) / len(xs)
    if len(xs) < 2:
        return m, None
    var = sum((x - m) ** 2 for x in xs) / (len(xs) - 1)
    return m, math.sqrt(var / len(xs))
