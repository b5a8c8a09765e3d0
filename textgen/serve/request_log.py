"""`textgen serve --log-requests`: one line per HTTP request, written when its response ends.

    2026-12-07T00:18:41Z POST /v1/completions 200 300 chars 152 ms

The time the request arrived (UTC), its method and path (as sent, percent-encoded, so a line can
never be split), the status answered ("-" if the client left before any), the characters generated
for it (0 for requests that generate none) and the milliseconds until its response ended. A route
that generates text sets `request.state.characters` to a function returning how many so far.

Hand-written (a few lines of ASGI) because uvicorn's access log has neither the characters nor the
duration.
"""

from __future__ import annotations

import time
from typing import Callable


class RequestLog:
    """ASGI middleware that calls `log` with one line per HTTP request (format above)."""

    def __init__(self, app, log: Callable[[str], None]):
        self.app, self.log = app, log

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        arrived, start, status = time.gmtime(), time.perf_counter(), "-"
        state = scope.setdefault("state", {})

        async def sending(message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, sending)
        except Exception:
            status = 500 if status == "-" else status  # Starlette's outermost middleware answers it
            raise
        finally:
            characters = state.get("characters")
            path = scope.get("raw_path") or scope["path"].encode()
            self.log(f"{time.strftime('%Y-%m-%dT%H:%M:%SZ', arrived)} {scope['method']} "
                     f"{path.decode('ascii', 'backslashreplace')} {status} "
                     f"{characters() if characters else 0} chars "
                     f"{(time.perf_counter() - start) * 1000:.0f} ms")
