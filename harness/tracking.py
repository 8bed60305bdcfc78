"""wandb: one run per cell (project from the protocol, group = board + refresh, job_type = stage), and one
summary run per refresh (job_type ``leaderboard``) with the leaderboard's tables and figures.

Offline by default: runs are written under ``<cache dir>/wandb`` (``$SELBENCH_CACHE_DIR``, default
``<root>/.cache/selbench``) and uploaded later with ``wandb sync``.
``WANDB_MODE`` in the environment overrides the protocol (``online`` to stream). Only the *name* of the judge's
API-key variable is in the protocol, so no secret can reach a run.
"""

from __future__ import annotations

import json
import os
import struct
import time
import zlib
from pathlib import Path
from typing import Any

SECRET_HINTS = ("api_key", "token", "secret", "password")


def _scrub(obj: Any) -> Any:
    """Drop any value under a key that looks like a secret (defence in depth; the protocol holds none)."""
    if isinstance(obj, dict):
        return {k: ("<redacted>" if any(h in k.lower() for h in SECRET_HINTS) and not k.endswith("_env")
                    else _scrub(v)) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_scrub(v) for v in obj]
    return obj


def details_table(details: list[dict[str, Any]]):
    """Per-example rows (e.g. judge verdicts) as a DataFrame wandb can log: nested values become JSON text."""
    import pandas as pd

    def cell(v):
        return v if v is None or isinstance(v, (str, int, float, bool)) else json.dumps(v, default=str)

    return pd.DataFrame([{k: cell(v) for k, v in row.items()} for row in details])


