"""Instruction pools: load (HF ``datasets``), normalise Alpaca / Dolly / ShareGPT rows to one record, validate.

Every example gets a stable ID: a hash of its normalised conversation, so the same text has the same ID in
every pool, file order and run.

Rows that cannot be trained on stay in the pool, flagged. A row whose response is empty (after stripping) is not
malformed: its instruction is real data that a method scoring only the prompt (DSIR, k-center on
``instruction+input``) ranks, and dropping it would change what such a method ranks for everything else (DSIR's
raw n-gram distribution, k-center's points). So it is loaded as an :class:`Example` with ``output == ""`` and
``untrainable = "empty response"``, and ``pool.on_bad_rows`` applies only to rows that are malformed (no
instruction, wrong types, unknown roles). Nothing trains on such a row; the harness, not each method, sees to it
(``selbench.select``):

* a method declares whether it reads the response (``register_method(..., needs_output=...)``, default yes);
* a method that does gets :meth:`Pool.trainable` (flagged rows absent, so it never scores an empty response);
* a method that does not gets the whole pool and a budget raised by the number of flagged rows; its IDs, in its
  own priority order, are filtered to trainable ones and cut to the budget, so it ranks flagged rows but never
  selects them (for a ranking or greedy method this equals its own choice among the trainable rows);
* budgets (counts, fractions, the ``full`` row) are taken against the trainable rows (:attr:`Pool.n_trainable`);
* the record's ``selection.untrainable`` lists the flagged rows with their reason, whether the method saw (could
  rank) them, and which of its picks the harness skipped; training refuses an untrainable example outright.

With ``pool.sample``, the trainable rows are sampled exactly as before flagging existed (the same seeded draw) and
the flagged rows at the same rate from their own seeded stream, so the trainable part of a sampled pool does not
depend on how many flagged rows the file holds.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np

from .cache import file_sha256, stable_hash

log = logging.getLogger(__name__)

ROLE_ALIASES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant", "chatgpt": "assistant",
                "bard": "assistant", "bing": "assistant", "system": "system", "model": "assistant"}


EMPTY_RESPONSE = "empty response"


class PoolError(ValueError):
    """A pool row that cannot be used; the message names file and row."""


@dataclass(frozen=True)
class Example:
    """One instruction example. ``messages`` is the whole conversation; the single-turn view (``instruction``,
    ``input``, ``output``) is what most selection methods score: the first user turn and the reply to it."""

    id: str
    messages: tuple[dict[str, str], ...]
    instruction: str
    input: str = ""
    output: str = ""
    source: str = ""  # "<file>:<row>" for error messages and provenance
    untrainable: str = ""  # why nothing may train on this example (e.g. "empty response"); "" = trainable

    @property
    def trainable(self) -> bool:
        return not self.untrainable

    @property
    def prompt(self) -> str:
        """The user-facing prompt of the first turn: instruction, then the input (if any) after a blank line."""
        return f"{self.instruction}\n\n{self.input}" if self.input else self.instruction

    def to_dict(self) -> dict[str, Any]:
        return {"id": self.id, "instruction": self.instruction, "input": self.input, "output": self.output,
                "messages": list(self.messages)}


@dataclass
class Pool:
    examples: list[Example]
    name: str = "pool"
    report: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self):
        self._by_id = {e.id: e for e in self.examples}
        if len(self._by_id) != len(self.examples):
            raise PoolError(f"pool {self.name}: duplicate example IDs")

    def __len__(self) -> int:
        return len(self.examples)

    def __iter__(self):
        return iter(self.examples)

    def __getitem__(self, example_id: str) -> Example:
        return self._by_id[example_id]

    def __contains__(self, example_id: object) -> bool:
        return example_id in self._by_id

    @property
    def ids(self) -> list[str]:
        return [e.id for e in self.examples]

    @property
    def hash(self) -> str:
        return stable_hash(self.ids)

    def subset(self, ids: Iterable[str]) -> list[Example]:
        return [self._by_id[i] for i in ids]

    @property
    def untrainable(self) -> dict[str, str]:
        """ID -> reason, for the examples nothing may train on (see the module docstring)."""
        return {e.id: e.untrainable for e in self.examples if e.untrainable}

    @property
    def n_trainable(self) -> int:
        """The number of examples a selection can choose from: budgets are taken against it."""
        return len(self.examples) - len(self.untrainable)

    def trainable(self) -> "Pool":
        """This pool without its untrainable examples (itself when it has none), same order."""
        if not self.untrainable:
            return self
        return Pool([e for e in self.examples if e.trainable], name=self.name, report=self.report)


def example_id(messages: Sequence[dict[str, str]]) -> str:
    return stable_hash([[m["role"], m["content"]] for m in messages], length=16)


def detect_format(row: dict[str, Any], where: str = "") -> str:
    if "conversations" in row or "messages" in row:
        return "sharegpt"
    if "response" in row and "instruction" in row:
        return "dolly"
    if "instruction" in row:
        return "alpaca"
    raise PoolError(f"{where}: cannot tell the format of a row with keys {sorted(row)}; set pool.format")


def _text(row: dict[str, Any], key: str, where: str, required: bool = True) -> str:
    v = row.get(key)
    if v is None:
        if required:
            raise PoolError(f"{where}: missing field {key!r}")
        return ""
    if not isinstance(v, str):
        raise PoolError(f"{where}: field {key!r} must be a string, got {type(v).__name__}")
    return v.strip()


def normalise_row(row: dict[str, Any], fmt: str, where: str) -> Example:
    """Turn one raw row into an :class:`Example`, or raise :class:`PoolError` naming ``where``."""
    if fmt == "auto":
        fmt = detect_format(row, where)
    if fmt in ("alpaca", "dolly"):
        instruction = _text(row, "instruction", where)
        inp = _text(row, "context" if fmt == "dolly" and "context" in row else "input", where, required=False)
        output = _text(row, "response" if fmt == "dolly" else "output", where)
        if not instruction:
            raise PoolError(f"{where}: empty instruction")
        user = f"{instruction}\n\n{inp}" if inp else instruction
        messages = ({"role": "user", "content": user}, {"role": "assistant", "content": output})
        return Example(example_id(messages), messages, instruction, inp, output, where,
                       untrainable="" if output else EMPTY_RESPONSE)
    if fmt == "sharegpt":
        turns = row.get("conversations", row.get("messages"))
        if not isinstance(turns, list) or not turns:
            raise PoolError(f"{where}: field 'conversations' must be a non-empty list")
        messages = []
        for t, turn in enumerate(turns):
            if not isinstance(turn, dict):
                raise PoolError(f"{where}: conversations[{t}] must be an object")
            role_key = "from" if "from" in turn else "role"
            text_key = "value" if "value" in turn else "content"
            role = ROLE_ALIASES.get(str(turn.get(role_key, "")).lower())
            if role is None:
                raise PoolError(f"{where}: conversations[{t}] has unknown role {turn.get(role_key)!r}")
            content = _text(turn, text_key, f"{where} conversations[{t}]")
            messages.append({"role": role, "content": content})
        while messages and messages[-1]["role"] != "assistant":
            messages.pop()  # a trailing user turn has no response to learn from
        users = [m for m in messages if m["role"] == "user"]
        replies = [m for m in messages if m["role"] == "assistant"]
        if not users or not replies:
            raise PoolError(f"{where}: conversation needs at least one user turn and one assistant reply")
        messages = tuple(messages)
        return Example(example_id(messages), messages, users[0]["content"], "", replies[0]["content"], where,
                       untrainable=EMPTY_RESPONSE if any(not m["content"] for m in replies) else "")
    raise PoolError(f"{where}: unknown pool format {fmt!r}")


def _load_raw(spec, data_dir: Path | None) -> tuple[list[dict[str, Any]], str, str]:
    """Rows, a display name, and a content fingerprint of the source."""
    import datasets

    local = resolve_local(spec.path, data_dir) if spec.path else None
    if local is not None:
        builder = {".json": "json", ".jsonl": "json", ".parquet": "parquet", ".csv": "csv"}.get(local.suffix)
        if builder is None:
            raise PoolError(f"{local}: unsupported pool file type {local.suffix!r} (json, jsonl, parquet, csv)")
        try:
            ds = datasets.load_dataset(builder, data_files=str(local), split="train")
        except Exception as e:  # datasets wraps parse errors in several types
            raise PoolError(f"{local}: could not be read as {builder}: {e}") from e
        return ds.to_list(), str(local), file_sha256(local)
    if spec.hub:
        ds = datasets.load_dataset(spec.hub, split=spec.hub_split)
        return ds.to_list(), spec.hub, f"hub:{spec.hub}:{ds._fingerprint}"
    raise PoolError(f"pool file {spec.path!r} not found (data directory: {data_dir}); set SELBENCH_DATA_DIR "
                    "or give pool.hub for an online copy")


def resolve_local(path: str, data_dir: Path | None) -> Path | None:
    p = Path(path).expanduser()
    for cand in ([p] if p.is_absolute() else [p, *( [data_dir / p] if data_dir else [])]):
        if cand.is_file():
            return cand.resolve()
    return None


def load_pool(spec, data_dir: Path | None = None, name: str = "pool") -> Pool:
    """Load, normalise and validate an instruction pool as a protocol's ``pool`` section describes it."""
    rows, source, fingerprint = _load_raw(spec, data_dir)
    examples, bad = [], []
    for i, row in enumerate(rows):
        where = f"{source}:row {i}"
        try:
            examples.append(normalise_row(row, spec.format, where))
        except PoolError as e:
            if spec.on_bad_rows == "error":
                raise PoolError(f"{e} (set pool.on_bad_rows: drop to skip such rows)") from None
            bad.append(str(e))
    seen, unique, dups = set(), [], 0
    for e in examples:
        if e.id in seen:
            dups += 1
            continue
        seen.add(e.id)
        unique.append(e)
    if dups:  # identical conversations share an ID, so only the first copy can stay
        log.warning("%s: %d exact duplicate examples; kept the first copy of each", source, dups)
    if bad:
        log.warning("%s: dropped %d malformed rows (first: %s)", source, len(bad), bad[0])
    flagged = [i for i, e in enumerate(unique) if not e.trainable]
    if flagged:
        log.info("%s: %d rows kept but not trainable (empty response)", source, len(flagged))
    trainable = [i for i, e in enumerate(unique) if e.trainable]
    if spec.sample is not None and spec.sample < len(trainable):
        rng = np.random.default_rng(spec.sample_seed)
        keep = [trainable[i] for i in rng.choice(len(trainable), size=spec.sample, replace=False).tolist()]
        n_flagged = round(len(flagged) * spec.sample / len(trainable))  # the same rate, from a stream of its own
        frng = np.random.default_rng([spec.sample_seed, 1])
        keep += [flagged[i] for i in frng.choice(len(flagged), size=n_flagged, replace=False).tolist()]
        unique = [unique[i] for i in sorted(keep)]
    report = {"source": source, "source_sha256": fingerprint, "rows": len(rows), "dropped_bad_rows": len(bad),
              "duplicates": dups, "size": len(unique),
              "untrainable": sum(1 for e in unique if not e.trainable)}
    return Pool(unique, name=name, report=report)
