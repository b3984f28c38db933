"""A pure ASGI middleware that caps request bodies while they are read (chunked uploads included)."""

from __future__ import annotations

from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.errors import PayloadTooLarge


class BodySizeLimit:
    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = self.max_bytes
        headers: dict[bytes, bytes] = dict(scope.get("headers") or [])
        declared = headers.get(b"content-length")
        too_big = f"request body exceeds the limit of {limit} bytes"
        if declared is not None and declared.isdigit() and int(declared) > limit:
            scope.setdefault("state", {})["body_error"] = too_big
        received = 0

        async def limited_receive() -> Message:
            nonlocal received
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
        await self.app(scope, limited_receive, send)
