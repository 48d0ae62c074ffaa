"""Typed dependencies of the routers (the app's state holds the shared clients)."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from typing import Annotated, NamedTuple

from fastapi import Depends, Header, HTTPException, Query, Request, Response, status
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session

from api.clients.airflow import AirflowApi
from api.clients.mlflow import MlflowApi
from api.clients.s3 import S3Storage
from api.core.config import Settings
from api.core.security import InvalidToken, decode_access_token
from api.models import User
from api.schemas.common import ErrorResponse
from api.services.trainings.context import TrainingContext
from api.services.trainings.live_state import LiveState

log = logging.getLogger(__name__)


def get_settings_dep(request: Request) -> Settings:
    return request.app.state.settings


def get_session(request: Request) -> Iterator[Session]:
    session = request.app.state.sessionmaker()
    try:
        yield session
    finally:
        close_session(session)


def close_session(session: Session) -> None:
    """Closes a request's session. When the database went away mid-request (a restart), closing
    rolls back on a dead connection and raises; that runs after the answer (a 503) was sent, so
    the error escaped to uvicorn, which logged it and dropped the client's connection ("connection
    reset by peer"): the connection is discarded instead."""
    try:
        session.close()
    except DBAPIError as exc:
        log.info("database connection lost before the session closed (discarded): %s", getattr(exc, "orig", exc))
        with contextlib.suppress(Exception):
            session.invalidate()


def get_s3(request: Request) -> S3Storage:
    return request.app.state.s3


def get_airflow(request: Request) -> AirflowApi:
    return request.app.state.airflow


def get_mlflow(request: Request) -> MlflowApi | None:
    """The MLflow reader the app made at start-up (None without a tracking server)."""
    return request.app.state.mlflow


def get_training_live(request: Request) -> LiveState:
    """The process-wide caches of the live job state read on the list path."""
    return request.app.state.training_live


SettingsDep = Annotated[Settings, Depends(get_settings_dep)]
SessionDep = Annotated[Session, Depends(get_session)]
S3Dep = Annotated[S3Storage, Depends(get_s3)]
AirflowDep = Annotated[AirflowApi, Depends(get_airflow)]
MlflowDep = Annotated[MlflowApi | None, Depends(get_mlflow)]
TrainingLiveDep = Annotated[LiveState, Depends(get_training_live)]


def get_trainings(
    session: SessionDep,
    s3: S3Dep,
    airflow: AirflowDep,
    settings: SettingsDep,
    mlflow: MlflowDep,
    live: TrainingLiveDep,
) -> TrainingContext:
    """What the training-job operations of one request work with (`api.services.trainings`)."""
    return TrainingContext(session, s3, airflow, mlflow, settings, live)  # type: ignore[arg-type]


TrainingsDep = Annotated[TrainingContext, Depends(get_trainings)]


class Idempotency:
    """A create request's `Idempotency-Key` header (`key`, None without one); `answered(replayed)`
    marks an answer that repeats the key's first answer with `Idempotent-Replayed: true`."""

    def __init__(self, key: str | None, response: Response) -> None:
        self.key = key
        self._response = response

    def answered(self, replayed: bool) -> None:
        if replayed:
            self._response.headers["Idempotent-Replayed"] = "true"


def get_idempotency(
    response: Response,
    idempotency_key: Annotated[str | None, Header(
        alias="Idempotency-Key", description="Any unique string of yours (a UUID) naming this request; retries of "
        "the request send the same one.")] = None,
) -> Idempotency:
    return Idempotency(idempotency_key, response)


IdempotencyDep = Annotated[Idempotency, Depends(get_idempotency)]


_bearer = HTTPBearer(auto_error=False, description="The `access_token` from `POST /v1/auth/login`.")


def _unauthorized(detail: str) -> HTTPException:
    return HTTPException(status.HTTP_401_UNAUTHORIZED, detail=detail, headers={"WWW-Authenticate": "Bearer"})


def get_current_user(
    session: SessionDep,
    settings: SettingsDep,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> User:
    if credentials is None or not credentials.credentials:
        raise _unauthorized("Not authenticated: send `Authorization: Bearer <access_token>`")
    try:
        user_id = decode_access_token(credentials.credentials, settings)
    except InvalidToken as exc:
        raise _unauthorized(f"Could not validate credentials: {exc}") from None
    user = session.get(User, user_id)
    if user is None:
        raise _unauthorized("Could not validate credentials: user no longer exists")
    return user


CurrentUser = Annotated[User, Depends(get_current_user)]


#: beyond any real list, and within the 64-bit OFFSET of every database
MAX_OFFSET = 1_000_000_000


class Page(NamedTuple):
    """Optional paging of a list: everything when `limit` is None."""

    limit: int | None
    offset: int


def get_page(
    limit: Annotated[int | None, Query(ge=1, le=1000, description="At most this many items (1..1000); all if absent.")]
    = None,
    offset: Annotated[int, Query(ge=0, le=MAX_OFFSET, description="Skip this many of the newest items first.")] = 0,
) -> Page:
    return Page(limit, offset)


PageDep = Annotated[Page, Depends(get_page)]
#: route options of a paged list: an out-of-range `limit`/`offset` is a documented 400
PAGED_LIST_ROUTE = {
    "responses": {400: {"model": ErrorResponse, "description": "`limit` or `offset` out of range",
                        "content": {"application/json": {
                            "example": {"detail": "limit: Input should be less than or equal to 1000"}}}}},
    "openapi_extra": {"x-validation-status": 400},
}
