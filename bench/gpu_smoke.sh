#!/usr/bin/env bash
# One GPU, a few minutes: is every stage on the GPU? Device placement, bf16 LoRA training, vLLM generation and prompt
# logprobs, the vLLM judge server with structured verdicts — through a real refresh of leaderboards/gpu-smoke in a
# scratch copy of the project (nothing is written to results/). Needs `pip install -e '.[test,vllm]'` (CUDA vLLM).
set -euo pipefail
cd "$(dirname "$0")/.."
python - <<'PY'
import torch
assert torch.cuda.is_available(), "no CUDA device visible"
print(f"GPU: {torch.cuda.get_device_name(0)}, bf16: {torch.cuda.is_bf16_supported()}")
PY
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
mkdir -p "$work/leaderboards/gpu-smoke"
cp leaderboards/gpu-smoke/protocol.yaml "$work/leaderboards/gpu-smoke/"
export SELBENCH_CACHE_DIR="$work/cache" SELBENCH_DATA_DIR="${SELBENCH_DATA_DIR:-$(cd .. && pwd)/shared/data}"
selbench check --board gpu-smoke --root "$work"
time selbench refresh --board gpu-smoke --root "$work"
python - "$work" <<'PY'
import glob, json, sys
records = sorted(glob.glob(f"{sys.argv[1]}/results/gpu-smoke/*/32/seed0.json"))
assert len(records) == 2, records
for path in records:
    r = json.load(open(path))
    t, ev, cost = r["training"], r["evaluation"], r["selection"]["cost"]
    row = r["method"]["row"]
    assert t["device"].startswith("cuda") and t["dtype"] == "bfloat16", (row, t["device"], t["dtype"])
    assert ev["mt_bench"]["info"]["engine"] == "vllm" and ev["alpaca_eval"]["info"]["engine"] == "vllm", row
    parsed = ev["mt_bench"]["counts"]["scored"], ev["mt_bench"]["counts"]["judgments"]
    print(f"{row}: trained on {t['device']} in {t['dtype']} ({t['wall_s']} s), selected on {cost['device']}, "
          f"MT-Bench verdicts parsed {parsed[0]}/{parsed[1]}, NLL {r['metrics']['ref_likelihood/nll']['value']:.3f}")
print("gpu smoke: ok")
PY
