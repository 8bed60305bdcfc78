"""Contamination report: which pool examples overlap an evaluation item of the board, and whether a selection
picks them more often than the pool's base rate.

Two checks, each pool example against every item the board's evaluators ask (its protocol's limits applied; with
``full_sets`` every item of the sets they draw from):
- 13-gram overlap as in GPT-3 / lm-eval's decontamination (``lm_eval.decontamination.janitor``): lowercase, drop
  ASCII punctuation, split on whitespace, word 13-grams; a pool example (instruction, input and output) overlaps an
  item when they share one 13-gram. Texts of fewer than 13 words have no 13-gram: the embedding check covers them.
- near duplicates: cosine similarity of all-MiniLM-L6-v2 embeddings (normalised; the shared signal cache) of the
  example's prompt (instruction + input) and the item's text, at or above ``threshold``.

Per selection (each current record of the board): the share of selected examples that overlap any item, the pool's
base rate, and a one-sided hypergeometric test (``scipy.stats.hypergeom``: drawing the selection's size from the
pool without replacement, P(at least this many overlapping)); ``flagged`` when p < ``alpha``. The pool-vs-items
overlap is cached in the ArtifactCache under ``contamination``, keyed by the pool, the items' texts and the settings.
"""

from __future__ import annotations

import functools
import math
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np

from .cache import ArtifactCache, atomic_write_json, read_json, read_jsonl, stable_hash
from .data import Example, Pool

NGRAM = 13
THRESHOLD = 0.9
ALPHA = 0.05
REPORT = "contamination.json"


@dataclass(frozen=True)
class EvalItem:
    id: str  # "<set>/<index or id>", the evaluators' item IDs where they have one (lm-eval: "<task>/<doc_id>")
    text: str

    @property
    def set(self) -> str:
        return self.id.rsplit("/", 1)[0]


# ---- evaluation sets -------------------------------------------------------------------------------------------

def _lm_eval_items(tasks: list[str], limit: int | float | None) -> tuple[list[EvalItem], list[str]]:
    from lm_eval.tasks import TaskManager

    from .lm_eval_runner import TASKS_DIR, local_task_names

    local = [t for t in tasks if t in local_task_names()]
    loaded = TaskManager(include_path=str(TASKS_DIR), include_defaults=False).load(local)["tasks"] if local else {}
    items = []
    for name, task in loaded.items():
        docs = list(task.test_docs())
        n = len(docs) if limit is None else int(math.ceil(len(docs) * limit)) if limit < 1 else int(limit)
        items += [EvalItem(f"{name}/{i}", str(task.doc_to_text(doc))) for i, doc in enumerate(docs[:n])]
    return items, [f"lm_eval/{t}: not a local task, not checked" for t in tasks if t not in local]


def evaluation_items(protocol, data_dir: Path, full_sets: bool = False) -> tuple[list[EvalItem], list[str]]:
    """The items the board's evaluators ask (``full_sets``: every item of the sets they draw from), and notes on
    what was not checked. Item IDs are the evaluators' where they have them (lm-eval: ``<task>/<doc_id>``)."""
    from .evaluate import configured_evaluators

    ctx = SimpleNamespace(data_dir=data_dir)
    root = Path(data_dir) / "open_ended"
    items, notes = [], []
    for name, spec in configured_evaluators(protocol).items():
        spec = dict(spec or {})
        if name == "lm_eval":
            got, skipped = _lm_eval_items(list(spec["tasks"]), None if full_sets else spec.get("limit"))
            items += got
            notes += skipped
        elif name == "mt_bench":
            from .judge.mt_bench import MTBenchSettings, select_questions

            rows = read_jsonl(root / "mt_bench" / "question.jsonl")
            rows = rows if full_sets else select_questions(rows, MTBenchSettings.model_validate(spec))
            items += [EvalItem(f"mt_bench/{q['question_id']}", "\n".join(q["turns"])) for q in rows]
        elif name == "alpaca_eval":
            from .judge.alpaca_eval import AlpacaEvalSettings, reference_outputs

            refs = reference_outputs(ctx, AlpacaEvalSettings.model_validate(
                {**spec, "max_instances": None} if full_sets else spec))
            items += [EvalItem(f"alpaca_eval/{i}", r["instruction"]) for i, r in enumerate(refs)]
        elif name == "pairwise":
            from .judge.pairwise import PairwiseSettings, load_set

            s = PairwiseSettings.model_validate(spec)
            for set_name in s.sets:
                texts = load_set(ctx, set_name)
                items += [EvalItem(f"pairwise/{set_name}/{i}", t)
                          for i, t in enumerate(texts if full_sets else texts[: s.per_set])]
        elif name == "ref_likelihood":
            from .ref_likelihood import RefLikelihoodSettings, reference_pairs

            s = RefLikelihoodSettings.model_validate(spec)
            for set_name in s.sets:
                pairs = reference_pairs(root, set_name, s.shuffle_seed)
                items += [EvalItem(f"{set_name}/{stable_hash([q, a])[:16]}", f"{q}\n{a}")
                          for q, a in (pairs if full_sets else pairs[: s.per_set])]
        else:
            notes.append(f"{name}: no evaluation set known to the contamination report, not checked")
    return items, notes


