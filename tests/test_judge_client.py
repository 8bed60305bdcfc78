"""JudgeClient against a fault-injecting OpenAI-compatible server: retries, parse re-asks, cache, ledger, secrets."""

from __future__ import annotations

import pytest

from selbench.cache import ArtifactCache
from selbench.errors import JudgeUnavailable
from selbench.judge.client import JudgeClient, Ledger
from selbench.judge.verdicts import rating_or_none
from selbench.protocol import JudgeSpec

from fake_judge import FakeJudge

SECRET = "sk-test-THIS-MUST-NOT-LEAK-1234"
MSG = [{"role": "system", "content": "judge"}, {"role": "user", "content": "Rate it, write [[rating]]."}]


@pytest.fixture
def fake():
    with FakeJudge(timeout_sleep_s=1.0) as f:
        yield f


def make_client(fake, tmp_path, **kw) -> JudgeClient:
    spec = JudgeSpec(kind="openai", model="fake-judge", max_retries=kw.pop("max_retries", 3),
                     max_parse_retries=kw.pop("max_parse_retries", 2), timeout_s=0.5, max_concurrency=3,
                     timeout_per_token_s=0)
    return JudgeClient.from_spec(spec, fake.base_url, "fake-judge", {"kind": "openai", "model": "fake-judge",
                                 "base_url": fake.base_url}, ArtifactCache(tmp_path / "cache"), api_key=SECRET,
                                 backoff_s=0.01, **kw)


@pytest.mark.parametrize("fault", ["429", "500", "timeout"])
def test_transport_faults_are_retried(fake, tmp_path, fault):
    c = make_client(fake, tmp_path)
    fake.faults.extend([fault, fault])
    lg = Ledger()
    v = c.judge(MSG, rating_or_none, lg)
    assert v.ok and v.value is not None
    assert (lg.calls, lg.retries, lg.errors) == (3, 2, 0)
    assert c.ledger.retries == 2


def test_retries_exhausted_is_judge_unavailable_not_a_verdict(fake, tmp_path):
    c = make_client(fake, tmp_path, max_retries=1)
    fake.faults.extend(["500", "500"])
    lg = Ledger()
    with pytest.raises(JudgeUnavailable, match=r"judge at http://127.0.0.1:\d+/v1 unavailable: .*HTTP 500.* after 1"):
        c.judge(MSG, rating_or_none, lg)
    assert (lg.calls, lg.retries, lg.parse_errors) == (2, 1, 0)
    assert not list((tmp_path / "cache").rglob("*.json"))  # nothing about the outage is cached


def test_garbage_verdict_reasked_then_succeeds(fake, tmp_path):
    c = make_client(fake, tmp_path)
    fake.faults.append("garbage")
    lg = Ledger()
    v = c.judge(MSG, rating_or_none, lg)
    assert v.ok and v.attempts == 2 and lg.parse_retries == 1 and lg.parse_errors == 0
    second = fake.requests[-1]
    assert second["seed"] == 1 and second["temperature"] > 0  # the re-ask samples differently


def test_garbage_after_all_reasks_is_error_not_tie(fake, tmp_path):
    c = make_client(fake, tmp_path, max_parse_retries=2)
    fake.faults.extend(["garbage"] * 3)
    lg = Ledger()
    v = c.judge(MSG, rating_or_none, lg)
    assert not v.ok and v.error == "parse" and v.value is None and v.attempts == 3
    assert (lg.calls, lg.parse_retries, lg.parse_errors) == (3, 2, 1)


def test_cache_hit_on_repeat_and_ledger(fake, tmp_path):
    c = make_client(fake, tmp_path)
    items = [[{"role": "user", "content": f"question {i} [[rating]]"}] for i in range(5)]
    lg1 = Ledger()
    first = c.judge_many(items, rating_or_none, lg1)
    assert (lg1.calls, lg1.cached, lg1.prompt_tokens, lg1.completion_tokens) == (5, 0, 50, 15)
    n_requests = len(fake.requests)
    c2 = make_client(fake, tmp_path)  # a new client on the same cache: same judge identity
    lg2 = Ledger()
    again = c2.judge_many(items, rating_or_none, lg2)
    assert [v.value for v in again] == [v.value for v in first]
    assert (lg2.calls, lg2.cached) == (0, 5) and len(fake.requests) == n_requests


def test_api_key_sent_but_never_stored(fake, tmp_path, caplog):
    c = make_client(fake, tmp_path)
    fake.faults.append("500")
    with caplog.at_level("DEBUG"):
        c.judge_many([MSG, [{"role": "user", "content": "other [[rating]]"}]], rating_or_none)
    assert any(SECRET in h for h in fake.auth_headers)
    files = [p for p in (tmp_path / "cache").rglob("*") if p.is_file()]
    assert files
    for p in files:
        assert SECRET not in p.read_text()
    assert SECRET not in caplog.text and SECRET not in repr(c)


