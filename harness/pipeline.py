"""The pipeline, top-down: protocol -> select -> train -> evaluate -> record -> leaderboard (wandb per cell).

``refresh`` runs a board's whole matrix (methods x budgets x seeds, plus the base-model reference row);
``run_cell`` runs one cell. Every stage's output is cached by a hash of its inputs, and a cell whose record exists
for the same inputs is skipped, so a refresh killed at any point resumes without recomputing finished work.
"""

from __future__ import annotations

import contextlib
import logging
import time
from dataclasses import dataclass, field, replace
from functools import cached_property
from typing import Any, Iterable

from rich.console import Console

from . import registry
from .cache import ArtifactCache, stable_hash
from .data import Pool, load_pool
from .errors import JudgeUnavailable
from .evaluate import (EvalContext, ModelUnderTest, check_evaluation, configured_evaluators, evaluate_cached,
                       load_evaluators, metric_json)
from .leaderboard import build_leaderboard
from .models import BaseModelHandle, resolve_base_model
from .plan import duration_text
from .paths import Workspace, portable_path
from .protocol import MethodEntry, Protocol, load_protocol
from .record import BASE_ROW, SECOND_JUDGE, is_current, package_versions, record_path, write_record
from .select import SelectionContext, cached_selection, file_fingerprints, selection_inputs
from .tracking import details_table, log_cell, log_leaderboard
from .device import device_setting, resolve_device, resolve_dtype
from .train import finetune, launch_finetune, train_processes, train_strategy

log = logging.getLogger(__name__)
console = Console(stderr=True)


@dataclass(frozen=True)
class Cell:
    row: str  # leaderboard row: the method's label or name
    budget: int
    seed: int

    def __str__(self) -> str:
        return f"{self.row}/{self.budget}/seed{self.seed}"


