"""Embedding- and statistics-based selection methods: k-center, DiverseEvol, DQ, DSIR, Vendi, MTLD.

Synthetic embeddings (a stub signal source) test each algorithm's characteristic behaviour; DiverseEvol runs for
real on the tiny random llama with the shared SignalCache and the harness's fine-tuning loop.
"""

from __future__ import annotations

import json
import re
from types import SimpleNamespace

import numpy as np
import pytest

from selbench.cache import ArtifactCache
from selbench.data import Pool, normalise_row
from selbench.models import BaseModelHandle, ResolvedModel
from selbench.registry import get_method
from selbench.select import SelectionContext, check_contract, run_selection
import selbench.methods.diverseevol  # noqa: F401  (registers the method)
from selbench.methods.diversity import mtld, vendi_greedy, vendi_score
from selbench.methods.dq import dq_bins
from selbench.methods.dsir import DEFAULT_TARGETS, dsir_log_weights, ngram_counts, read_target_texts
from selbench.methods.kcenter import coverage_radius, kcenter_greedy
from tests.conftest import alpaca_rows


def make_pool(rows) -> Pool:
    return Pool([normalise_row(r, "alpaca", f"test:{i}") for i, r in enumerate(rows)])


class StubSignals:
    """Returns fixed sentence embeddings (pool order) instead of running a sentence encoder."""

    def __init__(self, emb):
        self.emb = np.asarray(emb, dtype=np.float32)

    def sentence_embeddings(self, pool, **kw):
        assert len(pool) == len(self.emb)
        return self.emb


def clustered(n_clusters=6, per=30, d=16, seed=0, spread=0.05):
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(n_clusters, d)) * 3
    X = np.concatenate([c + spread * rng.normal(size=(per, d)) for c in centres])
    return X, np.repeat(np.arange(n_clusters), per)


def ctx_with(emb, tmp_path, seed=0):
    return SelectionContext(seed=seed, cache=ArtifactCache(tmp_path / "cache"), signals=StubSignals(emb))


def run(name, pool, budget, ctx, **params):
    sel, _ = run_selection(get_method(name), pool, budget, ctx, params)
    return sel


# --------------------------------------------------------------------------------------------- k-center
def test_kcenter_algorithm_matches_definition_and_is_nan_free():
    X = np.array([[0.0, 0.0], [1.0, 0.0], [5.0, 0.0], [5.0, 0.0], [2.0, 0.0]])
    picks, dist, min_dist = kcenter_greedy(X, 4, first=0)
    # farthest from 0 is 5 (index 2 wins the tie with 3: lowest index); then 4 (2 from 0, 3 from 5) vs 1 ...
    assert picks[:2] == [0, 2] and picks[2] == 4 and picks[3] == 1
    assert np.isinf(dist[0]) and dist[1] == 5.0
    assert min_dist.max() == 0.0 and np.isfinite(min_dist).all()
    # exact duplicates: once all min distances are 0, never re-pick a selected point
    picks, _, _ = kcenter_greedy(np.zeros((5, 3)), 5, first=3)
    assert sorted(picks) == [0, 1, 2, 3, 4]
    # large-norm near-duplicates where the Gram trick produces NaN/negative values
    Y = np.full((4, 8), 1e4) + np.arange(4)[:, None] * 1e-6
    picks, dist, min_dist = kcenter_greedy(Y, 4, first=0)
    assert np.isfinite(min_dist).all() and len(set(picks)) == 4


def test_kcenter_method_covers_better_than_random(tmp_path):
    X, labels = clustered()
    pool = make_pool(alpaca_rows(len(X)))
    a = run("kcenter", pool, 12, ctx_with(X, tmp_path))
    b = run("kcenter", pool, 12, ctx_with(X, tmp_path))
    assert a.ids == b.ids and len(a.ids) == 12 == len(set(a.ids))
    idx = [pool.ids.index(i) for i in a.ids]
    assert set(labels[idx]) == set(range(6))  # every cluster gets a centre
    r_kc = coverage_radius(X, idx)
    assert r_kc == pytest.approx(a.extras["coverage_radius"])
    rng = np.random.default_rng(1)
    r_rand = [coverage_radius(X, rng.choice(len(X), 12, replace=False)) for _ in range(20)]
    # k-center is a 2-approximation of the optimal radius (<= any subset's radius); random misses clusters
    assert r_kc <= 2 * min(r_rand) and r_kc < np.median(r_rand)
    # another seed: another first centre
    c = run("kcenter", pool, 12, ctx_with(X, tmp_path, seed=5))
    assert c.extras["first_centre"] != a.extras["first_centre"] or c.ids == a.ids


