"""One device for every stage: resolution, the protocol field outside the hash, and what the board hands out."""

from __future__ import annotations

import pytest

from selbench.device import resolve_device, resolve_dtype
from selbench.protocol import Protocol


def test_resolution_and_overrides(monkeypatch):
    import torch

    monkeypatch.delenv("SELBENCH_DEVICE", raising=False)
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert resolve_device("auto") == resolve_device(None) == expected
    assert resolve_device("cpu") == "cpu"
    with pytest.raises(ValueError, match="device must be one of"):
        resolve_device("tpu")
    monkeypatch.setenv("SELBENCH_DEVICE", "cpu")
    assert resolve_device("auto") == "cpu"  # the environment wins over the protocol
    if not torch.cuda.is_available():
        monkeypatch.setenv("SELBENCH_DEVICE", "cuda")
        with pytest.raises(ValueError, match="not available on this machine"):
            resolve_device("auto")


def test_dtype_auto_is_float32_off_cuda():
    assert resolve_dtype("auto", "cpu") == "float32" and resolve_dtype("bfloat16", "cpu") == "bfloat16"


def test_device_is_outside_the_protocol_hash():
    base = {"name": "b", "base_model": {"path": "m"}, "pool": {"path": "p.json"}, "budgets": [4],
            "methods": [{"name": "random"}]}
    hashes = {Protocol.model_validate({**base, "device": d}).hash for d in ("auto", "cpu", "cuda")}
    assert len(hashes) == 1 and Protocol.model_validate(base).hash in hashes


def test_board_puts_every_stage_on_its_device(tmp_path, tiny_model_dir, monkeypatch):
    from selbench import pipeline
    from test_end_to_end import make_workspace

    monkeypatch.setenv("SELBENCH_CACHE_DIR", str(tmp_path / "cache"))
    ws = make_workspace(tmp_path / "proj", tiny_model_dir, [{"name": "random"}])
    board = pipeline.Board(ws, "tiny")
    assert board.device == resolve_device("auto") and board.dtype == "float32"
    assert board.base_handle.device == board.device == board.base_model_under_test().device
    assert board.new_signals().device == board.device
    cell = board.cells()[0]
    selection, _ = board.select(cell)
    model, report = board.train(selection, cell.seed)
    assert model.device == board.device and report["device"] == board.device


def test_scoring_engine_auto_is_transformers_on_the_cpu(monkeypatch):
    """Loss signals resolve their own engine: ``auto`` scores on transformers on the CPU (vLLM's full-vocabulary
    prompt logprobs are the slower there) and on vLLM on an accelerator; the setting and its variable are outside
    the protocol's hash, and the generation engine's variable does not move it."""
    from selbench import vllm_engine

    monkeypatch.delenv("SELBENCH_SCORING_ENGINE", raising=False)
    monkeypatch.setenv("SELBENCH_ENGINE", "vllm")
    assert vllm_engine.resolve_scoring_engine("auto", "cpu") == "transformers"
    monkeypatch.setattr(vllm_engine, "vllm_importable", lambda: True)
    assert vllm_engine.resolve_scoring_engine("auto", "cuda") == "vllm"
    assert vllm_engine.resolve_scoring_engine("vllm", "cpu") == "vllm"
    monkeypatch.setenv("SELBENCH_SCORING_ENGINE", "transformers")
    assert vllm_engine.resolve_scoring_engine("vllm", "cuda") == "transformers"
    monkeypatch.setenv("SELBENCH_SCORING_ENGINE", "onnx")
    with pytest.raises(ValueError, match="scoring_engine must be one of"):
        vllm_engine.resolve_scoring_engine("auto", "cpu")
    monkeypatch.setattr(vllm_engine, "vllm_importable", lambda: False)
    monkeypatch.setenv("SELBENCH_SCORING_ENGINE", "vllm")
    with pytest.raises(RuntimeError, match="import vllm"):
        vllm_engine.resolve_scoring_engine("auto", "cuda")
    base = {"name": "b", "base_model": {"path": "m"}, "pool": {"path": "p.json"}, "budgets": [4],
            "methods": [{"name": "random"}]}
    assert len({Protocol.model_validate({**base, "scoring_engine": e}).hash for e in ("auto", "vllm")}) == 1
