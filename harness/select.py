"""Selection stage: run a registered method on the pool and check its output against the contract.

The harness, not the method, enforces the contract: exactly ``budget`` IDs (the whole pool for a full-pool
method), unique, all in the pool, finite scores. A violation fails the cell with a message that names the method
and the rule.
"""

from __future__ import annotations

import hashlib
import logging
import math
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Iterable

import numpy as np
from tqdm.auto import tqdm

from .cache import ArtifactCache, stable_hash
from .data import Example, Pool
from .registry import MethodSpec

log = logging.getLogger(__name__)


class ContractError(RuntimeError):
    pass


@dataclass
class Selection:
    """What a method returns: selected IDs in the method's order, optional per-example scores, and notes for the
    record (e.g. "threshold left 12 examples; topped up by score")."""

    ids: list[str]
    scores: dict[str, float] | None = None
    notes: list[str] = field(default_factory=list)
    extras: dict[str, Any] = field(default_factory=dict)
    # Planted-effect controls only: what to train on instead of a selected example (ID -> {"instruction",
    # "input", "output"}, any subset of those). A selection method proper never sets this: it chooses data, it
    # does not edit it.
    replacements: dict[str, dict[str, str]] | None = None

    @property
    def hash(self) -> str:
        ids = sorted(self.ids)
        return stable_hash({"ids": ids, "replacements": self.replacements}) if self.replacements else stable_hash(ids)

    def training_examples(self, pool: Pool) -> list[Example]:
        """The examples to fine-tune on: the pool's, with a control's replacements applied. An untrainable example
        (empty response) is refused, whatever selected it."""
        out = pool.subset(self.ids)
        bad = [e for e in out if not e.trainable and e.id not in (self.replacements or {})]
        if bad:
            raise ContractError(f"selection holds {len(bad)} untrainable examples (e.g. {bad[0].id}: "
                                f"{bad[0].untrainable})")
        if not self.replacements:
            return out
        return [replaced(e, self.replacements[e.id]) if e.id in self.replacements else e for e in out]


def replaced(e: Example, fields: dict[str, str]) -> Example:
    """``e`` with its first turn's instruction/input/output replaced (later turns of a conversation are kept)."""
    new = replace(e, **{k: v for k, v in fields.items() if k in ("instruction", "input", "output")})
    msgs = [dict(m) for m in e.messages]
    user = next(i for i, m in enumerate(msgs) if m["role"] == "user")
    reply = next(i for i, m in enumerate(msgs) if m["role"] == "assistant")
    msgs[user]["content"], msgs[reply]["content"] = new.prompt, new.output
    return replace(new, messages=tuple(msgs))


@dataclass
class SelectionContext:
    """Everything a method may use besides the pool and the budget. Heavy services are lazy."""

    seed: int
    cache: ArtifactCache
    base_model: Any = None  # selbench.models.BaseModelHandle
    signals: Any = None  # shared per-example signal cache (losses, embeddings, ...)
    judge: Any = None  # LLM judge client, when the protocol has one
    protocol: Any = None
    device: str = "cpu"
    logger: logging.Logger = log
    stats: dict[str, Any] = field(default_factory=dict)

    @property
    def rng(self) -> np.random.Generator:
        return np.random.default_rng(self.seed)

    def progress(self, iterable: Iterable, desc: str = "", total: int | None = None, **kw) -> Iterable:
        return tqdm(iterable, desc=desc, total=total, leave=False, dynamic_ncols=True, **kw)


def check_contract(method: str, out: Any, pool: Pool, budget: int) -> Selection:
    """Coerce a method's return value to a Selection and enforce the contract."""
    sel = out if isinstance(out, Selection) else Selection(ids=list(out) if out is not None else [])
    bad = lambda rule: ContractError(f"method {method!r} broke the selection contract: {rule}")  # noqa: E731
    if not all(isinstance(i, str) for i in sel.ids):
        raise bad("every selected ID must be a string example ID")
    if len(sel.ids) != budget:
        raise bad(f"returned {len(sel.ids)} IDs, the budget is exactly {budget}")
    if len(set(sel.ids)) != len(sel.ids):
        dup = next(i for i in sel.ids if sel.ids.count(i) > 1)
        raise bad(f"returned duplicate IDs (e.g. {dup!r})")
    unknown = [i for i in sel.ids if i not in pool]
    if unknown:
        raise bad(f"returned {len(unknown)} IDs not in the pool (e.g. {unknown[0]!r})")
    if sel.replacements is not None and not set(sel.replacements) <= set(sel.ids):
        raise bad("replacements given for IDs it did not select")
    if sel.scores is not None:
        for k, v in sel.scores.items():
            if k not in pool:
                raise bad(f"score given for unknown ID {k!r}")
            if not isinstance(v, (int, float)) or not math.isfinite(v):
                raise bad(f"score for {k!r} is not a finite number ({v!r})")
    return sel


