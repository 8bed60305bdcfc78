"""Conformance: our implementations against numbers produced by the reference repositories' own code.

The fixtures in tests/fixtures/conformance/ were produced by build_fixtures.py there, which runs the upstream code
(Cherry_LLM, MoDS, p-lambda/dsir, Superfiltering, FastChat, deita, LESS) from checkouts outside this project on the
inputs of tests/conformance_common.py; its README says how. Tolerances: per-token and mean losses 1e-4, IFD 1e-5,
DSIR log-weights 1e-6, LESS features and influence scores 1e-6, win scores and rates 1e-12 (counts exact);
selections must be identical, where the fixture's margins make that meaningful (asserted, not assumed).
"""

from __future__ import annotations

import json
import re

import numpy as np
import pytest

from selbench.cache import ArtifactCache
from selbench.judge.verdicts import combine_strict, combine_sum, parse_two_scores, scores_sign
from selbench.models import BaseModelHandle, ResolvedModel
from selbench.registry import get_method
from selbench.replay import score_judgments
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


# ------------------------------------------------------------------------------------ Superfiltering (code_ifd)
def test_superfilter_matches_superfiltering_code_ifd(cherry_ctx):
    fx = fixture("superfilter.json")
    pool = C.load_rows()
    assert C.SUPERFILTER_MAX_LEN == cherry_ctx.signals.max_len
    cond = cherry_ctx.signals.response_losses(pool, conditioned=True, template="none")
    direct = cherry_ctx.signals.response_losses(pool, conditioned=False, template="none")
    with np.errstate(invalid="ignore", over="ignore"):
        ifd = np.exp(cond - direct)
    ref = {int(k): v for k, v in fx["per_example"].items()}
    assert sorted(ref) == list(range(len(pool)))
    # upstream's ifd_ppl is NaN (null here) where a loss has no token to score: a prompt of max_length tokens or
    # more, or a one-token output (no BOS, so the direct side predicts nothing); 0 if its scoring raised. We leave
    # the same examples unscored (NaN): here the two long prompts and two one-token outputs
    unscored = {i for i, r in ref.items() if not r["ifd_ppl"]}
    assert len(unscored) == 4 and set(np.flatnonzero(~np.isfinite(ifd))) == unscored
    tok = cherry_ctx.base_model.tokenizer
    n_tok = lambda text: len(tok(text, add_special_tokens=False)["input_ids"])  # noqa: E731
    cut = [i for i, e in enumerate(pool) if i not in unscored and n_tok(e.output) >
           C.SUPERFILTER_MAX_LEN - n_tok(e.instruction + "\n" + (e.input + "\n" if e.input else ""))]
    assert cut  # outputs truncated to max_length: Superfiltering's direct cut (max_length - prompt_len + 1) is tested
    for i, r in ref.items():
        if i in unscored:
            continue
        assert cond[i] == pytest.approx(r["loss_cond"], abs=1e-4), i
        assert direct[i] == pytest.approx(r["loss_direct"], abs=1e-4), i
        assert ifd[i] == pytest.approx(r["ifd_ppl"], abs=1e-5), i
    ranked = sorted((r["ifd_ppl"] for i, r in ref.items() if i not in unscored and r["ifd_ppl"] < 1), reverse=True)
    for budget, ref_sel in fx["selections"].items():
        b = int(budget)
        assert ranked[b - 1] - ranked[b] > 1e-4  # margin at the cut: an exact comparison is fair
        sel = run("superfilter", pool, b, cherry_ctx)
        assert sorted(pool.ids.index(i) for i in sel.ids) == ref_sel


# ------------------------------------------------------------------------------------ win score, both rules
def _review_files():
    return sorted(C.REVIEW_DIR.glob("*_reviews_gpt4.json"))


def test_review_fixtures_are_the_ones_generated(tmp_path):
    written = C.write_review_fixtures(tmp_path)
    for p in written:
        assert p.read_text() == (C.REVIEW_DIR / p.name).read_text(), p.name


def test_win_score_papers_rule_matches_cherry_llm_review_eval_score():
    fx = fixture("win_score_rules.json")["papers_rule"]
    files = _review_files()
    r = score_judgments(files, "cherry")["result"]
    win, tie, lose = (sum(v[k] for v in fx["per_set"].values()) for k in range(3))
    assert (r["win"], r["tie"], r["lose"], r["errors"]) == (win, tie, lose, 0)
    assert r["ws"] == pytest.approx(fx["ws"], abs=1e-12)  # cal_rate over the pooled sets
    assert win and tie and lose and r["ws"] != 1
    for f in files:  # get_scores_all per set, and on each comparison alone
        name = f.name.split("_")[0]
        one = score_judgments([f], "cherry")["result"]
        assert [one["win"], one["tie"], one["lose"]] == fx["per_set"][name]
        for d, ref in zip(json.loads(f.read_text())["data"], fx["per_row"][name]):
            s1 = scores_sign(parse_two_scores(d["review"]), True)
            s2 = scores_sign(parse_two_scores(d["review_reverse"]), False)
            assert combine_sum(s1, s2) == ("win", "tie", "lose")[ref.index(1)], d
    outcomes = {tuple(ref) for rows in fx["per_row"].values() for ref in rows}
    assert outcomes == {(1, 0, 0), (0, 1, 0), (0, 0, 1)}


