"""Hub lookups that fail offline fail once per process (selbench.hub)."""

from __future__ import annotations

import pytest


def test_a_hub_model_that_cannot_load_fails_once_per_process(monkeypatch, tmp_path):
    """The reward model's hub checkpoint offline: the first cell finds out, the next ones are told at once."""
    import transformers

    from selbench import hub
    from selbench.cache import ArtifactCache
    from selbench.signals import SignalCache

    monkeypatch.setattr(hub, "_FAILED", {})
    calls = []

    def unreachable(path, *a, **k):
        calls.append(path)
        raise OSError(f"We couldn't connect to 'https://huggingface.co' to load {path}")

    monkeypatch.setattr(transformers.AutoTokenizer, "from_pretrained", unreachable)
    for n in (2, 3):  # two cells: different pairs, the same model
        signals = SignalCache(ArtifactCache(tmp_path / "cache"), None)
        with pytest.raises(OSError, match="couldn't connect"):
            signals.classifier_scores([("q", "a")] * n, "org/reward-model")
    assert calls == ["org/reward-model"]
