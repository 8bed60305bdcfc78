"""DSIR: Xie et al. 2023, "Data Selection for Language Models via Importance Resampling" (NeurIPS 2023,
arXiv 2302.03169).

Reference followed: the hashed n-gram variant of p-lambda/dsir @4802a1c (= PyPI ``data-selection`` 1.0.3,
``data_selection/hashed_ngram_dsir.py`` and ``base.py``):

* features: the text is lowercased and split exactly as NLTK's ``WordPunctTokenizer`` (``\\w+|[^\\w\\s]+``),
  compiled, as NLTK >= 3.10.3 does (``nltk.redos``), with the ``regex`` engine, which splits ``²``, ``₂`` or
  U+FE0F off a word where Python's ``re`` does not (NLTK <= 3.10.2 used ``re``); every unigram and every
  space-joined bigram is hashed with ``sha256(utf-8) % num_buckets`` into a count vector;
* raw distribution = normalised bucket counts over the pool (the reference fits on the first
  ``100000 * num_buckets`` tokens, i.e. the whole pool at any instruction-pool size); target distribution =
  normalised counts over all target texts, plus an optional Laplace pseudo-count (default 0, as upstream);
* ``log_diff = log(p_target + 1e-8) - log(p_raw + 1e-8)``; an example's log importance weight is
  ``log_diff . counts`` (not length-normalised, as upstream);
* resampling: Gumbel top-k (sampling without replacement proportional to the importance weights), or plain
  top-k with ``top_k=True``. The Gumbel noise comes from the cell's seeded generator (upstream: unseeded
  ``np.random``); ties go to the lower pool index.

Choices for instruction data (documented deviations): ``min_example_length`` defaults to 0, because the upstream
default of 100 words would drop nearly every instruction example (a short example is kept, not filtered); the
pool text is ``fields`` (default the prompt, ``instruction+input``, so it is compared like for like with the
target, which is made of prompts). The default target is the prompts of the open-ended evaluation sets in the
shared data directory (Vicuna-80, Koala, WizardLM test set, Self-Instruct 252 user-oriented, LIMA test set);
``target_files`` (paths relative to the data directory, or absolute) replaces it. With ``fields`` free of the
output, rows with an empty response are part of the raw distribution and are ranked (as upstream, which knows no
outputs); the harness keeps them out of the selection (selbench.data).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import regex

from selbench.paths import data_dir
from selbench.registry import register_method
from selbench.select import Selection
from selbench.signals import example_texts

DEFAULT_TARGETS = ("open_ended/vicuna80/question.jsonl", "open_ended/koala/koala_test_set.jsonl",
                   "open_ended/wizardlm/WizardLM_testset.jsonl",
                   "open_ended/self_instruct_252/user_oriented_instructions.jsonl",
                   "open_ended/lima/lima_test_set.jsonl")
_WORDPUNCT = regex.compile(r"\w+|[^\w\s]+", regex.UNICODE | regex.MULTILINE | regex.DOTALL)  # NLTK's flags
_PROMPT_KEYS = ("text", "prompt", "instruction", "Instruction", "question", "conversations", "turns")


def hash_bucket(s: str, num_buckets: int) -> int:
    return int(hashlib.sha256(s.encode("utf-8")).hexdigest(), 16) % num_buckets


def ngram_counts(text: str, num_buckets: int, out: np.ndarray | None = None) -> np.ndarray:
    """Hashed unigram + bigram counts of the lowercased text, as upstream ``get_ngram_counts(n=2)``."""
    words = _WORDPUNCT.findall(text.lower())
    counts = np.zeros(num_buckets, dtype=np.int64) if out is None else out
    for w in words:
        counts[hash_bucket(w, num_buckets)] += 1
    for a, b in zip(words, words[1:]):
        counts[hash_bucket(f"{a} {b}", num_buckets)] += 1
    return counts


def dsir_log_weights(raw_texts: list[str], target_texts: list[str], num_buckets: int = 10000,
                     laplace: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
    """Per raw text: (log importance weight, word count). The raw distribution is fitted on ``raw_texts``."""
    feats = np.stack([ngram_counts(t, num_buckets) for t in raw_texts]) if raw_texts else \
        np.zeros((0, num_buckets), np.int64)
    raw = feats.sum(0).astype(np.float64)
    raw = raw / raw.sum() if raw.sum() > 0 else raw
    tgt = np.zeros(num_buckets, dtype=np.int64)
    for t in target_texts:
        ngram_counts(t, num_buckets, out=tgt)
    tgt = tgt.astype(np.float64) + laplace
    if tgt.sum() <= 0:
        raise ValueError("DSIR: the target texts contain no tokens")
    tgt = tgt / tgt.sum()
    log_diff = np.log(tgt + 1e-8) - np.log(raw + 1e-8)
    # upstream's example length: (unigram+bigram count + 1) // 2 = number of words
    length = (feats.sum(1) + 1) // 2
    return feats @ log_diff, length


def read_target_texts(files) -> list[str]:
    """Prompts from JSON/JSONL evaluation sets: the first known prompt key of each row (a list: its first item;
    Self-Instruct rows add their first instance's input)."""
    root = data_dir()
    texts = []
    for f in files:
        p = Path(f).expanduser()
        if not p.is_absolute():
            if root is None:
                raise FileNotFoundError(f"DSIR target {f}: no data directory (set SELBENCH_DATA_DIR)")
            p = root / p
        raw = p.read_text(encoding="utf-8")
        rows = json.loads(raw) if p.suffix == ".json" else [json.loads(l) for l in raw.splitlines() if l.strip()]
        for r in rows:
            if isinstance(r, str):
                texts.append(r)
                continue
            key = next((k for k in _PROMPT_KEYS if r.get(k)), None)
            if key is None:
                raise ValueError(f"DSIR target {p}: a row has none of the prompt keys {_PROMPT_KEYS}")
            val = r[key]
            val = val[0] if isinstance(val, list) else val
            val = val.get("value", val.get("content", "")) if isinstance(val, dict) else str(val)
            inst = r.get("instances") or []
            if inst and isinstance(inst[0], dict) and inst[0].get("input"):
                val = f"{val}\n{inst[0]['input']}"
            texts.append(val)
    return texts


@register_method("dsir", needs_output=lambda p: "output" in p["fields"],
                 family="indicator-based", aspect="importance",
                 description="Importance resampling towards the evaluation prompts with hashed uni+bigram "
                             "features (seeded Gumbel top-k).",
                 citation="Xie et al. 2023, Data Selection for Language Models via Importance Resampling "
                          "(NeurIPS 2023, arXiv 2302.03169)",
                 reference="p-lambda/dsir @4802a1c (PyPI data-selection 1.0.3), HashedNgramDSIR")
def select_dsir(pool, budget, ctx, num_buckets=10000, target_files=None, fields="instruction+input",
                min_example_length=0, laplace=0.0, top_k=False):
    files = list(target_files or DEFAULT_TARGETS)
    target = read_target_texts(files)
    logw, length = dsir_log_weights(example_texts(pool, fields), target, num_buckets, laplace)
    eligible = length >= min_example_length
    if eligible.sum() < budget:
        raise ValueError(f"DSIR: only {int(eligible.sum())} examples have >= {min_example_length} words, "
                         f"budget is {budget}; lower min_example_length")
    key = logw.copy() if top_k else logw + ctx.rng.gumbel(size=len(logw))
    key[~eligible] = -np.inf
    order = np.lexsort((np.arange(len(key)), -key))[:budget]  # descending key, ties -> lower index
    scores = {e.id: float(w) for e, w in zip(pool.examples, logw)}
    return Selection([pool.examples[i].id for i in order], scores=scores,
                     notes=[f"target: {len(target)} prompts from {len(files)} files; "
                            f"{'top-k' if top_k else 'Gumbel top-k (seeded)'}"],
                     extras={"target_files": files, "target_prompts": len(target)})
