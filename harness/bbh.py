"""BIG-Bench Hard for the local ``bbh_cot_fewshot_<subtask>_local`` lm-eval tasks (``harness/tasks``).

Test items: ``benchmarks/bbh/<subtask>.json`` (``{"examples": [{"input", "target"}]}``), in file order. Exemplars:
the shipped ``cot-prompts/<subtask>.txt`` (suzgunmirac/BIG-Bench-Hard): a canary line, ``-----``, the task
description (one or more paragraphs), then three exemplars ``Q: <input>\\nA: Let's think step by step.<sep>
<reasoning ending in "So the answer is X.">`` separated by blank lines (``<sep>`` is a newline, a space in
``sports_understanding``). lm-eval's ``bbh_cot_fewshot`` tasks carry the same description (plus a blank line) and
exemplars (``input``; ``target`` = the reasoning); ``tests/test_bbh_tasks.py`` checks that ``parse_cot_prompt``
yields exactly lm-eval's for all 27 subtasks.
"""

from __future__ import annotations

import json
from pathlib import Path

SUBTASKS = (
    "boolean_expressions", "causal_judgement", "date_understanding", "disambiguation_qa", "dyck_languages",
    "formal_fallacies", "geometric_shapes", "hyperbaton", "logical_deduction_five_objects",
    "logical_deduction_seven_objects", "logical_deduction_three_objects", "movie_recommendation",
    "multistep_arithmetic_two", "navigate", "object_counting", "penguins_in_a_table",
    "reasoning_about_colored_objects", "ruin_names", "salient_translation_error_detection", "snarks",
    "sports_understanding", "temporal_sequences", "tracking_shuffled_objects_five_objects",
    "tracking_shuffled_objects_seven_objects", "tracking_shuffled_objects_three_objects", "web_of_lies",
    "word_sorting",
)
GROUP = "bbh_cot_fewshot_local"
CUE = "\nA: Let's think step by step."


def task_name(subtask: str) -> str:
    return f"bbh_cot_fewshot_{subtask}_local"


def parse_cot_prompt(text: str) -> tuple[str, list[dict[str, str]]]:
    """``(description, [{"input", "target"}, ...])``; the description keeps lm-eval's trailing blank line."""
    body = text.split("\n-----\n", 1)[-1].strip("\n")
    description, *shots = body.split("\n\nQ: ")
    samples = []
    for shot in shots:
        question, sep, reasoning = shot.partition(CUE)
        if not sep:
            raise ValueError(f"exemplar without the chain-of-thought cue: {shot[:80]!r}")
        samples.append({"input": question, "target": reasoning.strip()})
    return description + "\n\n", samples


def load_subtask(folder: Path, subtask: str) -> tuple[list[dict[str, str]], list[dict[str, str]]]:
    """``(test rows, exemplar rows)``; every row carries ``description`` (the task's ``description`` field)."""
    if subtask not in SUBTASKS:
        raise ValueError(f"unknown BBH subtask {subtask!r}")
    description, shots = parse_cot_prompt((folder / "cot-prompts" / f"{subtask}.txt").read_text(encoding="utf-8"))
    with open(folder / f"{subtask}.json", encoding="utf-8") as f:
        examples = json.load(f)["examples"]
    test = [{"input": e["input"], "target": e["target"], "description": description} for e in examples]
    return test, [{**s, "description": description} for s in shots]