# --------------------------------------------------------------------------------------------- DQ
def test_dq_bins_partition_and_samples_every_bin(tmp_path):
    X, _ = clustered(n_clusters=5, per=21, d=8)
    Xn = X / np.linalg.norm(X, axis=1, keepdims=True)
    bins, leftover = dq_bins(Xn, 10)
    allb = np.concatenate(bins)
    assert [len(b) for b in bins] == [10] * 10 and len(leftover) == 5 and len(set(allb)) == 100
    assert set(allb) | set(leftover) == set(range(105))
    # first GraphCut pick = the largest column sum of the similarity matrix
    S = Xn @ Xn.T
    assert bins[0][0] == int(np.argmax(S.sum(0)))
    pool = make_pool(alpaca_rows(len(X)))
    for budget in (20, 23, 104):
        a = run("dq", pool, budget, ctx_with(Xn, tmp_path))
        b = run("dq", pool, budget, ctx_with(Xn, tmp_path))
        assert a.ids == b.ids and len(set(a.ids)) == budget
        per = a.extras["per_bin"]
        assert min(per) >= 1 and len(per) == 10 and max(per) - min(per) <= 1
        assert set(a.extras["bin_of_selected"]) >= set(range(10))
    small = run("dq", pool, 4, ctx_with(Xn, tmp_path))
    assert small.extras["bins"] == 4 and sorted(small.extras["bin_of_selected"]) == [0, 1, 2, 3]


# --------------------------------------------------------------------------------------------- DSIR
def test_dsir_features_match_upstream_definition():
    c = ngram_counts("Hello, world hello", 50)
    # unigrams: hello , world hello (4) + bigrams (3)
    assert c.sum() == 7
    w, length = dsir_log_weights(["a b c", "x y"], ["a b"], num_buckets=1000)
    assert w[0] > w[1] and list(length) == [3, 2]
    # the tokenizer regex is NLTK's WordPunctTokenizer (nltk is a test dependency for this cross-check)
    from nltk.tokenize import WordPunctTokenizer

    s = "Don't stop: it's 3.5 km -- fine!!"
    assert re.findall(r"\w+|[^\w\s]+", s.lower()) == WordPunctTokenizer().tokenize(s.lower())


def test_dsir_default_targets_load(data_dir):
    texts = read_target_texts(DEFAULT_TARGETS)
    assert len(texts) > 900 and all(isinstance(t, str) and t for t in texts)


def test_dsir_prefers_in_target_text(tmp_path):
    target = tmp_path / "target.jsonl"
    topics = ["python code", "sorting algorithm", "recursion in python", "debug this function"]
    target.write_text("\n".join(json.dumps({"prompt": f"Write {t} and explain the python function"})
                                for t in topics * 5))
    rows = []
    for i in range(40):
        if i % 2 == 0:
            rows.append({"instruction": f"Write a python function for {topics[i % 4]} number {i}", "input": "",
                         "output": "def f(): pass"})
        else:
            rows.append({"instruction": f"Describe the weather in town {i} during autumn", "input": "",
                         "output": "It rains."})
    pool = make_pool(rows)
    ctx = SelectionContext(seed=0, cache=ArtifactCache(tmp_path / "c"))
    a = run("dsir", pool, 10, ctx, target_files=[str(target)])
    b = run("dsir", pool, 10, ctx, target_files=[str(target)])
    assert a.ids == b.ids and len(a.ids) == 10
    in_target = {pool.examples[i].id for i in range(0, 40, 2)}
    assert sum(i in in_target for i in a.ids) >= 9
    assert all(np.isfinite(v) for v in a.scores.values())
    assert min(a.scores[i] for i in in_target) > max(v for k, v in a.scores.items() if k not in in_target)
    top = run("dsir", pool, 10, ctx, target_files=[str(target)], top_k=True)
    assert set(top.ids) <= in_target


