"""IFD variants: the chat-template default and Cherry_LLM's own rules (IFD == 1 kept, > 1 dropped), recorded."""

from __future__ import annotations

import numpy as np
import pytest

from selbench.cache import ArtifactCache
from selbench.data import Pool, normalise_row
from selbench.methods.ifd import select_by_ifd
from selbench.registry import get_method
from selbench.select import SelectionContext, run_selection
from tests.conftest import alpaca_rows


class StubSignals:
    def __init__(self, cond, direct):
        self.cond, self.direct, self.calls = np.asarray(cond), np.asarray(direct), []

    def response_losses(self, pool, *, conditioned=True, template="chat", model=None):
        self.calls.append(template)
        return self.cond if conditioned else self.direct


def test_chat_variant_is_the_default_and_recorded(tmp_path):
    pool = Pool([normalise_row(r, "alpaca", f"r{i}") for i, r in enumerate(alpaca_rows(4))])
    sig = StubSignals([1.0, 2.0, 3.0, 0.5], [2.0, 2.0, 4.0, 1.0])  # IFD 0.5, 1.0, 0.75, 0.5
    ctx = SelectionContext(seed=0, cache=ArtifactCache(tmp_path), signals=sig)
    sel = run_selection(get_method("ifd"), pool, 2, ctx)[0]
    assert sel.extras["variant"] == "chat" and sig.calls == ["chat", "chat"]
    assert sel.ids == [pool.examples[2].id, pool.examples[3].id]  # IFD 1.0 dropped; tie 0.5 -> later index
    with pytest.raises(ValueError, match="variant"):
        run_selection(get_method("ifd"), pool, 2, ctx, {"variant": "alpaca"})


def test_cherry_rule_keeps_ifd_equal_to_one():
    class P:
        examples = [type("E", (), {"id": f"e{i}"})() for i in range(5)]

        def __len__(self):
            return 5

    ifd = np.array([0.5, 1.0, 1.0 + 1e-12, np.nan, 0.9])
    cherry = select_by_ifd(P(), 3, ifd, 1.0, strict_keep=False)
    assert cherry.ids == ["e1", "e4", "e0"] and cherry.extras["n_kept_by_threshold"] == 3
    chat = select_by_ifd(P(), 2, ifd, 1.0)
    assert chat.ids == ["e4", "e0"] and chat.extras["n_kept_by_threshold"] == 2
