"""Password hashing (argon2 via pwdlib, at most `password_hash_concurrency` at once) and access
tokens (HS256 JWT via pyjwt)."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import jwt
from fastapi import HTTPException
from pwdlib import PasswordHash
from pwdlib.hashers.argon2 import Argon2Hasher

from api.core.config import Settings

ALGORITHM = "HS256"

_password_hash = PasswordHash((Argon2Hasher(),))
# verified against when the user does not exist, so that timing does not reveal usernames
_DUMMY_HASH = _password_hash.hash("dummy-password-for-timing")


class InvalidToken(Exception):
    """The token is missing a claim, expired, tampered with or not HS256."""


class _HashSlots:
    """Each Argon2 hash takes 64 MiB and a core for a while: at most `concurrency` run at once in
    this process; a caller waits up to `wait_s` for a slot, then gets 503 with Retry-After."""

    def __init__(self, concurrency: int = 2, wait_s: float = 10.0) -> None:
        self.configure(concurrency, wait_s)

    def configure(self, concurrency: int, wait_s: float) -> None:
        self.concurrency = concurrency
        self.wait_s = wait_s
        self._slots = threading.BoundedSemaphore(concurrency)
        self.busy_peak = 0
        self._busy = 0
        self._count_lock = threading.Lock()

    @contextlib.contextmanager
    def slot(self) -> Iterator[None]:
        slots = self._slots
        if not slots.acquire(timeout=self.wait_s):
            raise HTTPException(503, detail="The service is busy checking passwords; retry in a few seconds",
                                headers={"Retry-After": "5"})
        with self._count_lock:
            self._busy += 1
            self.busy_peak = max(self.busy_peak, self._busy)
        try:
            yield
        finally:
            with self._count_lock:
                self._busy -= 1
            slots.release()


#: the process-wide hashing slots (`create_app` sizes them from the settings)
hash_slots = _HashSlots()


def hash_password(password: str) -> str:
    with hash_slots.slot():
        return _password_hash.hash(password)


def verify_password(password: str, hashed: str | None) -> bool:
    with hash_slots.slot():
        if hashed is None:
            _password_hash.verify(password, _DUMMY_HASH)
            return False
        return _password_hash.verify(password, hashed)


def create_access_token(subject: str, settings: Settings, expires_in: timedelta | None = None) -> str:
    now = datetime.now(UTC)
    expires = now + (expires_in if expires_in is not None else timedelta(minutes=settings.access_token_expire_minutes))
    payload = {"sub": subject, "iat": now, "exp": expires}
    return jwt.encode(payload, settings.jwt_secret, algorithm=ALGORITHM)


def decode_access_token(token: str, settings: Settings) -> str:
    """Returns the subject of a valid token; raises InvalidToken with the reason otherwise."""
    try:
        payload = jwt.decode(
            token,
            settings.jwt_secret,
            algorithms=[ALGORITHM],
            options={"require": ["exp", "iat", "sub"]},
        )
    except jwt.ExpiredSignatureError:
        raise InvalidToken("Token has expired") from None
    except jwt.InvalidAlgorithmError:
        raise InvalidToken("Token algorithm is not allowed") from None
    except jwt.InvalidSignatureError:
        raise InvalidToken("Token signature is invalid") from None
    except jwt.MissingRequiredClaimError as exc:
        raise InvalidToken(f"Token is missing the {exc.claim!r} claim") from None
    except jwt.PyJWTError:
        raise InvalidToken("Token is malformed") from None
    subject = payload.get("sub")
    if not isinstance(subject, str) or not subject:
        raise InvalidToken("Token subject is invalid")
    return subject