# ---- overlap ---------------------------------------------------------------------------------------------------

def ngrams(text: str, n: int = NGRAM) -> set[str]:
    """lm-eval's decontamination normalisation (Janitor: ASCII lowercase, punctuation deleted) and word n-grams."""
    from lm_eval.decontamination.janitor import word_ngrams

    return set(word_ngrams(_janitor().normalize_string(text), n))


@functools.lru_cache(maxsize=None)
def _janitor():
    from lm_eval.decontamination.janitor import Janitor

    return Janitor(ngram_n=NGRAM)


def ngram_overlaps(pool: Pool, items: list[EvalItem], n: int = NGRAM) -> dict[str, set[str]]:
    index: dict[str, set[str]] = defaultdict(set)
    for it in items:
        for g in ngrams(it.text, n):
            index[g].add(it.id)
    out = {}
    for e in pool:
        hit = set().union(*(index.get(g, ()) for g in ngrams(_full_text(e), n)))
        if hit:
            out[e.id] = hit
    return out


def _full_text(e: Example) -> str:
    return "\n".join(p for p in (e.instruction, e.input, e.output) if p)


def _text_pool(texts: list[str]) -> tuple[Pool, list[int]]:
    """Unique texts as a pool (content-hash IDs, so the signal cache keys on the texts) and each text's row."""
    from .data import example_id

    rows: dict[str, int] = {}
    examples = []
    for t in texts:
        messages = ({"role": "user", "content": t},)
        eid = example_id(messages)
        if eid not in rows:
            rows[eid] = len(examples)
            examples.append(Example(id=eid, messages=messages, instruction=t))
    return Pool(examples, name="eval-items"), [rows[example_id(({"role": "user", "content": t},))] for t in texts]


def embedding_overlaps(pool: Pool, items: list[EvalItem], signals, threshold: float = THRESHOLD,
                       block: int = 1024) -> dict[str, dict[str, float]]:
    """``{example_id: {item_id: cosine}}`` for pairs at or above ``threshold``."""
    if not items or not len(pool):
        return {}
    p_emb = signals.sentence_embeddings(pool, fields="instruction+input")
    item_pool, rows = _text_pool([it.text for it in items])
    i_emb = signals.sentence_embeddings(item_pool, fields="instruction")[rows]
    out: dict[str, dict[str, float]] = {}
    for start in range(0, len(pool), block):
        sims = p_emb[start:start + block] @ i_emb.T
        for r, c in zip(*np.nonzero(sims >= threshold)):
            out.setdefault(pool.examples[start + r].id, {})[items[c].id] = round(float(sims[r, c]), 4)
    return out


def pool_overlap(pool: Pool, items: list[EvalItem], cache: ArtifactCache, signals, *, n: int = NGRAM,
                 threshold: float = THRESHOLD) -> dict[str, Any]:
    """Cached: ``{"ngram": {example_id: [item ids]}, "embedding": {example_id: {item_id: cosine}}}``."""
    inputs = {"pool": pool.hash, "items": stable_hash([[i.id, i.text] for i in items]), "n": n,
              "threshold": threshold, "model": "all-MiniLM-L6-v2", "version": 1}
    return cache.get_or_compute("contamination", inputs, lambda: {
        "ngram": {k: sorted(v) for k, v in ngram_overlaps(pool, items, n).items()},
        "embedding": embedding_overlaps(pool, items, signals, threshold)}, engine=None, device="cpu").value