def test_concurrency_is_bounded(fake, tmp_path):
    c = make_client(fake, tmp_path)
    import threading

    active, peak, lock = [0], [0], threading.Lock()
    orig = c._request

    def spy(*a, **kw):
        with lock:
            active[0] += 1
            peak[0] = max(peak[0], active[0])
        try:
            import time

            time.sleep(0.05)
            return orig(*a, **kw)
        finally:
            with lock:
                active[0] -= 1

    c._request = spy
    c.judge_many([[{"role": "user", "content": f"q{i} [[rating]]"}] for i in range(9)], rating_or_none)
    assert 1 < peak[0] <= 3


@pytest.fixture
def python_sigint():
    """Python's own SIGINT handler for the test: ``_thread.interrupt_main()`` simulates Ctrl-C only under it, and a
    library an earlier test loaded in this process may have replaced it (the simulated Ctrl-C is then dropped)."""
    import signal

    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, previous)


def test_interrupt_drops_queued_judgments_without_waiting(fake, tmp_path, python_sigint):
    """Ctrl-C during judge_many returns at once: queued judgments are cancelled, in-flight ones not waited for."""
    import _thread
    import threading
    import time

    c = make_client(fake, tmp_path)
    release, started = threading.Event(), []
    orig = c._request

    def slow(messages, *a, **kw):
        started.append(messages[0]["content"])
        if messages[0]["content"] == "boom" and started.count("boom") == 1:
            _thread.interrupt_main()  # Ctrl-C arrives in the main thread while judgments are in flight
        release.wait(10)
        return orig(messages, *a, **kw)

    c._request = slow
    items = [[{"role": "user", "content": "boom"}]] + [[{"role": "user", "content": f"q{i}"}] for i in range(20)]
    t0 = time.perf_counter()
    with pytest.raises(KeyboardInterrupt):
        c.judge_many(items, rating_or_none)
    assert time.perf_counter() - t0 < 5
    release.set()
    time.sleep(0.3)
    assert len(set(started)) <= 3  # only judgments already in flight ran: the queued ones were cancelled


def test_refused_connection_names_the_endpoint(tmp_path):
    from selbench.judge.server import free_port

    port = free_port()  # nothing listens there
    spec = JudgeSpec(kind="openai", model="m", max_retries=1, timeout_s=2, timeout_per_token_s=0)
    url = f"http://127.0.0.1:{port}/v1"
    c = JudgeClient.from_spec(spec, url, "m", {"kind": "openai"}, ArtifactCache(tmp_path / "c"), backoff_s=0.01)
    with pytest.raises(JudgeUnavailable, match=rf"127.0.0.1:{port}/v1 unavailable: APIConnectionError"):
        c.judge(MSG, rating_or_none)


@pytest.mark.parametrize("fault,hint", [("401", r"check the API key in \$OPENAI_API_KEY"),
                                        ("403", "not allowed"), ("body", "not a chat completion")])
def test_refusals_fail_at_once_without_retries(fake, tmp_path, fault, hint):
    c = make_client(fake, tmp_path)
    fake.faults.append(fault)
    lg = Ledger()
    with pytest.raises(JudgeUnavailable, match=hint):
        c.judge(MSG, rating_or_none, lg)
    assert lg.calls == 1 and lg.retries == 0


def test_rejected_request_is_that_items_error_verdict(fake, tmp_path):
    """HTTP 400 (e.g. a prompt longer than the judge's context): this item's counted error; the judge works."""
    c = make_client(fake, tmp_path)
    fake.faults.append("400")
    lg = Ledger()
    v = c.judge(MSG, rating_or_none, lg)
    assert not v.ok and v.error.startswith("request rejected") and lg.errors == 1
    assert c.judge(MSG, rating_or_none).ok  # the next request is asked (and answered)


def test_down_judge_stops_judge_many_and_keeps_what_was_answered(fake, tmp_path):
    """Once the judge is unavailable nothing more is asked; verdicts already given are cached, so the next run
    asks only for the missing ones."""
    c = make_client(fake, tmp_path, max_retries=1)
    items = [[{"role": "user", "content": f"q{i} [[rating]]"}] for i in range(12)]
    c.max_concurrency = 1
    fake.faults.extend([None, None, None])  # three answers, then the judge goes down
    fake.always = "500"
    with pytest.raises(JudgeUnavailable):
        c.judge_many(items, rating_or_none)
    assert len(fake.requests) == 5  # 3 answered + 1 request and its retry; the 8 queued were never sent
    fake.always = None
    c2 = make_client(fake, tmp_path)
    lg = Ledger()
    verdicts = c2.judge_many(items, rating_or_none, lg)
    assert all(v.ok for v in verdicts) and lg.cached == 3 and lg.calls == 9
