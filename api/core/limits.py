"""Abuse limits of the API, as ASGI middleware (outside every route):

* `BodySizeLimit`: a request body over `QLORA_MAX_REQUEST_BODY_BYTES` (1 MiB) is answered 413
  with a `detail` before the route runs, whether the client declared the length or streamed it
  (chunked); the route never sees a truncated body.
* `AuthRateLimit`: `POST /v1/auth/login` and `/v1/auth/signup` are limited per client address
  (every attempt) and per username (failed logins and signup attempts), each a sliding window;
  past either, 429 with `Retry-After` and a `detail`, before any password is hashed.

The limiter keeps its counts in this process: with several API replicas each counts alone (the
limit is per replica); put a shared limit in front (the ingress, or a store such as Redis) for
a deployment of more than one. The client address is the connection's peer, or what uvicorn
takes from `X-Forwarded-For` when run with `--proxy-headers --forwarded-allow-ips=<the proxy>`.
"""

from __future__ import annotations

import json
import math
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


async def _send_json(send: Send, status: int, body: dict[str, Any], headers: dict[str, str] | None = None) -> None:
    payload = json.dumps(body).encode()
    raw = [(b"content-type", b"application/json"), (b"content-length", str(len(payload)).encode())]
    raw += [(k.lower().encode(), v.encode()) for k, v in (headers or {}).items()]
    await send({"type": "http.response.start", "status": status, "headers": raw})
    await send({"type": "http.response.body", "body": payload})


class BodySizeLimit:
    """413 for request bodies over `max_bytes` (declared by `Content-Length`, or counted as
    they stream in)."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    def detail(self, size: int | None = None) -> str:
        got = f" (this one is {size} bytes)" if size is not None else ""
        return (f"Request body too large{got}: the API takes at most {self.max_bytes} bytes per request; "
                "archives go straight to S3 through the pre-signed upload URLs")

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or self.max_bytes <= 0:
            await self.app(scope, receive, send)
            return
        for name, value in scope.get("headers") or ():
            if name == b"content-length":
                try:
                    declared = int(value)
                except ValueError:
                    declared = 0
                if declared > self.max_bytes:
                    await _send_json(send, 413, {"detail": self.detail(declared)}, {"Connection": "close"})
                    return
        received = 0
        started = rejected = False

        async def counted_receive() -> Message:
            nonlocal received, rejected
            if rejected:
                return {"type": "http.disconnect"}
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body") or b"")
                if received > self.max_bytes:
                    # answered here; the route sees a client that went away, and what it sends is dropped
                    rejected = True
                    if not started:
                        await _send_json(send, 413, {"detail": self.detail()}, {"Connection": "close"})
                    return {"type": "http.disconnect"}
            return message

        async def tracked_send(message: Message) -> None:
            nonlocal started
            if rejected:
                return
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        await self.app(scope, counted_receive, tracked_send)


class SlidingWindow:
    """At most `limit` events per key within `window_s` seconds, in this process (thread-safe;
    the least recently used keys are forgotten beyond `max_keys`)."""

    def __init__(self, limit: int, window_s: float, max_keys: int = 100_000,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.limit = limit
        self.window_s = window_s
        self.max_keys = max_keys
        self.clock = clock
        self._events: OrderedDict[str, deque[float]] = OrderedDict()
        self._lock = threading.Lock()

    def retry_after(self, key: str) -> float | None:
        """Seconds until `key` may act again, None if it may now."""
        if self.limit <= 0:
            return None
        now = self.clock()
        with self._lock:
            events = self._events.get(key)
            if events is None:
                return None
            while events and events[0] <= now - self.window_s:
                events.popleft()
            if len(events) < self.limit:
                return None
            return events[0] + self.window_s - now

    def add(self, key: str) -> None:
        if self.limit <= 0:
            return
        now = self.clock()
        with self._lock:
            events = self._events.pop(key, None) or deque()
            events.append(now)
            while len(events) > self.limit:
                events.popleft()
            self._events[key] = events  # most recently used last
            while len(self._events) > self.max_keys:
                self._events.popitem(last=False)


class AuthRateLimit:
    """Per client address and per username limits on login and signup (see the module)."""

    def __init__(self, app: ASGIApp, *, prefix: str, per_address: int, per_username: int, window_s: float) -> None:
        self.app = app
        self.login_path = f"{prefix}/auth/login"
        self.signup_path = f"{prefix}/auth/signup"
        self.window_s = window_s
        self.addresses = SlidingWindow(per_address, window_s)
        self.usernames = SlidingWindow(per_username, window_s)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope.get("path")
        if scope["type"] != "http" or scope.get("method") != "POST" or path not in (self.login_path, self.signup_path):
            await self.app(scope, receive, send)
            return
        # the body is small (BodySizeLimit runs first): read it whole, then replay it to the route
        chunks = []
        while True:
            message = await receive()
            if message["type"] != "http.request":
                return  # the client went away
            chunks.append(message.get("body") or b"")
            if not message.get("more_body"):
                break
        body = b"".join(chunks)
        address = (scope.get("client") or ("unknown",))[0]
        signup = path == self.signup_path
        name = _username(body)
        # signups and failed logins of a name are counted apart (signing up is not a failed login)
        username = f"{'signup' if signup else 'login'}:{name}" if name else None
        waits = []
        if (wait := self.addresses.retry_after(address)) is not None:
            waits.append((wait, f"Too many sign-up and login attempts from your address ({self.addresses.limit} "
                                f"per {self.window_s:g} s)"))
        if username and (wait := self.usernames.retry_after(username)) is not None:
            what = "sign-up attempts" if signup else "failed logins"
            waits.append((wait, f"Too many {what} for this username ({self.usernames.limit} per {self.window_s:g} s)"))
        if waits:
            wait, reason = max(waits)
            seconds = max(1, math.ceil(wait))
            await _send_json(send, 429, {"detail": f"{reason}; retry in {seconds} s"}, {"Retry-After": str(seconds)})
            return
        self.addresses.add(address)
        if signup and username:
            self.usernames.add(username)
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        status = 0

        async def watch(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        await self.app(scope, replay, watch)
        if not signup and username and status == 401:
            self.usernames.add(username)


def _username(body: bytes) -> str | None:
    try:
        value = json.loads(body)
    except ValueError:
        return None
    name = value.get("username") if isinstance(value, dict) else None
    return name.strip().lower()[:128] if isinstance(name, str) and name.strip() else None
