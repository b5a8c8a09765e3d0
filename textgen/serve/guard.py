"""Who may talk to `textgen serve`: the checks that keep other web sites out, and the API key.

Localhost is no trust boundary: any page the user visits can send requests to 127.0.0.1, and
DNS rebinding (a name of the attacker's that resolves to 127.0.0.1) lets it read the answers.
So every request is checked, in this order:

1. `Host` must name this server: 127.0.0.1, localhost, [::1] or the address it was bound to, at
   its real port (any IP address when bound to 0.0.0.0 or ::, since a page can only send an IP
   address as Host from its own origin), or a name given with `--allow-host` (any port): else 421.
2. `Origin`, when a browser sends one, must be the server's own (the playground) or one given with
   `--allow-origin`: else 403. Allowed origins also get CORS headers (Starlette's CORSMiddleware).
3. On the API (`/v1/`): the API key as `Authorization: Bearer KEY` when one was given (401), and
   `Content-Type: application/json` on a POST (415), which no page can send to another site
   without the CORS pre-flight that step 2 refuses.

Starlette's TrustedHostMiddleware does not fit step 1: it drops the port (and cuts an IPv6 address
at its first colon) and answers in plain text; these are small pure ASGI middlewares instead, and
every refusal is a one-line JSON error in the API's shape.
"""

from __future__ import annotations

import hmac
import ipaddress
import re
from dataclasses import dataclass

from starlette.datastructures import Headers
from starlette.middleware import Middleware
from starlette.middleware.cors import CORSMiddleware
from starlette.responses import JSONResponse

from textgen.config import ServeConfig
from textgen.serve.completions import error_body

LOOPBACK_NAMES = ("127.0.0.1", "localhost", "::1")
WILDCARDS = ("0.0.0.0", "::", "")
HOST_HEADER = re.compile(r"(\[[0-9a-f:.]+\]|[a-z0-9._-]+)(?::(\d{1,5}))?")  # name[:port], [v6][:port]


def is_ip(name: str) -> bool:
    """Whether `name` is an IPv4 or IPv6 address (not a host name)."""
    try:
        ipaddress.ip_address(name)
    except ValueError:
        return False
    return True


def is_loopback(host: str) -> bool:
    """Whether binding `host` keeps the server to this machine."""
    return host.lower() == "localhost" or (is_ip(host) and ipaddress.ip_address(host).is_loopback)


@dataclass(frozen=True)
class Hosts:
    """The Host header values a server answers to.

    Attributes:
        names: names answered at the server's port (lower case, IPv6 without brackets).
        port: the port it listens on (the real one when started with --port 0).
        any_address: bound to every address: any IP address at `port` is answered too.
        extra: `--allow-host` names, answered at any port ("*": every name).

    Example:
        >>> hosts = Hosts.of("127.0.0.1", 8000, ())
        >>> hosts.allows("localhost:8000"), hosts.allows("attacker.example:8000")
        (True, False)
    """

    names: frozenset
    port: int
    any_address: bool
    extra: frozenset

    @classmethod
    def of(cls, bound: str, port: int, allow_host) -> "Hosts":
        """The names of a server bound to `bound`:`port` with the `--allow-host` names given."""
        bound = bound.lower().strip("[]")
        return cls(frozenset({*LOOPBACK_NAMES, bound}), port, bound in WILDCARDS,
                   frozenset(name.lower().strip("[]") for name in allow_host))

    def allows(self, header: str) -> bool:
        """Whether a request with this Host header is addressed to this server."""
        match = HOST_HEADER.fullmatch(header.lower())
        if not match:
            return False
        name, port = match[1].strip("[]"), int(match[2] or 80)
        if "*" in self.extra or name in self.extra:
            return True
        return port == self.port and (name in self.names or (self.any_address and is_ip(name)))


def refusal(status: int, message: str, kind: str, code: str, headers: dict | None = None):
    """A JSON error response in the API's shape."""
    return JSONResponse(error_body(message, kind, None, code), status, headers=headers)


class HostOriginGuard:
    """ASGI middleware: refuse requests not addressed to this server (421) and requests from web
    pages of other origins (403), before anything else reads them."""

    def __init__(self, app, hosts: Hosts, origins):
        self.app, self.hosts = app, hosts
        self.origins = {origin.lower().rstrip("/") for origin in origins}

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = Headers(scope=scope)
        host, origin = headers.get("host", ""), headers.get("origin")
        if not self.hosts.allows(host):
            response = refusal(421, f"this server does not answer to the host {host[:100]!r}; address "
                               f"it as http://127.0.0.1:{self.hosts.port}/, or start it with "
                               "--allow-host NAME", "invalid_request_error", "host_not_allowed")
        elif origin is not None and not self.origin_allowed(origin, host):
            response = refusal(403, f"requests from web pages of {origin[:100]!r} are refused; start "
                               "the server with --allow-origin ORIGIN to let that site call it",
                               "permission_error", "origin_not_allowed")
        else:
            return await self.app(scope, receive, send)
        await response(scope, receive, send)

    def origin_allowed(self, origin: str, host: str) -> bool:
        """The server's own origin (scheme://Host), or one given with --allow-origin."""
        scheme, sep, rest = origin.lower().partition("://")
        own = sep and scheme in ("http", "https") and rest == host.lower()
        return bool(own) or "*" in self.origins or origin.lower().rstrip("/") in self.origins


class ApiGuard:
    """ASGI middleware for the API (paths under /v1/): the API key, when one was given (401),
    and JSON request bodies (415). CORS pre-flights (OPTIONS) pass: they carry neither."""

    def __init__(self, app, api_key: str | None):
        self.app = app
        self.expected = None if api_key is None else f"Bearer {api_key}".encode()

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or not scope["path"].startswith("/v1/") or scope["method"] == "OPTIONS":
            return await self.app(scope, receive, send)
        headers = Headers(scope=scope)
        given = headers.get("authorization", "").encode()
        media_type = headers.get("content-type", "").split(";")[0].strip().lower()
        if self.expected is not None and not hmac.compare_digest(given, self.expected):
            response = refusal(401, "this server needs an API key: send 'Authorization: Bearer KEY' "
                               "with the key it was started with (--api-key or TEXTGEN_API_KEY)",
                               "invalid_request_error", "invalid_api_key", {"WWW-Authenticate": "Bearer"})
        elif scope["method"] == "POST" and media_type != "application/json":
            response = refusal(415, "the request body must be JSON sent with 'Content-Type: "
                               f"application/json' (got {media_type[:60] or 'none'!r})",
                               "invalid_request_error", "unsupported_media_type")
        else:
            return await self.app(scope, receive, send)
        await response(scope, receive, send)


def guards(config: ServeConfig, port: int) -> list[Middleware]:
    """The middleware stack, outermost first, for a server started with `config` on `port`."""
    stack = [Middleware(HostOriginGuard, hosts=Hosts.of(config.host, port, config.allow_host),
                        origins=config.allow_origin)]
    if config.allow_origin:  # pre-flights and response headers for the pages of those origins
        stack.append(Middleware(CORSMiddleware, allow_origins=list(config.allow_origin),
                                allow_methods=["GET", "POST"],
                                allow_headers=["Authorization", "Content-Type"]))
    return stack + [Middleware(ApiGuard, api_key=config.api_key)]
