"""Webhook signing secrets at rest: the database holds each endpoint's `whsec_...` secret
encrypted with Fernet (AES-128-CBC + HMAC-SHA256, `cryptography`), never in clear; the API
decrypts it only to sign a delivery. The secret itself is shown once, when the endpoint is
created.

The key comes from `QLORA_WEBHOOK_SECRET_KEY` (`settings.webhook_secret_key`): any string of at
least 32 characters, from which the Fernet key is derived by SHA-256. Several keys,
comma-separated, rotate it: the first encrypts, each one decrypts (re-encrypting old rows is not
needed; a row is readable while its key is listed). Unset, development derives one from the JWT
secret; outside development the API does not start without it (`api.core.config`).
"""

from __future__ import annotations

import base64
import hashlib
from functools import lru_cache
from typing import TYPE_CHECKING

from cryptography.fernet import Fernet, InvalidToken, MultiFernet

if TYPE_CHECKING:
    from api.core.config import Settings

#: what a secret stored before encryption (migration 0008) starts with
CLEAR_PREFIX = "whsec_"
_LABEL = b"qlora-webhook-secrets\x00"


class SecretUnreadable(Exception):
    """A stored secret that none of the configured keys decrypts; the message says what to do."""


def key_material(settings: Settings) -> tuple[str, ...]:
    """The configured keys, newest first (development without one: derived from the JWT secret)."""
    if settings.webhook_secret_key:
        return tuple(k.strip() for k in settings.webhook_secret_key.split(",") if k.strip())
    return (f"derived-from-jwt-secret:{settings.jwt_secret}",)


@lru_cache(maxsize=8)
def _fernet(material: tuple[str, ...]) -> MultiFernet:
    return MultiFernet([Fernet(base64.urlsafe_b64encode(hashlib.sha256(_LABEL + k.encode()).digest()))
                        for k in material])


def seal(secret: str, settings: Settings) -> str:
    """The value stored for `secret`: a Fernet token (`gAAAAA...`)."""
    return _fernet(key_material(settings)).encrypt(secret.encode()).decode()


def unseal(stored: str, settings: Settings) -> str:
    """The secret of a stored value; `SecretUnreadable` when no configured key opens it. A value
    stored in clear before encryption (not migrated yet) is returned as it is."""
    if stored.startswith(CLEAR_PREFIX):
        return stored
    try:
        return _fernet(key_material(settings)).decrypt(stored.encode()).decode()
    except (InvalidToken, ValueError):
        raise SecretUnreadable(
            "the endpoint's signing secret cannot be decrypted with QLORA_WEBHOOK_SECRET_KEY (was the key "
            "changed? list the old key after the new one, comma-separated)") from None
