"""A fault-injecting OpenAI-compatible judge on 127.0.0.1 (stdlib only) for the judge tests.

``FakeJudge.faults`` is a queue consumed one per chat request: "400", "401", "403", "429", "500", "timeout" (sleeps
past the client's timeout), "garbage" (an unparseable verdict) or "body" (a reply that is not a chat completion);
``FakeJudge.always`` is the fault of every request once the queue is empty (a judge that is down). Without a fault the reply is deterministic, chosen from the prompt:
MT-Bench rating prompts get ``Rating: [[n]]``, pair-v2 prompts ``[[A]]``, review prompts ``8 6`` (always the first
answer), AlpacaEval prompts ``[[2]]``; prompts containing one of ``garbage_if`` always get garbage.

Rules for the selection methods' prompts (methods/alpagasus.py, instag.py, deita.py), each keyed by a sentence of
that prompt and deterministic in the prompt's text: an AlpaGasus rating gets ``alpagasus_score(text)`` on the first
line; an InsTag query gets a JSON list of ``instag_tags(query)``; a DEITA prompt gets its most likely digit and, when
the request asks for ``logprobs``, the ``top_logprobs`` of ``deita_top_logprobs(text)`` (OpenAI's format);
alpaca_eval's weighted annotator prompt likewise gets ``weighted_ae_top_logprobs(text)``.
"""

from __future__ import annotations

import collections
import json
import math
import re
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

GARBAGE = "I would rather not say which one is better."


ALPAGASUS_MARK = "Give it a score from 0 to 5"
INSTAG_MARK = "Answer with a JSON list of strings only"
DEITA_MARK = "Answer with one digit from 1 to 6."
WEIGHTED_AE_MARK = "## Best Model Identifier"  # alpaca_eval's weighted (logprob) annotator template


def weighted_ae_top_logprobs(text: str) -> list[tuple[str, float]]:
    """alpaca_eval's weighted annotator: ``M`` (the second output) with a probability set by the prompt's length,
    ``m`` with the rest (a little under it: a distractor shares the mass), most likely first."""
    p_second = 0.1 + 0.8 * (len(text) % 97) / 96
    top = {"M": math.log(p_second * 0.95), "m": math.log((1 - p_second) * 0.95), "The": math.log(0.05)}
    return sorted(top.items(), key=lambda t: -t[1])


def alpagasus_score(text: str) -> float:
    """0, 0.5, ..., 5 from the prompt's length."""
    return (len(text) % 11) / 2


def instag_tags(query: str) -> list[str]:
    """1-4 tags: words of the query (3+ letters), in surface forms that normalisation must merge."""
    words = [w for w in re.findall(r"[A-Za-z]{3,}", query)]
    n = 1 + len(query) % 4
    return [w.capitalize() + ("s" if i % 2 else "") for i, w in enumerate(words[:n])] or ["misc"]


def deita_top_logprobs(text: str) -> list[tuple[str, float]]:
    """Log-probabilities of "1".."6" peaked at a centre set by the prompt's length, plus two distractor tokens
    (" 3", a variant of "3", and " The"), most likely first."""
    centre = 1 + (len(text) % 50) / 10
    logits = {str(d): -((d - centre) ** 2) / 2 for d in range(1, 7)}
    logits[" 3"], logits[" The"] = logits["3"] - 1.0, -3.0
    z = math.log(sum(math.exp(v) for v in logits.values()))
    return sorted(((t, v - z) for t, v in logits.items()), key=lambda t: -t[1])


