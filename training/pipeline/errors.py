"""How a job's step fails: for good (`JobFailed`: a retry would fail the same way) or not."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator

from training import s3

log = logging.getLogger(__name__)


class JobFailed(Exception):
    """The job cannot go on and a retry would not help (bad input, a stopped or failed
    training, ...). The message says why in words a user can act on; the DAG fails the task
    with it and without retry."""


@contextlib.contextmanager
def s3_errors(what: str) -> Iterator[None]:
    """Lets transient S3 errors through unchanged (the task retries them) and turns any other
    S3 failure into `JobFailed("S3 error while {what}: ...")`."""
    try:
        yield
    except JobFailed:
        raise
    except Exception as exc:
        if s3.is_transient(exc):
            log.warning("transient S3 error while %s: %s (will retry)", what, exc)
            raise
        raise JobFailed(f"S3 error while {what}: {exc}") from exc