# ---- selections ------------------------------------------------------------------------------------------------

def overlapping_ids(overlap: dict[str, Any]) -> dict[str, list[str]]:
    """example_id -> item IDs it overlaps by either check."""
    out: dict[str, set[str]] = defaultdict(set)
    for eid, ids in overlap["ngram"].items():
        out[eid].update(ids)
    for eid, sims in overlap["embedding"].items():
        out[eid].update(sims)
    return {k: sorted(v) for k, v in out.items()}


def selection_stats(selected: list[str], pool_size: int, flagged: dict[str, list[str]],
                    alpha: float = ALPHA) -> dict[str, Any]:
    from scipy.stats import hypergeom

    hits = [i for i in selected if i in flagged]
    k, n, big_k = len(hits), len(selected), len(flagged)
    p = float(hypergeom.sf(k - 1, pool_size, big_k, n)) if n and big_k else 1.0
    return {"size": n, "overlapping": k, "share": k / n if n else 0.0, "base_rate": big_k / pool_size,
            "p_value": p, "flagged": p < alpha,
            "examples": {i: flagged[i] for i in hits},
            "items": sorted({it for i in hits for it in flagged[i]})}


def board_selections(results_dir: Path, board: str, protocol_hash: str, cache: ArtifactCache
                     ) -> tuple[list[dict[str, Any]], list[str]]:
    """(one entry per current record with a selection, notes on records whose selected IDs are unknown: the record
    keeps them since records carried ``selection.ids``; older records fall back to the selection cache)."""
    from .record import iter_records

    out, notes = [], []
    for path, rec in iter_records(results_dir, board):
        sel = rec.get("selection")
        if rec.get("protocol_hash") != protocol_hash or not sel:
            continue
        hit = {"ids": sel["ids"]} if sel.get("ids") else \
            (cache.get_json("selections", sel["key"]) if sel.get("key") else None)
        where = str(path.relative_to(results_dir))
        if hit is None:
            notes.append(f"{where}: selection {sel.get('key')} not in the cache (run the cell to check it)")
            continue
        out.append({"record": where, "method": rec["method"]["row"], "budget": rec.get("budget"),
                    "seed": rec["seed"], "ids": hit["ids"]})
    return out, notes


# ---- report ----------------------------------------------------------------------------------------------------

def build_report(pool: Pool, items: list[EvalItem], selections: list[dict[str, Any]], cache: ArtifactCache,
                 signals, *, notes: list[str] = (), threshold: float = THRESHOLD, alpha: float = ALPHA
                 ) -> dict[str, Any]:
    overlap = pool_overlap(pool, items, cache, signals, threshold=threshold)
    flagged = overlapping_ids(overlap)
    sets: dict[str, int] = defaultdict(int)
    for it in items:
        sets[it.set] += 1
    per_set = defaultdict(set)
    for eid, ids in flagged.items():
        for i in ids:
            per_set[i.rsplit("/", 1)[0]].add(eid)
    return {
        "settings": {"ngram": NGRAM, "embedding_model": "all-MiniLM-L6-v2", "embedding_threshold": threshold,
                     "embedding_fields": "instruction+input", "test": "one-sided hypergeometric", "alpha": alpha},
        "pool": {"hash": pool.hash, "size": len(pool), "overlapping": len(flagged),
                 "base_rate": len(flagged) / len(pool) if len(pool) else 0.0,
                 "ngram_overlapping": len(overlap["ngram"]), "embedding_overlapping": len(overlap["embedding"])},
        "eval_sets": {s: {"items": n, "pool_examples_overlapping": len(per_set.get(s, ()))}
                      for s, n in sorted(sets.items())},
        "pool_overlaps": {"ngram": overlap["ngram"], "embedding": overlap["embedding"]},
        "selections": [{k: v for k, v in s.items() if k != "ids"} | selection_stats(s["ids"], len(pool), flagged,
                                                                                    alpha)
                       for s in selections],
        "notes": list(notes),
    }