def run_selection(spec: MethodSpec, pool: Pool, budget: int, ctx: SelectionContext,
                  params: dict[str, Any] | None = None) -> tuple[Selection, float]:
    """Call the method and check its output. Returns the selection and wall seconds.

    Untrainable rows (selbench.data): a method that reads the response gets the pool without them; one that does
    not gets them too, with the budget raised by their number, and its picks are filtered to trainable ones
    (:func:`keep_trainable`). ``budget`` counts trainable examples."""
    kwargs = {**spec.defaults, **(params or {})}
    shown = pool if pool.untrainable and not spec.reads_output(kwargs) else pool.trainable()
    ask = budget + len(shown.untrainable)
    t0 = time.perf_counter()
    out = spec.fn(shown, ask, ctx, **kwargs)
    wall = time.perf_counter() - t0
    return keep_trainable(check_contract(spec.name, out, shown, ask), pool, budget, shown is pool), wall


def keep_trainable(sel: Selection, pool: Pool, budget: int, shown_untrainable: bool) -> Selection:
    """The first ``budget`` trainable IDs of ``sel`` (in the method's order), and what the record says about the
    pool's untrainable rows: which they are and why, whether the method saw them, which of its picks were skipped."""
    flagged = pool.untrainable
    if not flagged:
        return sel
    skipped = [i for i in sel.ids if i in flagged]
    sel.ids = [i for i in sel.ids if i not in flagged][:budget]
    reasons = sorted(set(flagged.values()))
    sel.extras["untrainable"] = {"rows": flagged, "shown_to_method": shown_untrainable, "skipped_picks": skipped}
    sel.notes.append(
        f"{len(flagged)} untrainable rows ({', '.join(reasons)}): " +
        (f"ranked by the method but not selectable; {len(skipped)} of its picks skipped" if shown_untrainable
         else "not shown to the method (it reads the response)"))
    return sel


def selection_inputs(pool: Pool, spec: MethodSpec, params: dict[str, Any], budget: int, seed: int,
                     base_identity: str, recipe_template: str) -> dict[str, Any]:
    """Everything a selection depends on: the inputs of its cache key (see :func:`cached_selection`)."""
    merged = {**spec.defaults, **params}
    return {"pool": pool.hash, "method": spec.name, "version": spec.version, "source": spec.source_hash,
            "params": merged, "files": file_fingerprints(merged), "budget": budget, "seed": seed,
            "base_model": base_identity, "chat_template": recipe_template}


def file_fingerprints(params: dict[str, Any]) -> dict[str, str]:
    """sha256 of every parameter that names an existing file (a submission, target texts), so an edited file
    never reuses a stale selection."""
    out = {}
    for k, v in params.items():
        for i, item in enumerate(v if isinstance(v, (list, tuple)) else [v]):
            if isinstance(item, str) and item and len(item) < 4096:
                p = Path(item).expanduser()
                if p.is_file():
                    out[f"{k}[{i}]"] = hashlib.sha256(p.read_bytes()).hexdigest()
    return out


def signal_report(signals) -> dict[str, list[str]]:
    """The signals a selection computed and reused (nothing when it never touched the signal cache)."""
    if signals is None or not getattr(signals, "used", True):
        return {"computed": [], "reused": []}
    return signals.report()


def judge_identity(ctx: SelectionContext) -> Any:
    """What names the judge a judged method asks: the protocol's ``judge`` settings that change verdicts, or (no
    protocol, e.g. a test) the client's identity."""
    if ctx.protocol is not None:
        return ctx.protocol.judge.identity()
    return getattr(ctx.judge, "identity", None) if ctx.judge is not None else None


def cached_selection(spec: MethodSpec, pool: Pool, budget: int, ctx: SelectionContext, params: dict[str, Any],
                     inputs: dict[str, Any]) -> tuple[Selection, dict[str, Any]]:
    """Run the method unless a selection for the same ``inputs`` (:func:`selection_inputs`) is cached; returns the
    selection and its metadata, with its cache key. A method that asks the judge (``uses_judge``) adds the judge's
    identity to the key (:func:`judge_identity`). The key names no engine or device: a selection depends on them
    only through the signals it reads, which are cached under theirs (like a record, see ``Protocol.engine`` and
    ``Protocol.scoring_engine``)."""
    ran = []
    if spec.uses_judge:  # the judge's verdict-relevant settings (the protocol's; no judge is started for them)
        inputs = {**inputs, "judge": judge_identity(ctx)}

    def run() -> dict[str, Any]:
        cpu0 = time.process_time()
        sel, wall = run_selection(spec, pool, budget, ctx, params)
        ran.append(sel)
        # The cost is stored with the selection, so a record rebuilt from the cache still reports what it cost.
        meta = {"wall_s": round(wall, 3), "cpu_s": round(time.process_time() - cpu0, 2),
                "device": str(getattr(ctx.base_model, "device", "cpu")), "signals": signal_report(ctx.signals),
                "stats": ctx.stats}
        return {"ids": sel.ids, "scores": sel.scores, "notes": sel.notes, "extras": sel.extras,
                "replacements": sel.replacements, "meta": meta}

    art = ctx.cache.get_or_compute("selections", inputs, run, engine=None, device=None)
    v = art.value
    sel = ran[0] if ran else Selection(v["ids"], v.get("scores"), v.get("notes", []), v.get("extras", {}),
                                       v.get("replacements"))
    return sel, {**v["meta"], "cached": art.hit, "key": art.key}