# --------------------------------------------------------------------------------------------- Vendi
def test_vendi_incremental_greedy_is_exact():
    rng = np.random.default_rng(0)
    X = rng.normal(size=(30, 6))
    picks, traj = vendi_greedy(X, 8, first=0, eps=0)
    assert traj == pytest.approx([vendi_score(X[picks[:i + 1]]) for i in range(8)], rel=1e-8)
    S = [0]
    for _ in range(7):  # brute-force greedy
        S.append(max((j for j in range(30) if j not in S), key=lambda j: (vendi_score(X[S + [j]]), -j)))
    assert S == picks
    assert vendi_score(np.eye(4)) == pytest.approx(4.0) and vendi_score(np.ones((5, 3))) == pytest.approx(1.0)


def test_vendi_method_beats_random(tmp_path):
    X, _ = clustered(n_clusters=8, per=20, d=32, spread=0.3)
    pool = make_pool(alpaca_rows(len(X)))
    a = run("diversity", pool, 16, ctx_with(X, tmp_path), variant="vendi")
    b = run("diversity", pool, 16, ctx_with(X, tmp_path), variant="vendi")
    assert a.ids == b.ids and len(set(a.ids)) == 16
    idx = [pool.ids.index(i) for i in a.ids]
    v = vendi_score(X[idx])
    assert v == pytest.approx(a.extras["vendi"])
    rng = np.random.default_rng(3)
    assert v > max(vendi_score(X[rng.choice(len(X), 16, replace=False)]) for _ in range(20))


# --------------------------------------------------------------------------------------------- MTLD
def test_mtld_values_and_ranking(tmp_path):
    assert mtld("") == 0.0
    assert mtld("the cat " * 20) < 5
    varied = ("Rivers carve valleys slowly, carrying sediment downstream where deltas form; meanwhile "
              "tributaries join, floods reshape banks, and wetlands filter water for countless species.")
    repetitive = "the river is a river and the river is the river and a river is the river " * 2
    assert mtld(varied) > mtld(repetitive)
    # hand-computed: 'a a b b' forward: a(1.0) a(0.5 -> factor) b(1.0) b(0.5 -> factor) => 4 words / 2 factors
    assert mtld("a a b b") == pytest.approx(2.0)
    rows = [{"instruction": f"q{i}", "input": "", "output": o}
            for i, o in enumerate([repetitive, varied, "ok ok ok ok", varied + " Extra words here."])]
    pool = make_pool(rows)
    ctx = SelectionContext(seed=0, cache=ArtifactCache(tmp_path))
    sel = run("diversity", pool, 2, ctx, variant="mtld")
    assert set(sel.ids) == {pool.examples[1].id, pool.examples[3].id}
    assert sel.scores[pool.examples[0].id] < sel.scores[pool.examples[1].id]


# --------------------------------------------------------------------------------------------- DiverseEvol
def test_diverseevol_two_rounds_on_tiny_model(tmp_path, tiny_model_dir):
    from selbench.protocol import RecipeSpec
    from selbench.signals import SignalCache

    pool = make_pool(alpaca_rows(16))
    cache = ArtifactCache(tmp_path / "cache")
    recipe = RecipeSpec(epochs=1, batch_size=4, max_seq_len=64, lr=1e-3, chat_template="model")

    def make_ctx():
        base = BaseModelHandle(ResolvedModel(str(tiny_model_dir), "tiny", "tiny"))
        return SelectionContext(seed=0, cache=cache, base_model=base,
                                signals=SignalCache(cache, base, batch_size=8, max_len=64, progress=False),
                                protocol=SimpleNamespace(recipe=recipe))

    ctx = make_ctx()
    sel = check_contract("diverseevol", run("diverseevol", pool, 6, ctx, rounds=2), pool, 6)
    assert len(sel.ids) == 6 and [r["added"] for r in sel.extras["rounds"]] == [3, 3]
    assert len(list((tmp_path / "cache" / "diverseevol").iterdir())) == 1  # one round model trained
    assert any("hidden_states" in name for name in ctx.signals.computed)
    # the k-center picks are the farthest points in the fine-tuned model's space: rerun reuses the adapter
    ctx2 = make_ctx()
    again = run("diverseevol", pool, 6, ctx2, rounds=2)
    assert again.ids == sel.ids
    assert not ctx2.signals.computed and ctx2.signals.reused
