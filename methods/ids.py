"""Submissions: the selection is a file of example IDs made by code the harness never sees (DataComp-style).

``file`` is JSON: an object mapping each budget (as a string) to the selected examples, either content-hash
example IDs (``selbench`` pool IDs, e.g. from ``selbench.data.load_pool``) or integer row indices of the pool file
(0-based, as in the file, before any sampling), or a plain list when the board has one budget. The selection's
notes and extras record the file's sha256 and which form was read; the harness's contract (exact budget, unique
IDs, all in the pool) applies as for every method. A row index outside the board's pool (dropped as malformed, or
outside its sample) is an error naming the index.
"""

import hashlib
import json
from pathlib import Path

from selbench.registry import register_method
from selbench.select import Selection


def read_submission(path: Path, budget: int) -> list:
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as e:
        raise ValueError(f"ids: cannot read submission {path}: {e}") from None
    picked = raw.get(str(budget)) if isinstance(raw, dict) else raw
    if not isinstance(picked, list):
        have = sorted(raw) if isinstance(raw, dict) else "a list"
        raise ValueError(f"ids: {path} has no list for budget {budget} (it has {have})")
    return picked


def rows_to_ids(pool, rows: list[int], path: Path) -> list[str]:
    by_row = {int(e.source.rsplit(":row ", 1)[1]): e.id for e in pool if ":row " in e.source}
    missing = [r for r in rows if r not in by_row]
    if missing:
        raise ValueError(f"ids: {path}: row index {missing[0]} is not in the board's pool (dropped as malformed "
                         f"or outside its sample); {len(missing)} such rows")
    return [by_row[r] for r in rows]


@register_method("ids", family="baseline", aspect="reference",
                 description="Submission: the example IDs (or pool-file row indices) listed in a JSON file per "
                             "budget, selected by code outside the harness; the file's hash is recorded.",
                 citation="Submission track in the style of DataComp (Gadre et al. 2023, arXiv 2304.14108)")
def select_ids(pool, budget, ctx, file: str = ""):
    if not file:
        raise ValueError("ids: set the parameter `file` to the submission's JSON file")
    path = Path(file).expanduser().resolve()
    picked = read_submission(path, budget)
    as_rows = bool(picked) and all(isinstance(x, int) and not isinstance(x, bool) for x in picked)
    ids = rows_to_ids(pool, picked, path) if as_rows else [str(x) for x in picked]
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    return Selection(ids, notes=[f"submission {path.name} sha256 {digest[:16]} ({'row indices' if as_rows else 'IDs'})"],
                     extras={"submission": {"file": path.name, "sha256": digest,
                                            "form": "rows" if as_rows else "ids"}})