def log_cell(*, protocol, run_name: str, group: str, job_type: str, wandb_dir: Path, record: dict[str, Any],
             selected: list[dict[str, Any]] | None = None, tables: dict[str, Any] | None = None,
             loss_curve: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    """Log one cell. Returns ``{"run_id", "project", "group", "mode", "dir"}`` for the record."""
    import wandb

    cfg = protocol.tracking.wandb
    mode = os.environ.get("WANDB_MODE", cfg.mode)
    wandb_dir.mkdir(parents=True, exist_ok=True)
    config = _scrub({"protocol": protocol.fixed_part(), "protocol_hash": record["protocol_hash"],
                     "method": record.get("method"), "budget": record.get("budget"), "seed": record.get("seed"),
                     "selection_hash": (record.get("selection") or {}).get("hash"),
                     "inputs_hash": record["inputs_hash"]})
    run = wandb.init(project=cfg.project, entity=cfg.entity, group=group, job_type=job_type, name=run_name,
                     config=config, dir=str(wandb_dir), mode=mode, reinit="create_new",
                     settings=wandb.Settings(console="off", x_disable_stats=True, silent=True))
    try:
        for point in loss_curve or []:
            run.log({"train/loss": point["loss"], "train/lr": point["lr"]}, step=point["step"])
        summary = {name: m["value"] for name, m in record.get("metrics", {}).items()}
        summary.update({f"{name}_stderr": m["stderr"] for name, m in record.get("metrics", {}).items()
                        if m.get("stderr") is not None})
        summary.update({f"time/{k}": v for k, v in (record.get("timings") or {}).items()
                        if isinstance(v, (int, float))})
        run.summary.update(summary)
        if selected is not None:
            art = wandb.Artifact(f"selection-{record['selection']['hash']}", type="selection",
                                 metadata={"size": len(selected), "method": record["method"]["row"]})
            with art.new_file("selected_ids.json", "w") as f:
                json.dump([s["id"] for s in selected], f)
            run.log_artifact(art)
            n = protocol.tracking.wandb.sample_table_rows
            cols = ["id", "instruction", "input", "output"]
            run.log({"selection/sample": wandb.Table(columns=cols, data=[[s[c] for c in cols] for s in selected[:n]])})
        for name, df in (tables or {}).items():
            run.log({name: wandb.Table(dataframe=df)})
        info = {"run_id": run.id, "project": cfg.project, "group": group, "mode": mode}
        run_dir = Path(run.dir).parent if run.dir else None
    finally:
        run.finish()
    if run_dir is not None and mode != "disabled":
        try:  # never a machine path in a record: relative to the cache directory that holds wandb's runs
            info["dir"] = f"<cache>/{run_dir.relative_to(wandb_dir)}"
        except ValueError:
            info["dir"] = run_dir.name
    return info


def run_path(info: dict[str, Any], wandb_dir: Path) -> Path:
    """The local directory of a logged run, from the ``wandb`` section of a record (``<cache>/wandb/...``)."""
    return Path(wandb_dir) / info["dir"].removeprefix("<cache>/")


def _loggable(df):
    """A DataFrame wandb.Table accepts: one type per column (budgets and marks as text, numbers as floats)."""
    import math

    df = df.copy()
    for c in df.columns:
        if c == "budget":
            df[c] = [("" if b is None or b == "" or (isinstance(b, float) and math.isnan(b)) else str(int(b)))
                     for b in df[c]]
        elif df[c].dtype == object:
            df[c] = ["" if v is None or (isinstance(v, float) and math.isnan(v)) else str(v) for v in df[c]]
    return df.reset_index(drop=True)


def log_leaderboard(*, protocol, board: str, group: str, wandb_dir: Path, leaderboard: dict[str, Any]
                    ) -> dict[str, Any]:
    """One summary run per refresh (job_type ``leaderboard``, the refresh's group): the leaderboard table, the
    paired comparisons (long format, one row per row x budget x metric x baseline), the noise floor per metric and
    the figures of ``leaderboard.html``. ``leaderboard`` is what :func:`selbench.leaderboard.build_leaderboard`
    returned. Returns the run's ``{"run_id", "project", "group", "mode", "dir"}``; nothing when wandb is disabled."""
    cfg = protocol.tracking.wandb
    mode = os.environ.get("WANDB_MODE", cfg.mode)
    if mode == "disabled":
        return {}
    import pandas as pd
    import wandb

    from .stats import NoiseFloor

    floors = leaderboard.get("noise_floor") or {}
    tables = {"leaderboard/table": leaderboard["table"],
              "leaderboard/comparisons": pd.DataFrame([c.as_dict() for c in leaderboard.get("comparisons") or []]),
              "leaderboard/noise_floor": pd.DataFrame([{"metric": m, **f, "sentence": NoiseFloor(**f).sentence()}
                                                       for m, f in floors.items()])}
    wandb_dir.mkdir(parents=True, exist_ok=True)
    run = wandb.init(project=cfg.project, entity=cfg.entity, group=group, job_type="leaderboard",
                     name=f"{board}/leaderboard", dir=str(wandb_dir), mode=mode, reinit="create_new",
                     config=_scrub({"board": board, "protocol_hash": protocol.hash,
                                    "records": leaderboard.get("records"), "stale": leaderboard.get("stale")}),
                     settings=wandb.Settings(console="off", x_disable_stats=True, silent=True))
    try:
        logged = {name: wandb.Table(dataframe=_loggable(df)) for name, df in tables.items() if not df.empty}
        logged.update({f"leaderboard/figures/{name}": wandb.Plotly(fig)
                       for name, fig in (leaderboard.get("figures") or {}).items()})
        if logged:
            run.log(logged)
        run.summary.update({f"noise_floor/{m}/{k}": v for m, f in floors.items() for k, v in f.items()
                            if v is not None})
        info = {"run_id": run.id, "project": cfg.project, "group": group, "mode": mode}
        run_dir = Path(run.dir).parent if run.dir else None
    finally:
        run.finish()
    if run_dir is not None:
        try:
            info["dir"] = f"<cache>/{run_dir.relative_to(wandb_dir)}"
        except ValueError:
            info["dir"] = run_dir.name
    return info


def read_offline_run(run_dir: str | Path, wait_s: float = 10.0) -> dict[str, Any]:
    """Read an offline run's ``run-<id>.wandb`` record log back: run info, config, summary, history, artifacts.

    The file is a leveldb-style log (32 KiB blocks of CRC-framed chunks) of protobuf ``Record`` messages; wandb
    ships no public reader for it, and tests and ``selbench`` use this to check what a cell logged. wandb's service
    may still be writing the log for a moment after ``run.finish()`` returns: until the run's exit record is in
    it, the log is read again for up to ``wait_s`` seconds.
    """
    run_dir = Path(run_dir)
    files = list(run_dir.glob("run-*.wandb"))
    if not files:
        raise FileNotFoundError(f"{run_dir}: no run-*.wandb file")
    deadline = time.monotonic() + wait_s
    while True:
        try:
            out = _read_record_log(files[0])
        except ValueError:  # a chunk half written
            if time.monotonic() >= deadline:
                raise
            out = {}
        if "exit_code" in out or time.monotonic() >= deadline:
            return out
        time.sleep(0.1)


def _read_record_log(path: Path) -> dict[str, Any]:
    from wandb.proto import wandb_internal_pb2 as pb

    data = path.read_bytes()
    if len(data) < 7:
        raise ValueError(f"{path}: no header yet")
    magic, ver, _ = struct.unpack("<4sHB", data[:7])
    if magic != b":W&B" or ver != 0xBEE1:
        raise ValueError(f"{path}: not a wandb record log")
    out: dict[str, Any] = {"config": {}, "summary": {}, "history": [], "artifacts": [], "run": {}}
    block, pos, chunks = 32768, 7, b""
    while pos + 7 <= len(data):
        left = block - pos % block
        if left < 7:
            pos += left
            continue
        crc, length, rtype = struct.unpack("<IHB", data[pos:pos + 7])
        payload = data[pos + 7: pos + 7 + length]
        pos += 7 + length
        if rtype == 0 and length == 0:
            continue
        if zlib.crc32(payload, zlib.crc32(bytes([rtype]))) & 0xFFFFFFFF != crc:
            raise ValueError(f"{path}: CRC mismatch at byte {pos}")
        chunks = payload if rtype in (1, 2) else chunks + payload
        if rtype not in (1, 4):
            continue
        rec = pb.Record()
        rec.ParseFromString(chunks)
        kind = rec.WhichOneof("record_type")
        if kind == "run":
            r = rec.run
            out["run"] = {"id": r.run_id, "project": r.project, "group": r.run_group, "job_type": r.job_type,
                          "name": r.display_name}
            for item in r.config.update:
                out["config"][item.key] = json.loads(item.value_json)
        elif kind == "config":
            for item in rec.config.update:
                out["config"][item.key or "/".join(item.nested_key)] = json.loads(item.value_json)
        elif kind == "summary":
            for item in rec.summary.update:
                out["summary"][item.key or "/".join(item.nested_key)] = json.loads(item.value_json)
        elif kind == "history":
            out["history"].append({i.key or "/".join(i.nested_key): json.loads(i.value_json) for i in rec.history.item})
        elif kind == "artifact":
            out["artifacts"].append({"name": rec.artifact.name, "type": rec.artifact.type,
                                     "files": [c.path for c in rec.artifact.manifest.contents]})
        elif kind == "exit":
            out["exit_code"] = rec.exit.exit_code
    return out
