"""A judge client on any OpenAI-compatible chat endpoint: bounded concurrency, retries, a per-judgment cache and a
ledger of what the judging cost.

Transport failures (timeouts, connection errors, HTTP 429 and 5xx) are retried with exponential backoff. When the
retries are spent, or the server refuses us outright (401, 403, 404, a reply that is not a chat completion), the
client raises :class:`JudgeUnavailable` naming the endpoint and the cause, and every later request of this client
fails at once: an outage is not a verdict, so nothing about it is cached and the evaluation fails (the next run asks
again, and only what is missing). A request the server rejects as malformed (400, 422, e.g. a prompt longer than the
judge's context) is that item's error verdict, counted. A verdict that the caller's ``parse`` rejects is re-asked up to ``max_parse_retries`` times; each re-ask sends a different
``seed`` (attempt number) and, when the protocol asks for greedy judging, temperature 0.7, because a greedy judge would
only repeat the same unparseable text. After that the judgment is an *error verdict* that callers count as an error,
never as a tie. The API key is only ever read from the environment into the HTTP client; it is not part of any cache
key, cache file, ledger or log line.

Structured outputs: a caller may pass a ``constraint`` for its verdict format (vLLM's ``structured_outputs``,
e.g. ``{"regex": ...}`` or ``{"choice": [...]}``). It is sent, and is part of the judgment's cache key, only when
the client's ``structured_outputs`` is on (the local vLLM judge); other servers get the plain request.
"""

from __future__ import annotations

import logging
import threading
import time
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Sequence

from ..cache import ArtifactCache
from ..errors import JudgeUnavailable

log = logging.getLogger(__name__)

Messages = list[dict[str, str]]
RETRY_TEMPERATURE = 0.7


@dataclass
class Ledger:
    calls: int = 0  # HTTP requests sent (including retried ones)
    cached: int = 0  # answers served from the judgment cache
    retries: int = 0  # transport retries (timeouts, 429, 5xx, connection errors)
    parse_retries: int = 0  # re-asks after an unparseable verdict
    parse_errors: int = 0  # judgments still unparseable after all re-asks
    errors: int = 0  # judgments that failed at the transport level after all retries
    prompt_tokens: int = 0  # tokens of the requests sent
    completion_tokens: int = 0
    # tokens of the answers served from the judgment cache, as counted when they were asked: the judgments'
    # cost does not vanish on a re-run (answers cached before the usage was stored count 0)
    cached_prompt_tokens: int = 0
    cached_completion_tokens: int = 0

    def as_counts(self, prefix: str = "judge/") -> dict[str, int]:
        return {prefix + k: v for k, v in asdict(self).items()}


@dataclass
class Verdict:
    value: Any  # the parsed verdict, or None for an error verdict
    text: str | None  # the last raw judge output
    attempts: int
    error: str | None = None  # "parse" or the transport error

    @property
    def ok(self) -> bool:
        return self.error is None


class JudgeRequestError(RuntimeError):
    """The judge rejected this one request (HTTP 400/422): that item's error verdict."""


