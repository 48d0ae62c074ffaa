"""Password hashing (argon2 via pwdlib) and access tokens (HS256 JWT via pyjwt)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import jwt
from pwdlib import PasswordHash
from pwdlib.hashers.argon2 import Argon2Hasher

from api.core.config import Settings

ALGORITHM = "HS256"

_password_hash = PasswordHash((Argon2Hasher(),))
# verified against when the user does not exist, so that timing does not reveal usernames
_DUMMY_HASH = _password_hash.hash("dummy-password-for-timing")


class InvalidToken(Exception):
    """The token is missing a claim, expired, tampered with or not HS256."""


def hash_password(password: str) -> str:
    return _password_hash.hash(password)


def verify_password(password: str, hashed: str | None) -> bool:
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