@dataclass
class Board:
    """A loaded board: protocol, pool, base model, caches. Heavy parts load on first use."""

    ws: Workspace
    name: str
    plugins: tuple[str, ...] = ()
    refresh_id: str = field(default_factory=lambda: time.strftime("%Y%m%d-%H%M%S"))
    ad_hoc: tuple[MethodEntry, ...] = ()  # rows run without editing the committed protocol (recorded as ad hoc)

    def __post_init__(self):
        self.protocol: Protocol = load_protocol(self.ws.protocol_path(self.name))
        self.cache = ArtifactCache(self.ws.cache_dir)
        self.cache.sweep_scratch()  # a killed run's judge home, log and sockets, whether or not this run needs them
        self.device = resolve_device(device_setting(self.protocol))  # every stage computes here
        self.dtype = resolve_dtype(self.protocol.base_model.dtype, self.device)
        self.methods = registry.load_all(self.plugins)
        # Methods are not part of the protocol's hash, so an ad hoc row leaves the board's other records current.
        committed = {m.row: m for m in self.protocol.methods}
        extra = [m for m in self.ad_hoc if m.row not in committed]
        for m in self.ad_hoc:
            if m.row in committed and committed[m.row] != m:
                raise ValueError(f"ad hoc row {m.row!r} differs from the protocol's row of that name; give it "
                                 f"another --label")
        self._ad_hoc_rows = {m.row for m in extra}
        if extra:
            self.protocol = self.protocol.model_copy(update={"methods": [*self.protocol.methods, *extra]})
        check_evaluation(self.protocol, str(self.ws.protocol_path(self.name)))
        for i, m in enumerate(self.protocol.methods):  # fail before any work on a bad method or parameter
            where = f"ad hoc row {m.row!r}" if m.row in self._ad_hoc_rows else \
                f"{self.ws.protocol_path(self.name)}: methods[{i}] ({m.row})"
            registry.validate_params(registry.get_method(m.name), m.params, where)
        self._judge_stack = contextlib.ExitStack()
        self._judge = self._second_judge = None

    @cached_property
    def pool(self) -> Pool:
        return load_pool(self.protocol.pool, self.ws.data_dir, name=self.name)

    @cached_property
    def base(self):
        return resolve_base_model(self.protocol.base_model, self.cache)

    @cached_property
    def base_handle(self) -> BaseModelHandle:
        return BaseModelHandle(self.base, self.dtype, self.protocol.recipe.chat_template, device=self.device)

    def new_signals(self):
        """A signal cache for one selection (its report is that cell's computed-vs-reused accounting); the
        disk cache and the loaded base model are shared by all."""
        from .signals import SignalCache

        return SignalCache(self.cache, self.base_handle, max_len=self.protocol.recipe.max_seq_len,
                           engine=self.protocol.scoring_engine)

    # -- the matrix -------------------------------------------------------------------------------------------
    def cells(self, rows: Iterable[str] | None = None) -> list[Cell]:
        """Baselines first (other cells' pairwise evaluation compares against them), then the rest."""
        wanted = list(rows) if rows else [m.row for m in self.protocol.methods]
        for r in wanted:
            self.protocol.method(r)
        out = []
        for seed in self.protocol.seeds:
            for r in sorted(wanted, key=lambda r: (r not in ("full", "random"), r != "full")):
                spec = registry.get_method(self.protocol.method(r).name)
                n = self.pool.n_trainable  # budgets count what can be trained on (selbench.data)
                budgets = [n] if spec.full_pool else \
                    [self.protocol.resolve_budget(b, n) for b in self.protocol.budgets]
                out += [Cell(r, b, seed) for b in dict.fromkeys(budgets)]
        return out

    def cell_inputs(self, cell: Cell) -> dict[str, Any]:
        entry = self.protocol.method(cell.row)
        spec = registry.get_method(entry.name)
        params = {**spec.defaults, **entry.params}
        return {"protocol": self.protocol.hash, "row": cell.row, "method": entry.name, "version": spec.version,
                "source": spec.source_hash, "params": params, "files": file_fingerprints(params),
                "budget": cell.budget, "seed": cell.seed, "evaluators": self.evaluator_versions,
                "pool": self.pool.hash}  # the pool file's content, not only its protocol entry

    def cell_path(self, cell: Cell):
        return record_path(self.ws.results, self.name, cell.row, cell.budget, cell.seed)

    def pending(self, rows: Iterable[str] | None = None) -> tuple[list[Cell], bool]:
        """The cells a refresh would run (no current record), and whether the base model's record is current."""
        todo = [c for c in self.cells(rows) if not is_current(self.cell_path(c), stable_hash(self.cell_inputs(c)))]
        return todo, is_current(self.base_path(), stable_hash(self.base_inputs()))

    def base_path(self):
        return record_path(self.ws.results, self.name, BASE_ROW, None, 0)

    def base_inputs(self) -> dict[str, Any]:
        return {"protocol": self.protocol.hash, "row": BASE_ROW, "evaluators": self.evaluator_versions}

    @cached_property
    def evaluator_versions(self) -> dict[str, str]:
        """A new evaluator version makes every record stale (its own cached results then miss; the others hit)."""
        known = load_evaluators()
        return {name: known[name].version for name in configured_evaluators(self.protocol) if name in known}

    # -- judge lifecycle: started on first use, stopped when the board closes -------------------------------
    def judge(self):
        if self._judge is None:
            from .judge import open_judge

            self._judge = self._judge_stack.enter_context(open_judge(self.protocol.judge, self.cache, self.device))
        return self._judge

    def second_judge(self):
        if self._second_judge is None:
            from .judge import open_judge

            self._second_judge = self._judge_stack.enter_context(open_judge(self.protocol.second_judge, self.cache,
                                                                            self.device))
        return self._second_judge

    def close(self) -> None:
        self._judge_stack.close()
        self._judge = self._second_judge = None

    # -- stages -------------------------------------------------------------------------------------------------
    def select(self, cell: Cell):
        entry = self.protocol.method(cell.row)
        spec = registry.get_method(entry.name)
        inputs = selection_inputs(self.pool, spec, entry.params, cell.budget, cell.seed, self.base.identity,
                                  self.protocol.recipe.chat_template)
        ctx = SelectionContext(seed=cell.seed, cache=self.cache, base_model=self.base_handle,
                               signals=_LazySignals(self.new_signals), judge=_LazyJudge(self), protocol=self.protocol)
        return cached_selection(spec, self.pool, cell.budget, ctx, entry.params, inputs)

    def train(self, selection, seed: int) -> tuple[ModelUnderTest, dict[str, Any]]:
        recipe = self.protocol.recipe
        inputs = {"base": self.base.identity, "recipe": recipe.identity(), "selection": selection.hash,
                  "seed": seed, "dtype": self.dtype}
        procs = train_processes()
        if procs > 1:  # the same global batch; only dropout masks differ from a 1-process run
            inputs["processes"] = procs
            if train_strategy() != "ddp":  # FSDP keeps float32 master weights under a bfloat16 run
                inputs["strategy"] = train_strategy()

        def train(tmp):
            if self.device != "cpu":  # the refresh's vLLM engines hold GPU memory that training needs
                from .vllm_engine import release_shared_engines

                release_shared_engines()
            examples = selection.training_examples(self.pool)
            if procs > 1:
                return launch_finetune(procs, self.base.path, examples, recipe, seed, tmp, self.dtype, self.device)
            return finetune(self.base.path, examples, recipe, seed, tmp, dtype=self.dtype, device=self.device)

        art = self.cache.get_or_compute("adapters", inputs, train, engine=None, device=self.device, form="dir")
        out, key = art.path, art.key
        import json

        report = json.loads((out / "train_report.json").read_text())
        model = ModelUnderTest(name=key, base_path=str(out) if recipe.finetune == "full" else self.base.path,
                               adapter=None if recipe.finetune == "full" else str(out),
                               identity=f"{self.base.identity}+train:{key}", dtype=self.dtype,
                               chat_template=recipe.chat_template, device=self.device)
        return model, {**report, "key": key}

    def base_model_under_test(self) -> ModelUnderTest:
        return ModelUnderTest(BASE_ROW, self.base.path, None, self.base.identity, self.dtype,
                              self.protocol.recipe.chat_template, self.device)

    def baseline_models(self, cell: Cell, needed: set[str]) -> dict[str, ModelUnderTest]:
        """Trained models of the reference rows that pairwise evaluation compares this cell against."""
        out = {}
        rows = {m.row: m for m in self.protocol.methods}
        budgets = {self.protocol.resolve_budget(b, self.pool.n_trainable) for b in self.protocol.budgets}
        for ref in sorted(needed):
            if ref not in rows:
                continue
            full_pool = registry.get_method(rows[ref].name).full_pool
            if not full_pool and cell.budget not in budgets:
                continue  # e.g. the full cell: there is no random model of the whole pool's size to compare with
            budget = self.pool.n_trainable if full_pool else cell.budget
            ref_cell = Cell(ref, budget, cell.seed)
            console.print(f"[bold]{self.name}[/] {cell}: baseline {ref_cell} for the comparison (select and train "
                          f"unless cached)")
            selection, _ = self.select(ref_cell)
            out[ref], _ = self.train(selection, cell.seed)
        return out

    def evaluate(self, model: ModelUnderTest, cell: Cell | None) -> tuple[dict, dict, dict, dict]:
        evaluators = load_evaluators()
        metrics, summary, details, tables = {}, {}, {}, {}
        for name, spec in configured_evaluators(self.protocol).items():
            if name not in evaluators:
                raise ValueError(f"{self.ws.protocol_path(self.name)}: evaluation.{name} names no known evaluator "
                                 f"(known: {sorted(evaluators)})")
            ev = evaluators[name]
            baselines = self.baseline_models(cell, set(ev.needs_baselines)) if cell and ev.needs_baselines else {}
            ctx = EvalContext(self.protocol, self.cache, self.ws.data_dir, seed=cell.seed if cell else 0,
                              judge_provider=self.judge if ev.needs_judge else None, baselines=baselines)
            t0 = time.perf_counter()
            result, cached = evaluate_cached(ev, model, spec, ctx)
            for k, m in result.metrics.items():
                metrics[f"{name}/{k}"] = metric_json(m)
            summary[name] = {"counts": result.counts, "info": result.info, "cached": cached,
                             "wall_s": result.info.get("wall_s", round(time.perf_counter() - t0, 2))}
            details[name] = result.details
            tables.update({f"{name}/{k}": v for k, v in result.tables.items()})
            if ev.needs_judge and result.details:
                tables[f"{name}/judgments"] = details_table(result.details)
            if ev.needs_judge and self.protocol.second_judge is not None:
                summary[name]["second_judge"], details[f"{name}.{SECOND_JUDGE}"] = \
                    self.evaluate_by_second_judge(ev, model, spec, ctx)
        return metrics, summary, details, tables

    def evaluate_by_second_judge(self, ev, model: ModelUnderTest, spec, ctx: EvalContext) -> tuple[dict, list]:
        """The same evaluation judged by the protocol's ``second_judge``: the answers come from the generation
        cache, so only judgments are new. Its per-item verdicts feed the agreement diagnostic (judge_bias); their
        ``scores`` are dropped, so paired comparisons and the board's metrics stay the first judge's."""
        second = self.protocol.second_judge
        ctx2 = replace(ctx, protocol=self.protocol.model_copy(update={"judge": second}),
                       judge_provider=self.second_judge)
        t0 = time.perf_counter()
        result, cached = evaluate_cached(ev, model, spec, ctx2)
        info = {"judge": second.identity(), "metrics": {k: metric_json(m) for k, m in result.metrics.items()},
                "counts": result.counts, "cached": cached,
                "wall_s": result.info.get("wall_s", round(time.perf_counter() - t0, 2))}
        return info, [{k: v for k, v in row.items() if k != "scores"} for row in result.details]

    # -- cells --------------------------------------------------------------------------------------------------
    def run_cell(self, cell: Cell, force: bool = False) -> tuple[str, dict[str, Any] | None]:
        """Returns ("skipped"|"done", record)."""
        inputs = self.cell_inputs(cell)
        inputs_hash = stable_hash(inputs)
        path = self.cell_path(cell)
        if not force and is_current(path, inputs_hash):
            return "skipped", None
        entry = self.protocol.method(cell.row)
        spec = registry.get_method(entry.name)
        console.print(f"[bold]{self.name}[/] {cell}: select")
        selection, sel_meta = self.select(cell)
        console.print(f"[bold]{self.name}[/] {cell}: train on {len(selection.ids)} examples")
        model, train_report = self.train(selection, cell.seed)
        console.print(f"[bold]{self.name}[/] {cell}: evaluate")
        metrics, eval_summary, details, tables = self.evaluate(model, cell)
        record = {
            "board": self.name, "protocol_hash": self.protocol.hash, "inputs_hash": inputs_hash,
            "method": {"row": cell.row, "name": entry.name, "params": inputs["params"], "version": spec.version,
                       "source_hash": spec.source_hash, "family": spec.family, "aspect": spec.aspect,
                       "citation": spec.citation, **({"ad_hoc": True} if cell.row in self._ad_hoc_rows else {})},
            "budget": cell.budget, "seed": cell.seed,
            "pool": {"hash": self.pool.hash, "size": len(self.pool),
                     "source": portable_path(self.pool.report.get("source"), self.ws.root)},
            "selection": {"hash": selection.hash, "size": len(selection.ids), "notes": selection.notes,
                          "ids": None if spec.full_pool else selection.ids,  # the full row: the pool
                          "key": sel_meta["key"], "cost": {**{k: sel_meta.get(k) for k in ("wall_s", "cpu_s", "device", "signals", "cached")},
                                   **({"judge": j} if (j := (sel_meta.get("stats") or {}).get("judge")) else {})},
                          "untrainable": selection.extras.get("untrainable")},  # rows it could not select, why
            "training": {k: v for k, v in train_report.items() if k != "loss_curve"},
            "metrics": metrics, "evaluation": eval_summary,
            "timings": {"select_s": sel_meta.get("wall_s"), "train_s": train_report.get("wall_s"),
                        "eval_s": round(sum(e["wall_s"] for e in eval_summary.values()), 2)},
            "versions": package_versions(),
        }
        selected = [e.to_dict() for e in selection.training_examples(self.pool)]
        record["wandb"] = log_cell(protocol=self.protocol, run_name=f"{self.name}/{cell}", group=self.group,
                                   job_type="select-train-eval", wandb_dir=self.ws.wandb_dir, record=record,
                                   selected=selected, tables=tables, loss_curve=train_report.get("loss_curve"))
        write_record(path, record, details)
        return "done", record

    def run_base(self, force: bool = False) -> tuple[str, dict[str, Any] | None]:
        """The base model without fine-tuning: evaluated once per board as the reference row."""
        inputs_hash = stable_hash(self.base_inputs())
        path = self.base_path()
        if not force and is_current(path, inputs_hash):
            return "skipped", None
        console.print(f"[bold]{self.name}[/] base model: evaluate")
        metrics, eval_summary, details, tables = self.evaluate(self.base_model_under_test(), None)
        record = {"board": self.name, "protocol_hash": self.protocol.hash, "inputs_hash": inputs_hash,
                  "method": {"row": BASE_ROW, "name": BASE_ROW, "family": "reference", "params": {}},
                  "budget": None, "seed": 0, "metrics": metrics, "evaluation": eval_summary,
                  "timings": {"eval_s": round(sum(e["wall_s"] for e in eval_summary.values()), 2)},
                  "base_model": self.base.description, "versions": package_versions()}
        record["wandb"] = log_cell(protocol=self.protocol, run_name=f"{self.name}/base", group=self.group,
                                   job_type="eval", wandb_dir=self.ws.wandb_dir, record=record, tables=tables)
        write_record(path, record, details)
        return "done", record

    @property
    def group(self) -> str:
        return f"{self.name}-refresh-{self.refresh_id}"

    def leaderboard(self) -> dict[str, Any]:
        return build_leaderboard(self.ws.results, self.ws.board_dir(self.name), self.name, self.protocol)


