"""`Idempotency-Key`: the first answer to a request is kept with a hash of its body for
`IDEMPOTENCY_WINDOW`; the same key with the same body gets that answer again, with another body
a 409. The caller holds its user's row lock (`lock_user`) while it looks a key up and records
one, so two requests with one key cannot both do the work."""

from __future__ import annotations

import hashlib
import json
import re
from typing import Any

from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from api.models import IDEMPOTENCY_WINDOW, IdempotencyKey, User
from api.models.base import utcnow
from api.services.errors import Conflict, InvalidInput

#: printable ASCII without spaces, as HTTP header values and logs like them
_KEY = re.compile(r"[\x21-\x7e]{1,255}")


def check_key(key: str | None) -> str | None:
    """The header's value, or None without one; 400 for a value no client should send."""
    if key is None:
        return None
    if not _KEY.fullmatch(key):
        raise InvalidInput("Idempotency-Key must be 1 to 255 printable ASCII characters without spaces (a UUID is "
                           "a good key); send a new key for each new request and the same key to retry one")
    return key


def body_hash(body: Any) -> str:
    """SHA-256 of the canonical JSON of a request body."""
    return hashlib.sha256(json.dumps(body, sort_keys=True, separators=(",", ":"), default=str).encode()).hexdigest()


def lock_user(session: Session, user: User) -> None:
    """Locks the user's row until the transaction ends (PostgreSQL: `SELECT ... FOR UPDATE`;
    SQLite serialises writers by itself): the per-user checks after it (a key's first use, the
    active jobs quota) see every earlier request of this user that committed."""
    session.execute(select(User.id).where(User.id == user.id).with_for_update())


def replay(session: Session, user: User, scope: str, key: str, digest: str) -> IdempotencyKey | None:
    """The first answer recorded for `key` (None if the key is new, or older than the window,
    in which case it is forgotten). 409 when it came with another body."""
    row = session.get(IdempotencyKey, (user.id, scope, key))
    if row is None:
        return None
    if row.created_at < utcnow() - IDEMPOTENCY_WINDOW:
        session.delete(row)
        session.flush()
        return None
    if row.request_hash != digest:
        raise Conflict(f"Idempotency-Key {key!r} was already used at {row.created_at:%Y-%m-%dT%H:%M:%SZ} for "
                       f"another request body ({scope}); retry with the same body to get that answer, or use a new "
                       "key for a new request")
    return row


def remember(session: Session, user: User, scope: str, key: str, digest: str, status: int, body: dict[str, Any],
             resource_id: str | None) -> IdempotencyKey:
    row = IdempotencyKey(owner_id=user.id, scope=scope, key=key, request_hash=digest, resource_id=resource_id,
                         response_status=status, response_body=body)
    session.add(row)
    return row


def forget_resource(session: Session, resource_id: str) -> None:
    """Drops the keys that answered with `resource_id` (its creation was undone)."""
    session.execute(delete(IdempotencyKey).where(IdempotencyKey.resource_id == resource_id))


def purge_expired(session: Session) -> int:
    """Deletes keys past the window (the reconcile pass)."""
    result = session.execute(delete(IdempotencyKey).where(IdempotencyKey.created_at < utcnow() - IDEMPOTENCY_WINDOW))
    return result.rowcount or 0
