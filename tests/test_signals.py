"""SignalCache: batched losses equal per-example transformers losses, signals are computed once and reused."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from conftest import alpaca_rows
from selbench.cache import ArtifactCache
from selbench.data import Pool, normalise_row
from selbench.formatting import prompt_and_response_ids
from selbench.models import BaseModelHandle, ResolvedModel
from selbench.select import SelectionContext
from selbench.signals import SignalCache

MAX_LEN = 96


def make_pool(n=14) -> Pool:
    rows = alpaca_rows(n)
    rows[2]["output"] = "a long answer " * 40  # truncated at MAX_LEN
    rows[5]["instruction"] = "very long prompt " * 60  # prompt alone exceeds MAX_LEN: no scored token
    return Pool([normalise_row(r, "alpaca", f"row {i}") for i, r in enumerate(rows)])


@pytest.fixture(scope="module")
def handle(tiny_model_dir):
    return BaseModelHandle(ResolvedModel(str(tiny_model_dir), "tiny", "tiny"), chat_template="model")


def ref_loss(model, context, target, max_len=MAX_LEN):
    """Plain transformers loss of one example, one forward, labels masking the context."""
    ids = (list(context) + list(target))[:max_len]
    labels = ([-100] * len(context) + list(target))[:max_len]
    if all(x == -100 for x in labels[1:]):
        return float("nan")
    with torch.no_grad():
        return model(input_ids=torch.tensor([ids]), labels=torch.tensor([labels])).loss.item()


def test_losses_match_transformers_and_ifd(tmp_path, handle):
    pool = make_pool()
    sig = SignalCache(ArtifactCache(tmp_path), handle, batch_size=4, max_len=MAX_LEN, progress=False)
    cond = sig.response_losses(pool, conditioned=True)
    direct = sig.response_losses(pool, conditioned=False)
    tok, model = handle.tokenizer, handle.model
    header = tok("<|im_start|>assistant\n", add_special_tokens=False)["input_ids"]
    ref_c, ref_d = [], []
    for e in pool:
        p, r = prompt_and_response_ids(tok, e.prompt, e.output)
        n_scored = max(0, min(len(r), MAX_LEN - len(p)))
        ref_c.append(ref_loss(model, p, r))
        ref_d.append(ref_loss(model, header, r[:n_scored]) if n_scored else float("nan"))
    ref_c, ref_d = np.array(ref_c), np.array(ref_d)
    assert np.isnan(cond[5]) and np.isnan(direct[5])
    np.testing.assert_allclose(cond, ref_c, atol=1e-4, equal_nan=True)
    np.testing.assert_allclose(direct, ref_d, atol=1e-4, equal_nan=True)
    np.testing.assert_allclose(sig.perplexity(pool), np.exp(ref_c), rtol=1e-4, equal_nan=True)

    # The ifd method's scores are exactly cond/direct of those reference losses.
    from selbench.methods.ifd import select_ifd

    ctx = SelectionContext(seed=0, cache=ArtifactCache(tmp_path), base_model=handle, signals=sig)
    sel = select_ifd(pool, 5, ctx)
    for i, e in enumerate(pool):
        if np.isfinite(ref_c[i]):
            assert sel.scores[e.id] == pytest.approx(ref_c[i] / ref_d[i], abs=1e-4)
        else:
            assert e.id not in sel.scores


def test_none_template_matches_transformers(tmp_path, handle):
    pool = make_pool(8)
    sig = SignalCache(ArtifactCache(tmp_path), handle, batch_size=3, max_len=MAX_LEN, progress=False)
    cond = sig.response_losses(pool, template="none")
    direct = sig.response_losses(pool, conditioned=False, template="none")
    tok, model = handle.tokenizer, handle.model
    for i, e in enumerate(pool):
        ptxt = e.instruction + "\n" + (e.input + "\n" if e.input else "")
        p = tok(ptxt)["input_ids"]
        r = tok(ptxt + e.output)["input_ids"][len(p):]
        assert cond[i] == pytest.approx(ref_loss(model, p, r), abs=1e-4, nan_ok=True)
        out = tok(e.output, add_special_tokens=False)["input_ids"]
        out = out[:max(0, min(len(out), MAX_LEN - len(p) + 1))]  # Superfiltering: max_length - prompt_len + 1
        # no BOS from this tokenizer: the first output token is unscored, as in Superfiltering
        assert direct[i] == pytest.approx(ref_loss(model, [], out) if len(out) > 1 else float("nan"), abs=1e-4,
                                          nan_ok=True)


def test_second_method_and_second_instance_compute_nothing(tmp_path, handle, monkeypatch):
    pool = make_pool(10)
    cache = ArtifactCache(tmp_path)
    sig = SignalCache(cache, handle, batch_size=4, max_len=MAX_LEN, progress=False)
    ctx = SelectionContext(seed=0, cache=cache, base_model=handle, signals=sig)
    from selbench.methods.ifd import select_ifd
    from selbench.methods.perplexity import select_perplexity

    select_ifd(pool, 4, ctx)
    assert len(sig.report()["computed"]) == 2 and sig.report()["reused"] == []
    assert len(list((tmp_path / "signals").glob("*.npz"))) == 2

    calls = []
    orig = SignalCache._compute_pair_losses
    monkeypatch.setattr(SignalCache, "_compute_pair_losses",
                        lambda self, *a, **k: calls.append(1) or orig(self, *a, **k))
    select_perplexity(pool, 4, ctx)  # needs the conditioned losses ifd already computed
    assert calls == [] and len(sig.report()["computed"]) == 2 and len(sig.report()["reused"]) == 1

    sig2 = SignalCache(cache, handle, batch_size=2, max_len=MAX_LEN, progress=False)  # another instance, same dir
    ctx2 = SelectionContext(seed=0, cache=cache, base_model=handle, signals=sig2)
    a = select_ifd(pool, 4, ctx2)
    assert calls == [] and sig2.report()["computed"] == [] and len(sig2.report()["reused"]) == 2
    assert a.ids == select_ifd(pool, 4, ctx).ids

    # A different max_len is a different signal.
    sig3 = SignalCache(cache, handle, max_len=MAX_LEN + 8, progress=False)
    sig3.response_losses(pool)
    assert calls == [1] and len(sig3.report()["computed"]) == 1


def test_pair_losses_left_truncation_and_hidden_states(tmp_path, handle):
    sig = SignalCache(ArtifactCache(tmp_path), handle, batch_size=4, max_len=32, progress=False)
    tok, model = handle.tokenizer, handle.model
    ctx_ids = list(range(100, 140))
    tgt = list(range(200, 210))
    (lo,) = sig.pair_token_losses([(ctx_ids, tgt)], truncation="left")
    assert len(lo) == 10  # whole target scored after dropping 18 context tokens on the left
    assert float(lo.mean()) == pytest.approx(ref_loss(model, ctx_ids[18:], tgt, 32), abs=1e-4)
    (ro,) = sig.pair_token_losses([(ctx_ids, tgt)], truncation="right")
    assert len(ro) == 0

    pool = make_pool(6)
    emb = sig.hidden_state_embeddings(pool, pooling="mean")
    last = sig.hidden_state_embeddings(pool, pooling="last")
    from selbench.formatting import encode, render

    for i, e in enumerate(pool):
        ids = encode(tok, render(tok, list(e.messages)))[:32]
        with torch.no_grad():
            hs = model(input_ids=torch.tensor([ids]), output_hidden_states=True).hidden_states[-1][0]
        np.testing.assert_allclose(emb[i], hs.mean(0).numpy(), atol=1e-4)
        np.testing.assert_allclose(last[i], hs[-1].numpy(), atol=1e-4)


def test_sentence_embeddings_offline_and_cached(tmp_path, handle):
    pool = make_pool(6)
    cache = ArtifactCache(tmp_path)
    sig = SignalCache(cache, handle, progress=False)
    emb = sig.sentence_embeddings(pool)
    assert emb.shape == (6, 384) and emb.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-5)
    sig2 = SignalCache(cache, handle, progress=False)
    np.testing.assert_array_equal(sig2.sentence_embeddings(pool), emb)
    assert sig2.report() == {"computed": [], "reused": sig.report()["computed"]}


def test_shared_prefix_batches_score_the_same_losses(tmp_path, handle):
    """Nuggets' one-shot sequences: every anchor after the same demonstration. Batches that share a prefix run it
    once and forward only the suffixes; each loss equals the plain one-sequence loss."""
    from selbench.methods.nuggets import _turns
    from selbench.signals import conversation_pair, prefix_groups, suffix_batches

    pool = make_pool(8)
    ex = [e for i, e in enumerate(pool.examples) if i not in (2, 5)]
    tok, model = handle.tokenizer, handle.model
    demos, anchors = ex[:3], ex[3:6]
    pairs = [conversation_pair(tok, _turns(d) + _turns(a)) for d in demos for a in anchors]
    sig = SignalCache(ArtifactCache(tmp_path), handle, batch_size=4, max_len=512, progress=False)
    seqs = [list(c) + list(t) for c, t in pairs]
    spans = [(len(c), len(c) + len(t)) for c, t in pairs]
    groups, rest = prefix_groups(seqs, spans, range(len(seqs)))
    assert sorted(len(g) for _, g in groups) == [3, 3, 3] and rest == []  # one group per demonstration
    for n_shared, group in groups:
        assert n_shared >= 32 and all(seqs[i][:n_shared] == seqs[group[0]][:n_shared] for i in group)
        assert n_shared < min(spans[i][0] for i in group)
    widths = {0: 100, 1: 95, 2: 90, 3: 30, 4: 28, 5: 10}
    assert suffix_batches(range(6), widths.get, 4) == [[0, 1, 2], [3, 4], [5]]  # padding stays under 20%
    assert suffix_batches(range(6), widths.get, 2) == [[0, 1], [2], [3, 4], [5]]
    losses = sig.pair_token_losses(pairs, truncation="left", name="one-shot")
    for (c, t), got in zip(pairs, losses):
        assert len(got) == len(t)
        assert float(got.mean()) == pytest.approx(ref_loss(model, c, t, 512), abs=1e-4)
    # unrelated prompts share only the template's header: plain length-sorted batches
    plain = [prompt_and_response_ids(tok, e.prompt, e.output) for e in ex]
    seqs = [list(c) + list(t) for c, t in plain]
    assert prefix_groups(seqs, [(len(c), len(c) + len(t)) for c, t in plain], range(len(plain)))[0] == []