@dataclass
class JudgeClient:
    """``identity`` names the judge in cache keys (model + endpoint, or the local weights' hash) — never the key."""

    base_url: str
    model: str
    identity: dict[str, Any]
    cache: ArtifactCache | None = None
    api_key: str = field(default="EMPTY", repr=False)
    max_concurrency: int = 4
    max_retries: int = 5
    max_parse_retries: int = 2
    timeout_s: float = 120.0  # per request, plus timeout_per_token_s for every token it may generate
    timeout_per_token_s: float = 0.0
    temperature: float = 0.0
    max_tokens: int = 512
    backoff_s: float = 1.0  # first retry delay; doubles each retry
    extra_body: dict[str, Any] | None = None
    structured_outputs: bool = False  # the server honours vLLM's extra_body["structured_outputs"]
    ledger: Ledger = field(default_factory=Ledger)
    server_log: Any = None  # path of a local server's log, for diagnostics
    api_key_env: str | None = None  # named in the error when the server refuses the key

    def __post_init__(self):
        from openai import OpenAI

        # Our own retry loop (max_retries=0 here) so that retries are counted and testable.
        self._client = OpenAI(base_url=self.base_url, api_key=self.api_key or "EMPTY", max_retries=0,
                              timeout=self.timeout_s)
        self._lock = threading.Lock()
        self._closed = False
        self._unavailable: JudgeUnavailable | None = None  # once set, every request fails at once with it

    @classmethod
    def from_spec(cls, spec, base_url: str, model: str, identity: dict[str, Any], cache: ArtifactCache | None,
                  api_key: str = "EMPTY", **kw) -> "JudgeClient":
        return cls(base_url=base_url, model=model, identity=identity, cache=cache, api_key=api_key,
                   max_concurrency=spec.max_concurrency, max_retries=spec.max_retries,
                   max_parse_retries=spec.max_parse_retries, timeout_s=spec.timeout_s,
                   temperature=spec.temperature, max_tokens=spec.max_tokens,
                   timeout_per_token_s=spec.timeout_per_token_s, api_key_env=spec.api_key_env, **kw)

    # -- one request ---------------------------------------------------------------------------------------------
    def _count(self, ledgers: Sequence[Ledger], **inc: int) -> None:
        with self._lock:
            for lg in ledgers:
                for k, v in inc.items():
                    setattr(lg, k, getattr(lg, k) + v)

    def constraint(self, constraint: dict[str, Any] | None) -> dict[str, Any] | None:
        """The constraint this judge will apply: ``constraint`` if the server supports it, else None."""
        return constraint if self.structured_outputs else None

    def _params(self, attempt: int, max_tokens: int | None, constraint: dict[str, Any] | None = None
                ) -> dict[str, Any]:
        p: dict[str, Any] = {"temperature": self.temperature, "max_tokens": max_tokens or self.max_tokens}
        if attempt > 0:
            p["seed"] = attempt
            p["temperature"] = self.temperature or RETRY_TEMPERATURE
        if self.constraint(constraint):
            p["extra_body"] = {"structured_outputs": constraint}
        return p

    def complete(self, messages: Messages, attempt: int = 0, max_tokens: int | None = None,
                 ledgers: Sequence[Ledger] = (), constraint: dict[str, Any] | None = None) -> str:
        """The judge's text for ``messages`` (cached). Raises after ``max_retries`` failed transport retries."""
        return self._ask(messages, self._params(attempt, max_tokens, constraint), ledgers)["text"]

    def top_logprobs(self, messages: Messages, k: int, ledgers: Sequence[Ledger] = ()) -> list[list] | None:
        """The ``k`` most likely first tokens of the judge's answer as ``[[token, logprob], ...]`` (cached); None
        when the endpoint returns no logprobs. DEITA-style scorers read a score's distribution from them."""
        params = {"temperature": 0.0, "max_tokens": 1, "logprobs": True, "top_logprobs": k}
        return self._ask(messages, params, ledgers)["top_logprobs"]

    def _ask(self, messages: Messages, params: dict[str, Any], ledgers: Sequence[Ledger]) -> dict[str, Any]:
        ledgers = (self.ledger, *ledgers)

        def ask() -> dict[str, Any]:
            text, usage, top = self._request(messages, params, ledgers)
            self._count(ledgers, prompt_tokens=usage[0], completion_tokens=usage[1])
            return {"text": text, "judge": self.identity, "params": params, "usage": list(usage),
                    **({"top_logprobs": top} if params.get("logprobs") else {})}

        if self.cache is None:
            return ask()
        inputs = {"judge": self.identity, "messages": messages, "params": params}
        # The judge's identity names the judge, its engine and device included: the policy adds nothing.
        art = self.cache.get_or_compute("judgments", inputs, ask, engine=None, device=None)
        if art.hit:
            used = art.value.get("usage") or (0, 0)
            self._count(ledgers, cached=1, cached_prompt_tokens=int(used[0]), cached_completion_tokens=int(used[1]))
        return art.value

    def _request(self, messages: Messages, params: dict[str, Any], ledgers
                 ) -> tuple[str, tuple[int, int], list[list] | None]:
        import openai

        params = dict(params)
        body = {**(self.extra_body or {}), **params.pop("extra_body", {})} or None
        timeout = self.timeout_s + self.timeout_per_token_s * params["max_tokens"]
        for i in range(self.max_retries + 1):
            if self._closed:  # the evaluation was aborted: don't keep retrying against a stopped server
                raise RuntimeError("judge client closed")
            if self._unavailable is not None:
                raise self._unavailable
            self._count(ledgers, calls=1)
            try:
                r = self._client.chat.completions.create(model=self.model, messages=messages, extra_body=body,
                                                         timeout=timeout, **params)
                choice = r.choices[0]
                text = choice.message.content or ""
                usage = (r.usage.prompt_tokens, r.usage.completion_tokens) if r.usage else (0, 0)
                content = getattr(choice.logprobs, "content", None) if choice.logprobs else None
                top = [[t.token, t.logprob] for t in content[0].top_logprobs] if content else None
                return text, usage, top
            except (openai.APITimeoutError, openai.APIConnectionError, openai.RateLimitError,
                    openai.InternalServerError) as e:
                if i == self.max_retries:
                    self._fail(_describe(e) + f" after {self.max_retries} retries", e)
                self._count(ledgers, retries=1)
                delay = self.backoff_s * 2 ** i
                log.warning("judge request failed (%s); retry %d/%d in %.2fs", type(e).__name__, i + 1,
                            self.max_retries, delay)
                time.sleep(delay)
            except (openai.BadRequestError, openai.UnprocessableEntityError) as e:
                raise JudgeRequestError(_describe(e)) from e
            except openai.AuthenticationError as e:
                self._fail(_describe(e), e, f"check the API key in ${self.api_key_env}" if self.api_key_env
                           else "the endpoint wants an API key: set judge.api_key_env")
            except openai.PermissionDeniedError as e:
                self._fail(_describe(e), e, "the API key is not allowed to use this model")
            except openai.NotFoundError as e:
                self._fail(_describe(e), e, f"check judge.base_url and judge.model ({self.model!r})")
            except (openai.APIError, AttributeError, IndexError, TypeError, ValueError) as e:
                self._fail(f"not a chat completion: {_describe(e)}", e)
        raise AssertionError("unreachable")

    def _fail(self, cause: str, exc: BaseException, hint: str = ""):
        err = JudgeUnavailable(self.base_url, cause, hint)
        with self._lock:
            self._unavailable = self._unavailable or err
        raise err from exc

    # -- judgments -----------------------------------------------------------------------------------------------
    def judge(self, messages: Messages, parse: Callable[[str], Any] | None = None, ledger: Ledger | None = None,
              max_tokens: int | None = None, constraint: dict[str, Any] | None = None) -> Verdict:
        """One judgment. ``parse`` returns the verdict, or None / raises ValueError when the text is unusable.
        ``constraint``: the verdict format as a structured-output constraint (applied where supported)."""
        ledgers = (ledger,) if ledger is not None else ()
        text = None
        for attempt in range(self.max_parse_retries + 1):
            if attempt:
                self._count(ledgers + (self.ledger,), parse_retries=1)
            try:
                text = self.complete(messages, attempt, max_tokens, ledgers, constraint)
            except JudgeRequestError as e:  # this request was rejected: this item's error verdict, counted
                self._count(ledgers + (self.ledger,), errors=1)
                return Verdict(None, text, attempt + 1, f"request rejected: {e}")
            if parse is None:
                return Verdict(text, text, attempt + 1)
            try:
                value = parse(text)
            except ValueError:
                value = None
            if value is not None:
                return Verdict(value, text, attempt + 1)
        self._count(ledgers + (self.ledger,), parse_errors=1)
        return Verdict(None, text, self.max_parse_retries + 1, "parse")

    def judge_many(self, items: Sequence[Messages], parse: Callable[[str], Any] | None = None,
                   ledger: Ledger | None = None, desc: str = "judging", max_tokens: int | None = None,
                   constraint: dict[str, Any] | None = None) -> list[Verdict]:
        """Judge every conversation in ``items`` with at most ``max_concurrency`` requests in flight."""
        return self._map(lambda m: self.judge(m, parse, ledger, max_tokens, constraint), items, desc,
                         lambda v: not v.ok)

    def top_logprobs_many(self, items: Sequence[Messages], k: int, ledger: Ledger | None = None,
                          desc: str = "judging (logprobs)") -> list[list[list] | None | JudgeRequestError]:
        """:meth:`top_logprobs` of every conversation; a request the judge rejected (400/422) is its
        :class:`JudgeRequestError` in place, counted in the ledgers' ``errors``."""
        ledgers = (ledger,) if ledger is not None else ()

        def one(m):
            try:
                return self.top_logprobs(m, k, ledgers)
            except JudgeRequestError as e:
                self._count(ledgers + (self.ledger,), errors=1)
                return e

        return self._map(one, items, desc, lambda r: isinstance(r, JudgeRequestError))

    def _map(self, fn: Callable[[Messages], Any], items: Sequence[Messages], desc: str,
             is_error: Callable[[Any], bool]) -> list[Any]:
        """``fn`` over ``items`` in a bounded thread pool, with progress (done, errors so far). The first
        :class:`JudgeUnavailable` cancels what is queued and is raised once the requests in flight end."""
        from tqdm.auto import tqdm

        pool = ThreadPoolExecutor(max_workers=self.max_concurrency)
        try:
            futures = [pool.submit(fn, m) for m in items]
            pending, errors = set(futures), 0
            with tqdm(total=len(futures), desc=desc, disable=len(futures) < 2) as bar:
                while pending:  # a timed wait keeps Ctrl-C responsive (a bare Future.result() is not)
                    done, pending = wait(pending, timeout=0.5, return_when=FIRST_COMPLETED)
                    for f in done:
                        if f.exception() is not None:  # the judge is unavailable: ask nothing more
                            pool.shutdown(wait=True, cancel_futures=True)
                            raise f.exception()
                        errors += bool(is_error(f.result()))
                    bar.update(len(done))
                    if done:
                        bar.set_postfix(errors=errors, refresh=False)
            results = [f.result() for f in futures]
        except BaseException:  # Ctrl-C / SIGTERM: drop queued judgments and don't wait for the ones in flight
            pool.shutdown(wait=False, cancel_futures=True)
            raise
        pool.shutdown(wait=True)
        return results

    def close(self) -> None:
        self._closed = True
        self._client.close()


def _describe(e: BaseException) -> str:
    status = getattr(e, "status_code", None)
    msg = str(e).strip().splitlines()[0][:300] if str(e).strip() else ""
    return f"{type(e).__name__}" + (f" (HTTP {status})" if status else "") + (f": {msg}" if msg else "")
