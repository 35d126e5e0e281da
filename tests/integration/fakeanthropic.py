"""A loopback stand-in for api.anthropic.com, enough for `claude -p` to get its answer.

``POST /v1/messages`` with the real key (``REAL_KEY``; else a 401, as the API gives) answers
with a one-text-block message (streamed as server-sent events when the request asks for
``stream``); ``/api/hello`` answers 200 (claude's connectivity check); anything else gets a 404
in the API's error shape. Every request is recorded whole (headers and body) in
``FakeApi.requests``, so a test can see which key reached the API and what else claude asked.
Serve it with ``fakeapi.start(HOSTS, dir, Handler)`` (a subclass setting ``tool`` makes claude
call one of its tools, see ``reply_for``).
"""

from __future__ import annotations

import http.server
import json
import secrets

from tests.integration.fakeapi import FakeApi

HOSTS = ["api.anthropic.com"]
REAL_KEY = "sk-ant-api03-" + secrets.token_urlsafe(70)  # the host's ANTHROPIC_API_KEY in a test
ANSWER = "pong from the fake Anthropic API"


def _sse(events: list[dict]) -> bytes:
    return b"".join(f"event: {e['type']}\ndata: {json.dumps(e)}\n\n".encode() for e in events)


Tool = tuple[str, dict]  # a tool's name and input, e.g. ("Bash", {"command": "ls"})


def reply_for(request: dict, tool: Tool | None) -> tuple[list[dict], str]:
    """The content blocks and stop reason of the answer.

    With ``tool`` set, a request offering that tool whose conversation holds no tool result
    yet is answered by a call of it; everything else (the follow-up carrying the result,
    claude's side requests) gets the text ``ANSWER``.
    """
    tools = {t.get("name") for t in request.get("tools") or [] if isinstance(t, dict)}
    answered = any(
        isinstance(block, dict) and block.get("type") == "tool_result"
        for m in request.get("messages") or []
        if isinstance(m, dict) and isinstance(m.get("content"), list)
        for block in m["content"]
    )
    if tool and tool[0] in tools and not answered:
        block = {"type": "tool_use", "id": "toolu_" + secrets.token_hex(12), "name": tool[0]}
        return [{**block, "input": tool[1]}], "tool_use"
    return [{"type": "text", "text": ANSWER}], "end_turn"


def message(model: str, blocks: list[dict], stop: str) -> dict:
    return {
        "id": "msg_" + secrets.token_hex(12),
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": blocks,
        "stop_reason": stop,
        "stop_sequence": None,
        "usage": {"input_tokens": 3, "output_tokens": 7},
    }


def stream(model: str, blocks: list[dict], stop: str) -> bytes:
    start = {**message(model, [], stop), "stop_reason": None}
    events: list[dict] = [{"type": "message_start", "message": start}]
    for i, block in enumerate(blocks):
        if block["type"] == "text":
            empty, delta = {**block, "text": ""}, {"type": "text_delta", "text": block["text"]}
        else:
            empty = {**block, "input": {}}
            delta = {"type": "input_json_delta", "partial_json": json.dumps(block["input"])}
        events += [
            {"type": "content_block_start", "index": i, "content_block": empty},
            {"type": "content_block_delta", "index": i, "delta": delta},
            {"type": "content_block_stop", "index": i},
        ]
    events += [
        {"type": "message_delta", "delta": {"stop_reason": stop, "stop_sequence": None},
         "usage": {"output_tokens": 7}},
        {"type": "message_stop"},
    ]  # fmt: skip
    return _sse(events)


class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    api: FakeApi
    tool: Tool | None = None  # see reply_for

    def do_GET(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        self.api.requests.append(
            {
                "method": self.command,
                "path": self.path,
                "headers": {k.lower(): v for k, v in self.headers.items()},
                "body": body.decode(errors="replace"),
            }
        )
        key = self.headers.get("x-api-key") or self.headers.get("Authorization")
        self.api.seen.append((self.headers.get("Host", ""), self.command, self.path, key))
        path = self.path.split("?", 1)[0]
        if path == "/api/hello":  # the connectivity check of claude's first (onboarding) run
            self._reply(200, b'{"message":"hello"}', "application/json")
            return
        if self.command == "POST" and path == "/v1/messages" and not self._authorised():
            error = {"type": "authentication_error", "message": "invalid x-api-key"}
            body = json.dumps({"type": "error", "error": error}).encode()
            self._reply(401, body, "application/json")
            return
        if self.command == "POST" and path == "/v1/messages":
            try:
                request = json.loads(body or b"{}")
            except ValueError:
                request = {}
            model = str(request.get("model", "claude-fake"))
            blocks, stop = reply_for(request, self.tool)
            if request.get("stream"):
                self._reply(200, stream(model, blocks, stop), "text/event-stream")
            else:
                answer = json.dumps(message(model, blocks, stop)).encode()
                self._reply(200, answer, "application/json")
            return
        error = {"type": "error", "error": {"type": "not_found_error", "message": path}}
        self._reply(404, json.dumps(error).encode(), "application/json")

    do_HEAD = do_POST = do_GET

    def _authorised(self) -> bool:
        """Like the real API: the real key in x-api-key (or as a bearer token), else 401."""
        bearer = self.headers.get("Authorization", "").removeprefix("Bearer ")
        return REAL_KEY in (self.headers.get("x-api-key"), bearer)

    def _reply(self, status: int, body: bytes, ctype: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("request-id", "req_" + secrets.token_hex(8))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass
