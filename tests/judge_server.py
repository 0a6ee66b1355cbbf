"""A GPT judge for tests: an OpenAI chat-completions endpoint on 127.0.0.1 (real HTTP, the real `openai` client
on the other side) whose scores are a function of the two answers in the review prompt, so that every score
of a test can be worked out by hand."""

from __future__ import annotations

import json
import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

ANSWER = re.compile(r"\[Assistant (\d)\]\n(.*?)\n\n\[End of Assistant \1\]", re.S)


def words(text: str) -> set[str]:
    return set(re.findall(r"[a-z0-9]+", text.lower()))


def overlap_score(answer: str, reference: str) -> int:
    """1 + 9 * (share of the reference's distinct words the answer has), rounded half up: 1 to 10."""
    ref = words(reference)
    share = len(ref & words(answer)) / len(ref) if ref else 0.0
    return 1 + int(9 * share + 0.5)


def judge_reply(prompt: str) -> str:
    """The reference (assistant 1) always gets 10; the model's answer (assistant 2) its overlap score."""
    answers = dict(ANSWER.findall(prompt))
    return f"10 {overlap_score(answers['2'], answers['1'])}\nScored by word overlap with assistant 1."


def completion(body: dict, count: int, text: str) -> dict:
    """A chat.completion response carrying `text`."""
    return {
        "id": f"cmpl-{count}", "object": "chat.completion", "created": 0, "model": body["model"],
        "choices": [{"index": 0, "finish_reason": "stop", "message": {"role": "assistant", "content": text}}],
        "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
    }  # fmt: skip


class LoopbackChatServer:
    """An OpenAI chat-completions endpoint on 127.0.0.1 (a context manager); subclasses answer each request
    body with `respond(body) -> (HTTP status, JSON payload)`, called from the server's threads."""

    def __init__(self):
        self.lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802 (http.server's naming)
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                status, payload = server.respond(body, self.path, self.headers)
                data = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def respond(self, body: dict, path: str, headers) -> tuple[int, dict]:
        """(HTTP status, JSON reply) for one request; each fake judge defines its own."""
        raise NotImplementedError

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/v1"

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=5)


class OverlapJudge(LoopbackChatServer):
    """Serves `judge_reply`; with `fail_after` set, every request after that many answered ones gets HTTP 401
    (the review client does not retry it), as a judge whose key is revoked midway."""

    def __init__(self, fail_after: int | None = None):
        super().__init__()
        self.fail_after = fail_after
        self.answered: list[dict] = []  # request bodies that got a review
        self.refused = 0

    def respond(self, body: dict, path: str, headers) -> tuple[int, dict]:
        with self.lock:
            if self.fail_after is not None and len(self.answered) >= self.fail_after:
                self.refused += 1
                return 401, {"error": {"message": "key revoked", "type": "invalid_request_error"}}
            self.answered.append(body)
            count = len(self.answered)
        return 200, completion(body, count, judge_reply(body["messages"][1]["content"]))
