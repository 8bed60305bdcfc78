"""A fault-injecting OpenAI-compatible judge on 127.0.0.1 (stdlib only) for the judge tests.

``FakeJudge.faults`` is a queue consumed one per chat request: "429", "500", "timeout" (sleeps past the client's
timeout) or "garbage" (an unparseable verdict). Without a fault the reply is deterministic, chosen from the prompt:
MT-Bench rating prompts get ``Rating: [[n]]``, pair-v2 prompts ``[[A]]``, review prompts ``8 6`` (always the first
answer), AlpacaEval prompts ``[[2]]``; prompts containing one of ``garbage_if`` always get garbage.
"""

from __future__ import annotations

import collections
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

GARBAGE = "I would rather not say which one is better."


class FakeJudge:
    def __init__(self, garbage_if: tuple[str, ...] = (), timeout_sleep_s: float = 1.5):
        self.faults: collections.deque[str] = collections.deque()
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
                if self.path == "/v1/models":
                    return self._send(200, {"object": "list", "data": [{"id": "fake-judge", "object": "model"}]})
                self._send(404, {"error": "not found"})

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers.get("content-length", 0))) or b"{}")
                with judge._lock:
                    judge.requests.append(body)
                    judge.auth_headers.append(self.headers.get("authorization", ""))
                    fault = judge.faults.popleft() if judge.faults else None
                if fault == "429":
                    return self._send(429, {"error": {"message": "rate limited", "type": "rate_limit"}})
                if fault == "500":
                    return self._send(500, {"error": {"message": "boom", "type": "server_error"}})
                if fault == "timeout":
                    time.sleep(judge.timeout_sleep_s)
                text = GARBAGE if fault == "garbage" else judge.reply(body.get("messages", []))
                self._send(200, {"id": "x", "object": "chat.completion", "created": 0, "model": body.get("model"),
                                 "choices": [{"index": 0, "finish_reason": "stop",
                                              "message": {"role": "assistant", "content": text}}],
                                 "usage": {"prompt_tokens": 10, "completion_tokens": 3, "total_tokens": 13}})

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def reply(self, messages: list[dict]) -> str:
        text = "\n".join(m.get("content", "") for m in messages)
        if any(g in text for g in self.garbage_if):
            return GARBAGE
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