def test_win_score_strict_rule_matches_fastchat_show_result():
    fx = fixture("win_score_rules.json")["strict_rule"]
    pair = score_judgments([C.REVIEW_DIR / "fastchat_pair.jsonl"], "fastchat_pair")["result"]["model vs baseline"]
    for k in ("win", "loss", "tie"):
        assert pair[k] == fx[k]
    for k in ("win_rate", "loss_rate", "win_rate_adjusted"):
        assert pair[k] == pytest.approx(fx[k], abs=1e-12)
    assert pair["errors"] == 2  # FastChat drops judge errors; so do we
    # the same comparisons as two-order reviews: the strict rule of the review replay and of verdicts.py
    r = score_judgments(_review_files(), "cherry")["result"]
    assert r["strict"] == {"win": fx["win"], "tie": fx["tie"], "lose": fx["loss"]}
    n = fx["win"] + fx["tie"] + fx["loss"]
    assert r["ws_strict"] == pytest.approx((fx["win"] - fx["loss"]) / n + 1, abs=1e-12)
    rows = [d for name in C.REVIEW_SETS  # the pair file's order
            for d in json.loads((C.REVIEW_DIR / f"{name}_reviews_gpt4.json").read_text())["data"]]
    assert len(rows) == len(fx["per_row"])
    for d, ref in zip(rows, fx["per_row"]):
        s1 = scores_sign(parse_two_scores(d["review"]), True)
        s2 = scores_sign(parse_two_scores(d["review_reverse"]), False)
        assert combine_strict(s1, s2) == ref, d
    assert r["ws_strict"] != r["ws"]  # the fixture separates the two rules


def test_deita_repr_filter_and_expected_score_match_deita():
    """hkust-nlp/deita's Combined_Filter and Scorer.infer_score, run on C.deita_inputs() (fixture deita.json)."""
    from selbench.methods.deita import repr_filter
    from selbench.rating import expected_score

    fx = fixture("deita.json")
    x = C.deita_inputs()
    combined = x["complexity"] * x["quality"]
    order = sorted(range(len(combined)), key=lambda i: -combined[i])
    E = x["embeddings"] / np.linalg.norm(x["embeddings"], axis=1, keepdims=True)
    for budget, ref in fx["selections"].items():
        picks, n_filter = repr_filter(order, E, fx["tau"], int(budget))
        assert n_filter == len(ref) and picks[:n_filter] == ref  # the same examples, in the same order
        assert len(picks) == int(budget)  # where the filter ran out (120), ours fills the budget by score
    assert np.allclose(expected_score(x["logits"]), fx["expected_scores"], rtol=0, atol=1e-6)


# ------------------------------------------------------------------------------------ LESS (princeton-nlp/LESS)
def test_less_features_and_matching_match_less():
    """LESS's collect_grads (Adam preconditioning, float16 + TRAK BasicProjector seed 0 block 128, normalisation),
    matching.py (lr-weighted checkpoints, mean within subtask, max over 9 subtasks) and write_selected_data.py's
    top-k, run on C.less_inputs() (fixture less.json)."""
    import torch

    from selbench.grads import adam_precondition, normalise, project
    from selbench.methods.less import less_scores

    fx = fixture("less.json")
    train, target = [], []
    for x in C.less_inputs():
        g = adam_precondition(torch.from_numpy(x["train"]), torch.from_numpy(x["exp_avg"]),
                              torch.from_numpy(x["exp_avg_sq"]))
        train.append(normalise(project(g, fx["dim"], seed=0)).numpy())
        target.append(normalise(project(torch.from_numpy(x["target"]), fx["dim"], seed=0)).numpy())
    n_train, n_target = C.LESS_FEATURE_ROWS
    np.testing.assert_allclose(train[0][:n_train], fx["features"]["train"], rtol=0, atol=1e-6)
    np.testing.assert_allclose(target[0][:n_target], fx["features"]["target"], rtol=0, atol=1e-6)
    subtasks = [f"subtask{j // C.LESS_PER_SUBTASK}" for j in range(C.LESS_SUBTASKS * C.LESS_PER_SUBTASK)]
    scores = less_scores(train, target, fx["checkpoint_weights"], subtasks)
    np.testing.assert_allclose(scores, fx["scores"], rtol=0, atol=1e-6)
    desc = np.sort(scores)[::-1]
    for budget, ref in fx["selections"].items():
        k = int(budget)
        assert desc[k - 1] - desc[k] > 1e-4  # a separated top-k: an exact comparison is fair
        assert sorted(range(len(scores)), key=lambda i: (-scores[i], i))[:k] == ref  # same examples, same order
    # the fixture tells the rules apart: eps outside the square root, or the plain mean over all target rows
    g = torch.from_numpy(C.less_inputs()[0]["train"][:n_train])
    m, v = (torch.from_numpy(C.less_inputs()[0][k]) for k in ("exp_avg", "exp_avg_sq"))
    eps_out = (0.9 * m + 0.1 * g) / ((0.999 * v + 0.001 * g ** 2).sqrt() + 1e-8)
    assert np.abs(normalise(project(eps_out, fx["dim"])).numpy() - fx["features"]["train"]).max() > 1e-3
    plain = sum(w * (t @ u.T) for w, t, u in zip(np.array(fx["checkpoint_weights"]) / sum(fx["checkpoint_weights"]),
                                                 train, target)).mean(axis=1)
    assert np.abs(plain - np.array(fx["scores"])).max() > 1e-3
