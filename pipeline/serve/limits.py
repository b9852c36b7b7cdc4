"""The guards in front of the endpoints, as plain ASGI middleware: a bearer token, a body size cap and a
cap on requests answered at once. Each answers with a short JSON error of its own and never lets a
refused request reach the model.

Order (outermost first): token, then concurrency, then body size, so that a request without the
token costs nothing, and an oversize body is refused before it is read whole.
"""

import hmac
import json

PROBES = ("/healthz", "/readyz")  # for load balancers and probes: they say nothing about the model
# Static pages a browser loads without headers; they hold no model data, and the page sends the token
# it is given with each request of its own.
PUBLIC_PATHS = (*PROBES, "/", "/docs", "/openapi.json")


async def send_json(send, status, body, headers=()):
    data = json.dumps(body).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(data)).encode()),
                            *headers]})
    await send({"type": "http.response.body", "body": data})


class BearerAuth:
    """Every path but the public ones needs `Authorization: Bearer <token>` (compared in constant time)."""

    def __init__(self, app, token):
        self.app = app
        self.expected = f"Bearer {token}".encode()

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope["path"] in PUBLIC_PATHS:
            return await self.app(scope, receive, send)
        given = dict(scope["headers"]).get(b"authorization", b"")
        if not hmac.compare_digest(given, self.expected):
            return await send_json(send, 401, {"error": "missing or wrong token: send the header "
                                                        "'Authorization: Bearer <token>'"},
                                   [(b"www-authenticate", b"Bearer")])
        return await self.app(scope, receive, send)


class BodyLimit:
    """Bodies over `max_bytes` get 413: at once from Content-Length, else as soon as the bytes read pass it."""

    def __init__(self, app, max_bytes):
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        length = dict(scope["headers"]).get(b"content-length")
        if length is not None and (not length.isdigit() or int(length) > self.max_bytes):
            return await self._refuse(send)
        body, more = [], True
        size = 0
        while more:  # read whole (at most max_bytes), then replay it to the app
            message = await receive()
            if message["type"] == "http.disconnect":
                return None
            size += len(message.get("body", b""))
            if size > self.max_bytes:
                return await self._refuse(send)
            body.append(message.get("body", b""))
            more = message.get("more_body", False)
        replayed = False

        async def replay():
            nonlocal replayed
            if replayed:
                return await receive()  # after the body: wait for the disconnect, as the server would
            replayed = True
            return {"type": "http.request", "body": b"".join(body), "more_body": False}

        return await self.app(scope, replay, send)

    async def _refuse(self, send):
        limit = self.max_bytes / 2**20
        return await send_json(send, 413, {"error": f"request body over {limit:g} MB; send fewer or smaller "
                                                    "images per request (the server's --max-body-mb)"})


class ConcurrencyLimit:
    """More than `limit` requests under way: 503 with Retry-After, at once, instead of a growing queue."""

    def __init__(self, app, limit, retry_after_s=1):
        self.app = app
        self.limit = limit
        self.retry_after = str(retry_after_s).encode()
        self.active = 0

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope["path"] in PROBES:
            return await self.app(scope, receive, send)
        if self.active >= self.limit:
            return await send_json(send, 503, {"error": f"server busy ({self.limit} requests under way); retry "
                                                        "after the Retry-After seconds"},
                                   [(b"retry-after", self.retry_after)])
        self.active += 1
        try:
            return await self.app(scope, receive, send)
        finally:
            self.active -= 1
