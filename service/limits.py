"""A pure ASGI middleware that caps request bodies while they are read (chunked uploads included), and holds
each body's bytes against a budget shared by every request (``DEDE_UPLOAD_BUDGET_BYTES``).

A body is reserved at twice its declared length (the raw bytes and the parsed upload that a multipart form or a
V2 request makes of them), or twice the body limit when no length is declared, when the application first reads
it, and given back when the request is answered. A request that would exceed the budget waits for others to
finish, up to the request timeout, then gets 503 with Retry-After. Requests that never read a body (GET) reserve
nothing."""

from __future__ import annotations

from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.decoding import ByteBudget
from service.errors import PayloadTooLarge


class BodySizeLimit:
    def __init__(self, app: ASGIApp, max_bytes: int, budget: ByteBudget | None = None,
                 timeout_s: float = 30.0) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.budget, self.timeout_s = budget, timeout_s

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = self.max_bytes
        headers: dict[bytes, bytes] = dict(scope.get("headers") or [])
        declared = headers.get(b"content-length")
        length = int(declared) if declared is not None and declared.isdigit() else None
        too_big = f"request body exceeds the limit of {limit} bytes"
        if length is not None and length > limit:
            scope.setdefault("state", {})["body_error"] = too_big
        received, reserved = 0, 0

        async def limited_receive() -> Message:
            nonlocal received, reserved
            if self.budget is not None and not reserved:
                want = 2 * (length if length is not None else limit)
                await self.budget.acquire(want, self.timeout_s)
                reserved = want
            message: dict[str, Any] = dict(await receive())
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    raise PayloadTooLarge(too_big)
            return message

        if scope.get("state", {}).get("body_error"):

            async def refuse() -> Message:
                raise PayloadTooLarge(too_big)

            await self.app(scope, refuse, send)
            return
        try:
            await self.app(scope, limited_receive, send)
        finally:
            if reserved and self.budget is not None:
                self.budget.release(reserved)