def board_report(ws, board: str, *, threshold: float = THRESHOLD, full_sets: bool = False
                 ) -> tuple[dict[str, Any], Path]:
    """Compute the board's report and write ``contamination.json`` next to its LEADERBOARD.md."""
    from .data import load_pool
    from .protocol import load_protocol
    from .signals import SignalCache

    protocol = load_protocol(ws.protocol_path(board))
    if ws.data_dir is None:
        raise FileNotFoundError("no data directory; set SELBENCH_DATA_DIR")
    cache = ArtifactCache(ws.cache_dir)
    pool = load_pool(protocol.pool, ws.data_dir, name=board)
    items, notes = evaluation_items(protocol, ws.data_dir, full_sets)
    selections, sel_notes = board_selections(ws.results, board, protocol.hash, cache)
    report = build_report(pool, items, selections, cache, SignalCache(cache, None), notes=notes + sel_notes,
                          threshold=threshold)
    report["settings"]["eval_items"] = "full sets" if full_sets else "the items the board evaluates"
    out = ws.board_dir(board) / REPORT
    atomic_write_json(out, report)
    return report, out


def format_report(report: dict[str, Any]) -> str:
    p, s = report["pool"], report["settings"]
    lines = [f"pool {p['hash']}: {p['overlapping']}/{p['size']} examples overlap an evaluation item "
             f"(base rate {p['base_rate']:.2%}; {p['ngram_overlapping']} by {s['ngram']}-gram, "
             f"{p['embedding_overlapping']} by MiniLM cosine >= {s['embedding_threshold']})", "",
             "evaluation set                          items  overlapping pool examples"]
    lines += [f"{name:<38} {v['items']:>6}  {v['pool_examples_overlapping']:>6}"
              for name, v in report["eval_sets"].items()]
    lines += ["", f"selections ({s['test']} test, flagged: p < {s['alpha']}):",
              "method / budget / seed                  overlap   share   base    p      flag  items"]
    for r in report["selections"]:
        items = ", ".join(r["items"][:6]) + (" ..." if len(r["items"]) > 6 else "")
        lines.append(f"{r['method'] + ' / ' + str(r['budget']) + ' / ' + str(r['seed']):<38} "
                     f"{r['overlapping']:>3}/{r['size']:<4} {r['share']:>6.1%} {r['base_rate']:>6.1%} "
                     f"{r['p_value']:>6.3f}  {'*' if r['flagged'] else ' '}     {items}")
    lines += [f"note: {n}" for n in report["notes"]]
    return "\n".join(lines)


# ---- leaderboard -----------------------------------------------------------------------------------------------

OVERLAP_COLUMN = "eval overlap"


def overlap_column(agg, board_dir: Path):
    """``agg`` with an ``eval overlap`` column (mean share of selected examples overlapping an evaluation item over
    the row's seeds, ``*`` when any seed's selection is significantly above the pool's base rate), read from the
    board's ``contamination.json``; ``agg`` unchanged when the board has no report."""
    path = Path(board_dir) / REPORT
    if not path.is_file() or agg.empty:
        return agg
    report = read_json(path)
    by_row: dict[tuple[str, Any], list[dict]] = defaultdict(list)
    for s in report["selections"]:
        by_row[(s["method"], s["budget"])].append(s)
    cells = []
    for _, r in agg.iterrows():
        sels = by_row.get((r["method"], r["budget"]), [])
        share = sum(s["share"] for s in sels) / len(sels) if sels else None
        cells.append("–" if share is None else f"{share:.1%}{' *' if any(s['flagged'] for s in sels) else ''}")
    out = agg.copy()
    out[OVERLAP_COLUMN] = cells
    return out


def overlap_legend(board_dir: Path) -> str | None:
    path = Path(board_dir) / REPORT
    if not path.is_file():
        return None
    p = read_json(path)["pool"]
    return (f"`{OVERLAP_COLUMN}`: share of the selected examples that overlap an evaluation item (13-gram or MiniLM "
            f"near duplicate; pool base rate {p['base_rate']:.1%}); `*`: significantly above the base rate "
            f"(one-sided hypergeometric test, p < 0.05). Item IDs: `{REPORT}` (`selbench contamination`).")