class _LazySignals:
    """Gives a method a signal cache, created (and the base model loaded) only when the method asks."""

    def __init__(self, factory):
        self._factory, self._signals, self.used = factory, None, False

    def __getattr__(self, name):
        if self._signals is None:
            self.used, self._signals = True, self._factory()
        return getattr(self._signals, name)


class _LazyJudge:
    def __init__(self, board: Board):
        self._board = board

    def __getattr__(self, name):
        return getattr(self._board.judge(), name)


class RefreshPace:
    """Says after each finished job how far a refresh is and, at its own pace so far, how long the rest will take."""

    def __init__(self, board: str, total: int):
        self.board, self.total, self.finished, self.t0 = board, total, 0, time.perf_counter()

    def finish(self) -> str:
        self.finished += 1
        per_job = (time.perf_counter() - self.t0) / self.finished
        left = max(self.total - self.finished, 0)
        line = (f"{self.board}: {self.finished} of {self.total} jobs run, {per_job / 60:.1f} min each so far"
                + (f", ~{duration_text(per_job * left)} for the {left} left" if left else ""))
        console.print(line)
        return line


@dataclass
class RefreshSummary:
    done: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)
    stopped: str | None = None  # why the refresh ended before its last cell
    progress: list[str] = field(default_factory=list)  # one line per job run: how far, and how long the rest takes
    leaderboard: dict[str, Any] = field(default_factory=dict)


