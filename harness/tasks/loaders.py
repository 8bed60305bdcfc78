"""Dataset loaders for selbench's local lm-eval tasks: read the benchmark files from the data directory.

lm-eval calls ``custom_dataset(**metadata, **dataset_kwargs)``; ``dataset_kwargs.file`` is relative to the data
directory (``$SELBENCH_DATA_DIR``, default ``../shared/data``). Rows keep the fields the YAML templates use.
"""

from __future__ import annotations

import csv
import json
import random
from pathlib import Path

import datasets

from selbench import bbh as _bbh
from selbench.cache import read_jsonl
from selbench.paths import data_dir


def _path(rel: str) -> Path:
    root = data_dir()
    if root is None:
        raise FileNotFoundError(f"benchmark file {rel}: no data directory; set SELBENCH_DATA_DIR")
    p = root / rel
    if not p.exists():
        raise FileNotFoundError(f"benchmark file {p} not found (SELBENCH_DATA_DIR={root})")
    return p


def _shuffled(rows: list[dict], seed: int | None) -> list[dict]:
    # Subject- or source-sorted files would make `limit` take one subject only; a fixed shuffle keeps the
    # limited subset representative and identical across runs.
    if seed is not None:
        random.Random(seed).shuffle(rows)
    return rows


def jsonl_task(file: str, shuffle_seed: int | None = None, **_) -> datasets.DatasetDict:
    return datasets.DatasetDict({"test": datasets.Dataset.from_list(_shuffled(read_jsonl(_path(file)), shuffle_seed))})


def gsm8k(file: str, fewshot_file: str | None = None, **_) -> datasets.DatasetDict:
    splits = {"test": datasets.Dataset.from_list(read_jsonl(_path(file)))}
    if fewshot_file:
        splits["train"] = datasets.Dataset.from_list(read_jsonl(_path(fewshot_file)))
    return datasets.DatasetDict(splits)


def _mmlu_rows(folder: Path, suffix: str) -> list[dict]:
    rows = []
    for f in sorted(folder.glob(f"*_{suffix}.csv")):
        subject = f.name[: -len(f"_{suffix}.csv")]
        with open(f, encoding="utf-8", newline="") as fh:
            for r in csv.DictReader(fh):
                rows.append({"subject": subject.replace("_", " "), "question": r["question"],
                             "choices": [r[f"choice{i}"] for i in range(4)], "answer": int(r["answer"])})
    return rows


def mmlu(folder: str, shuffle_seed: int | None = 1234, **_) -> datasets.DatasetDict:
    root = _path(folder)
    return datasets.DatasetDict({
        "test": datasets.Dataset.from_list(_shuffled(_mmlu_rows(root / "test", "test"), shuffle_seed)),
        "dev": datasets.Dataset.from_list(_mmlu_rows(root / "dev", "dev")),
    })


def truthfulqa_mc(file: str, **_) -> datasets.DatasetDict:
    """``mc_task.json`` maps answer text -> 0/1; a fixed list of choices with the label index is what
    multiple_choice tasks take (the correct MC1 answer is listed first, as in the HF dataset)."""
    with open(_path(file), encoding="utf-8") as f:
        raw = json.load(f)
    rows = []
    for r in raw:
        mc1 = r["mc1_targets"]
        rows.append({"question": r["question"], "mc1_choices": list(mc1), "mc1_label": list(mc1.values()).index(1)})
    return datasets.DatasetDict({"test": datasets.Dataset.from_list(rows)})


def bbh(subtask: str, folder: str = "benchmarks/bbh", **_) -> datasets.DatasetDict:
    """One BBH subtask: ``test`` (the items in file order) and ``fewshot`` (the three chain-of-thought exemplars of
    ``cot-prompts/<subtask>.txt``, taken in order by the ``first_n`` sampler)."""
    test, shots = _bbh.load_subtask(_path(folder), subtask)
    return datasets.DatasetDict({"test": datasets.Dataset.from_list(test),
                                 "fewshot": datasets.Dataset.from_list(shots)})