class FakeJudge:
    def __init__(self, garbage_if: tuple[str, ...] = (), timeout_sleep_s: float = 1.5):
        self.faults: collections.deque[str] = collections.deque()
        self.get_status = 200  # the status of GET /v1/models (401: a refused key)
        self.always: str | None = None  # a fault for every request once the queue is empty (a judge that is down)
        self.garbage_if = garbage_if
        self.timeout_sleep_s = timeout_sleep_s
        self.requests: list[dict] = []
        self.auth_headers: list[str] = []
        self._lock = threading.Lock()
        judge = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *a):
                pass

            def _send(self, code: int, obj: dict) -> None:
                body = json.dumps(obj).encode()
                self.send_response(code)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_GET(self):
                if self.path in ("/health", "/v1/health"):
                    return self._send(200, {"status": "ok"})
                if self.path == "/v1/models" and judge.get_status != 200:
                    return self._send(judge.get_status, {"error": {"message": "refused", "type": "auth"}})
                if self.path == "/v1/models":
                    return self._send(200, {"object": "list", "data": [{"id": "fake-judge", "object": "model"}]})
                self._send(404, {"error": "not found"})

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers.get("content-length", 0))) or b"{}")
                with judge._lock:
                    judge.requests.append(body)
                    judge.auth_headers.append(self.headers.get("authorization", ""))
                    fault = judge.faults.popleft() if judge.faults else judge.always
                if fault in ("400", "401", "403"):
                    return self._send(int(fault), {"error": {"message": f"fault {fault}", "type": "invalid"}})
                if fault == "body":  # not a chat completion at all
                    body = b"<html>502 bad gateway</html>"
                    self.send_response(200)
                    self.send_header("content-type", "text/html")
                    self.send_header("content-length", str(len(body)))
                    self.end_headers()
                    return self.wfile.write(body)
                if fault == "429":
                    return self._send(429, {"error": {"message": "rate limited", "type": "rate_limit"}})
                if fault == "500":
                    return self._send(500, {"error": {"message": "boom", "type": "server_error"}})
                if fault == "timeout":
                    time.sleep(judge.timeout_sleep_s)
                text = GARBAGE if fault == "garbage" else judge.reply(body.get("messages", []))
                choice = {"index": 0, "finish_reason": "stop", "message": {"role": "assistant", "content": text}}
                prompt = "\n".join(m.get("content", "") for m in body.get("messages", []))
                scorer = deita_top_logprobs if DEITA_MARK in prompt else \
                    weighted_ae_top_logprobs if WEIGHTED_AE_MARK in prompt else None
                if body.get("logprobs") and fault is None and scorer is not None:
                    top = scorer(prompt)[: body.get("top_logprobs") or 1]
                    choice["logprobs"] = {"content": [{"token": text, "logprob": top[0][1], "bytes": None,
                                                       "top_logprobs": [{"token": t, "logprob": lp, "bytes": None}
                                                                        for t, lp in top]}]}
                self._send(200, {"id": "x", "object": "chat.completion", "created": 0, "model": body.get("model"),
                                 "choices": [choice],
                                 "usage": {"prompt_tokens": 10, "completion_tokens": 3, "total_tokens": 13}})

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def reply(self, messages: list[dict]) -> str:
        text = "\n".join(m.get("content", "") for m in messages)
        if any(g in text for g in self.garbage_if):
            return GARBAGE
        if ALPAGASUS_MARK in text:
            return f"{alpagasus_score(text)}\nThe response is mostly accurate."
        if INSTAG_MARK in text:
            return json.dumps(instag_tags(text.split("Query:\n", 1)[-1]))
        if DEITA_MARK in text:
            return max(deita_top_logprobs(text), key=lambda t: t[1])[0].strip()
        if WEIGHTED_AE_MARK in text:
            return weighted_ae_top_logprobs(text)[0][0]
        if "[[rating]]" in text:
            return f"The answer is weak. Rating: [[{1 + len(text) % 10}]]"
        if "[[C]]" in text:
            return "Assistant A is better. [[A]]"
        if "[[1]]" in text and "[[2]]" in text:
            return "[[2]]"
        return "8 6\nThe first answer is more detailed."

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/v1"

    def __enter__(self) -> "FakeJudge":
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()