def refresh(ws: Workspace, board_name: str, rows: list[str] | None = None, force: bool = False,
            plugins: Iterable[str] = (), include_base: bool = True, ad_hoc: Iterable[MethodEntry] = (),
            executor: str = "local", address: str | None = None,
            task_resources: dict[str, float] | None = None) -> RefreshSummary:
    """Run every cell of the board that has no current record (on the ``local`` or ``ray`` executor, see
    :mod:`selbench.executors`), then regenerate its leaderboard."""
    from .executors import EXECUTORS, run_local, run_ray
    from .vllm_engine import shared_engines

    if executor not in EXECUTORS:
        raise ValueError(f"executor must be one of {EXECUTORS}, got {executor!r}")
    board = Board(ws, board_name, tuple(plugins), ad_hoc=tuple(ad_hoc))
    summary = RefreshSummary()
    todo, base_current = board.pending(rows)
    force_base = force and not rows  # `--force --methods X` recomputes X's rows only, not the base row
    n_cells = len(board.cells(rows)) if force else len(todo)
    pace = RefreshPace(board_name, n_cells + int(include_base and (force_base or not base_current)))

    def on_result(name: str, result) -> bool:
        if isinstance(result, JudgeUnavailable):  # every later judged cell would fail the same way: stop here
            summary.failed[name] = str(result)
            summary.stopped = f"stopped: {result}; the next refresh retries what is missing"
            return False
        if isinstance(result, BaseException):  # one broken method must not stop the others
            log.error("cell %s failed: %s: %s", name, type(result).__name__, result, exc_info=result)
            summary.failed[name] = f"{type(result).__name__}: {result}"
        else:
            (summary.done if result == "done" else summary.skipped).append(name)
        if result != "skipped":
            summary.progress.append(pace.finish())
        return True

    try:
        if executor == "ray":
            if board.ad_hoc:
                raise ValueError("ad hoc rows run on the local executor (a Ray worker loads the committed protocol)")
            run_ray(board, rows, force, address, task_resources or {"num_cpus": 1}, on_result, include_base)
        else:
            jobs = [(BASE_ROW, lambda: board.run_base(force_base))] if include_base else []
            jobs += [(str(cell), lambda cell=cell: board.run_cell(cell, force))  # the pool loads and validates
                     for cell in board.cells(rows)]                             # here, before any expensive work
            with shared_engines(board.cache.root):  # vLLM engines started once for all cells, on first use
                run_local(jobs, on_result)
    finally:
        board.close()
    summary.leaderboard = board.leaderboard()
    summary.leaderboard["wandb"] = log_leaderboard(protocol=board.protocol, board=board_name, group=board.group,
                                                   wandb_dir=ws.wandb_dir, leaderboard=summary.leaderboard)
    return summary
