"""Standard Webhooks signatures (https://www.standardwebhooks.com): the secret is `whsec_` and
the base64 of its key bytes; a message is signed as `v1,<base64 HMAC-SHA256(key, id.timestamp.body)>`."""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
import time
from collections.abc import Mapping

SECRET_PREFIX = "whsec_"


def new_secret() -> str:
    """A fresh signing secret (24 random bytes)."""
    return SECRET_PREFIX + base64.b64encode(secrets.token_bytes(24)).decode()


def _key(secret: str) -> bytes:
    return base64.b64decode(secret.removeprefix(SECRET_PREFIX))


def signature(secret: str, msg_id: str, timestamp: int, body: str) -> str:
    """The `webhook-signature` header value of one message."""
    mac = hmac.new(_key(secret), f"{msg_id}.{timestamp}.{body}".encode(), hashlib.sha256).digest()
    return "v1," + base64.b64encode(mac).decode()


def headers(secret: str, msg_id: str, body: str, timestamp: int | None = None) -> dict[str, str]:
    stamp = int(time.time()) if timestamp is None else timestamp
    return {"webhook-id": msg_id, "webhook-timestamp": str(stamp),
            "webhook-signature": signature(secret, msg_id, stamp, body)}


def verify(secret: str, received: Mapping[str, str], body: str, tolerance_s: int = 300) -> bool:
    """What a receiver does: the timestamp is recent and one of the `v1` signatures matches."""
    try:
        stamp = int(received["webhook-timestamp"])
        expected = signature(secret, received["webhook-id"], stamp, body).split(",", 1)[1]
    except (KeyError, ValueError):
        return False
    if abs(time.time() - stamp) > tolerance_s:
        return False
    return any(part.startswith("v1,") and hmac.compare_digest(part[3:], expected)
               for part in received.get("webhook-signature", "").split())
