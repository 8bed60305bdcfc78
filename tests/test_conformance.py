"""Conformance: our implementations against numbers produced by the reference repositories' own code.

The fixtures in tests/fixtures/conformance/ were produced by build_fixtures.py there, which runs the upstream code
(Cherry_LLM, MoDS, p-lambda/dsir) from checkouts outside this project on the inputs of tests/conformance_common.py;
its README says how. Tolerances: per-token and mean losses 1e-4, IFD 1e-5, DSIR log-weights 1e-6; selections must
be identical, where the fixture's margins make that meaningful (asserted, not assumed).
"""

from __future__ import annotations

import json
import re

import numpy as np
import pytest

from selbench.cache import ArtifactCache
from selbench.models import BaseModelHandle, ResolvedModel
from selbench.registry import get_method
from selbench.select import SelectionContext, run_selection
from selbench.signals import SignalCache, cherry_pair
import selbench.methods.dsir as dsir_mod
from selbench.methods.ifd import cherry_ifd
from selbench.methods.kcenter import kcenter_greedy
from tests import conformance_common as C


def fixture(name: str) -> dict:
    return json.loads((C.FIXTURES / name).read_text(encoding="utf-8"))


def run(name, pool, budget, ctx, **params):
    return run_selection(get_method(name), pool, budget, ctx, params)[0]


# ------------------------------------------------------------------------------------ k-center (MoDS)
def test_kcenter_matches_mods_kcenter_greedy():
    fx = fixture("kcenter_mods.json")
    for name, X in C.kcenter_embeddings().items():
        ref = fx[name]
        picks, _, min_dist = kcenter_greedy(X, C.KC_PICKS[name], first=ref["first"])
        first_diff = next((i for i, (a, b) in enumerate(zip(picks, ref["picks"])) if a != b), None)
        assert first_diff is None and len(picks) == len(ref["picks"]), f"{name}: diverges at pick {first_diff}"
        assert min_dist.max() == pytest.approx(ref["radius"], rel=1e-6)  # MoDS' distances are float32


# ------------------------------------------------------------------------------------ DSIR (p-lambda/dsir)
def test_dsir_matches_hashed_ngram_dsir(tmp_path):
    fx = fixture("dsir_hashed_ngram.json")
    raw, target = C.dsir_texts()
    ref = np.array(fx["log_weights"])
    logw, _ = dsir_mod.dsir_log_weights(raw, target, num_buckets=10000)
    assert len(logw) == len(ref)
    np.testing.assert_allclose(logw, ref, rtol=0, atol=1e-6)
    pool = C.dsir_pool()
    targets = tmp_path / "target.jsonl"
    targets.write_text("".join(json.dumps({"text": t}) + "\n" for t in target), encoding="utf-8")
    ctx = SelectionContext(seed=0, cache=ArtifactCache(tmp_path / "cache"))
    desc = np.sort(ref)[::-1]
    for budget, ref_sel in fx["selections"].items():
        b = int(budget)
        assert desc[b - 1] - desc[b] > 1e-4  # the top-k set is well separated: an exact comparison is fair
        sel = run("dsir", pool, b, ctx, target_files=[str(targets)], top_k=True)
        assert sorted(pool.ids.index(i) for i in sel.ids) == ref_sel
    # the rows with superscripts, subscripts and U+FE0F are where Python's re would have disagreed
    extra = slice(len(raw) - len(C.DSIR_EXTRA), None)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(dsir_mod, "_WORDPUNCT", re.compile(r"\w+|[^\w\s]+"))
        logw_re, _ = dsir_mod.dsir_log_weights(raw, target, num_buckets=10000)
    assert np.abs(logw_re[extra] - ref[extra]).max() > 1e-3


# ------------------------------------------------------------------------------------ IFD (Cherry_LLM)
@pytest.fixture(scope="module")
def cherry_ctx(tmp_path_factory):
    path = C.smollm2_dir()
    handle = BaseModelHandle(ResolvedModel(str(path), "smollm2-135m-conformance", "SmolLM2-135M"), dtype="float32")
    cache = ArtifactCache(tmp_path_factory.mktemp("conformance-cache"))
    signals = SignalCache(cache, handle, batch_size=8, max_len=C.CHERRY_MAX_LEN, progress=False)
    return SelectionContext(seed=0, cache=cache, base_model=handle, signals=signals)


def test_ifd_cherry_variant_matches_cherry_llm(cherry_ctx):
    fx = fixture("ifd_cherry.json")
    pool = C.load_rows()
    assert len(pool) == len(C.CHERRY_ROWS)
    tok = cherry_ctx.base_model.tokenizer
    cond = cherry_ctx.signals.token_losses(pool, conditioned=True, template="cherry")
    direct = cherry_ctx.signals.token_losses(pool, conditioned=False, template="cherry")
    ifd = cherry_ifd(pool, cherry_ctx)
    scored = {int(k): v for k, v in fx["per_example"].items()}
    assert set(np.flatnonzero(np.isfinite(ifd))) == set(scored)  # the same examples skipped
    assert any(not np.isfinite(ifd[i]) for i in range(len(pool)))  # the skip rules were exercised
    for i, ref in scored.items():
        e = pool.examples[i]
        assert cherry_pair(tok, e, True, C.CHERRY_MAX_LEN)[1] == ref["cond_token_ids"], i
        assert cherry_pair(tok, e, False, C.CHERRY_MAX_LEN)[1] == ref["direct_token_ids"], i
        np.testing.assert_allclose(cond[i], ref["cond_losses"], rtol=0, atol=1e-4)
        np.testing.assert_allclose(direct[i], ref["direct_losses"], rtol=0, atol=1e-4)
        assert np.mean(cond[i], dtype=np.float64) == pytest.approx(ref["cond_mean"], abs=1e-4)
        assert np.mean(direct[i], dtype=np.float64) == pytest.approx(ref["direct_mean"], abs=1e-4)
        assert ifd[i] == pytest.approx(ref["ifd"], abs=1e-5)
    kept = sorted(i for i, r in scored.items() if r["ifd"] <= 1)
    assert kept == fx["kept"]
    ranked = sorted((scored[i]["ifd"] for i in kept), reverse=True)
    for budget, ref_sel in fx["selections"].items():
        b = int(budget)
        assert ranked[b - 1] - ranked[b] > 1e-4  # margin at the cut: an exact comparison is fair
        sel = run("ifd", pool, b, cherry_ctx, variant="cherry")
        assert sorted(pool.ids.index(i) for i in sel.ids) == ref_sel
        assert sel.extras["variant"] == "cherry"
