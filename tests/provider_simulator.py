"""An OpenAI-compatible chat server on loopback whose latency and faults a test controls.

It stands in for a remote provider (the kind of failures one cannot order from a real
one on demand: 429 with Retry-After, 5xx, stalls). The real local model is used
wherever a test is about real generation.
"""

from __future__ import annotations

import asyncio
import json
import socket
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route


@dataclass
class Behaviour:
    delay_s: float = 0.0  # before the first token
    status: int = 200  # answer this status instead (429, 500, ...)
    retry_after_s: int | None = None
    tokens: int = 5
    split_usage: bool = False  # stream usage in parts, as some providers do: prompt tokens first, output last
    calls: int = 0
    started: list[float] = field(default_factory=list)
    authorization: str = ""  # the last request's Authorization header
    # What to answer instead of numbered words: {"content": str} and/or {"tool_calls": [{"name", "arguments"}]},
    # or a function of the request body returning that. Streamed in pieces (tool-call arguments split in two).
    reply: Any = None
    bodies: list[dict[str, Any]] = field(default_factory=list)  # every request body, in order


class ProviderSimulator:
    def __init__(self, name: str) -> None:
        self.name = name
        self.behaviour = Behaviour()
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            self.port = sock.getsockname()[1]
        self.base_url = f"http://127.0.0.1:{self.port}/v1"
        app = Starlette(routes=[Route("/v1/chat/completions", self._chat, methods=["POST"]),
                                Route("/v1/models", self._models)])  # fmt: skip
        self._server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning"))
        self._thread = threading.Thread(target=self._server.run, daemon=True)
        self._thread.start()
        while not self._server.started:
            time.sleep(0.01)

    async def _models(self, _: Request) -> Response:
        return JSONResponse({"data": [{"id": self.name}]})

    async def _chat(self, request: Request) -> Response:
        body: dict[str, Any] = await request.json()
        b = self.behaviour
        b.calls += 1
        b.started.append(time.monotonic())
        b.authorization = request.headers.get("authorization", "")
        b.bodies.append(body)
        if b.status != 200:
            headers = {"Retry-After": str(b.retry_after_s)} if b.retry_after_s is not None else {}
            return JSONResponse({"error": {"message": f"simulated {b.status}"}}, b.status, headers=headers)
        await asyncio.sleep(b.delay_s)
        if b.reply is not None:
            reply = b.reply(body) if callable(b.reply) else b.reply
            return StreamingResponse(self._scripted(reply), media_type="text/event-stream")
        words = [f"{self.name}-word{i} " for i in range(b.tokens)]
        if not body.get("stream"):
            return JSONResponse(_completion(self.name, "".join(words)))
        return StreamingResponse(self._events(words), media_type="text/event-stream")

    async def _events(self, words: list[str]) -> Any:
        split = self.behaviour.split_usage
        for i, word in enumerate(words):
            delta = {"index": 0, "delta": {"content": word}, "finish_reason": None}
            chunk: dict[str, Any] = {"id": "x", "object": "chat.completion.chunk", "created": 0, "model": self.name,
                                     "choices": [delta]}  # fmt: skip
            if split and i == 0:
                chunk["usage"] = {"prompt_tokens": 7, "completion_tokens": 0, "total_tokens": 7}
            yield f"data: {json.dumps(chunk)}\n\n"
        if split:
            usage = {"prompt_tokens": 0, "completion_tokens": len(words), "total_tokens": len(words)}
            last = {"id": "x", "object": "chat.completion.chunk", "created": 0, "model": self.name, "choices": [],
                    "usage": usage}  # fmt: skip
            yield f"data: {json.dumps(last)}\n\n"
        yield "data: [DONE]\n\n"

    async def _scripted(self, reply: dict[str, Any]) -> Any:
        def chunk(delta: dict[str, Any], finish: str | None = None) -> str:
            data = {"id": "x", "object": "chat.completion.chunk", "created": 0, "model": self.name,
                    "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}  # fmt: skip
            return f"data: {json.dumps(data)}\n\n"

        text = reply.get("content") or ""
        for piece in [text[: len(text) // 2], text[len(text) // 2 :]] if text else []:
            yield chunk({"content": piece})
        for i, call in enumerate(reply.get("tool_calls") or []):
            args = json.dumps(call["arguments"])
            yield chunk({"tool_calls": [{"index": i, "id": f"call_{i}", "type": "function",
                                         "function": {"name": call["name"], "arguments": args[:5]}}]})  # fmt: skip
            yield chunk({"tool_calls": [{"index": i, "function": {"arguments": args[5:]}}]})
        yield chunk({}, "tool_calls" if reply.get("tool_calls") else "stop")
        usage = {"prompt_tokens": 9, "completion_tokens": 4, "total_tokens": 13}
        last = {"id": "x", "object": "chat.completion.chunk", "created": 0, "model": self.name, "choices": [],
                "usage": usage}  # fmt: skip
        yield f"data: {json.dumps(last)}\n\n"
        yield "data: [DONE]\n\n"

    def close(self) -> None:
        self._server.should_exit = True
        self._thread.join(5)


def _completion(model: str, text: str) -> dict[str, Any]:
    return {"id": "x", "object": "chat.completion", "created": 0, "model": model,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 5, "completion_tokens": 5, "total_tokens": 10}}  # fmt: skip
