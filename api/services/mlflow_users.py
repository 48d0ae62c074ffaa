"""Each service user's MLflow account (`api/clients/mlflow_accounts.py`), kept by signup and login.

MLflow being down never fails a signup or a login: the account is then created or repaired at
the user's next login. A username that is an MLflow admin account (a service or operator
account) is refused at signup, and such an account is never touched through a user.
"""

from __future__ import annotations

import logging

from fastapi import Request

from api.clients.mlflow_accounts import MlflowAccountError, MlflowAccounts, ReservedUsername
from api.services.errors import InvalidInput

log = logging.getLogger(__name__)


def accounts(request: Request) -> MlflowAccounts | None:
    """The app's MLflow account keeper; None when MLflow runs without auth."""
    return getattr(request.app.state, "mlflow_accounts", None)


def refuse_reserved(keeper: MlflowAccounts | None, username: str) -> None:
    """400 when `username` is an MLflow admin account (checked before the user is recorded)."""
    if keeper is None:
        return
    try:
        user = keeper.get_user(username)
    except MlflowAccountError as exc:
        log.warning("cannot check MLflow account %s at signup: %s", username, exc)
        return
    if user is not None and user.is_admin:
        raise InvalidInput(f"username {username!r} is reserved; choose another")


def after_signup(keeper: MlflowAccounts | None, username: str, password: str) -> None:
    """The new user's MLflow account (same username and password) and READ on a fresh
    experiment of their own."""
    if keeper is None:
        return
    try:
        keeper.provision_new_user(username, password)
    except ReservedUsername as exc:
        log.error("user %s gets no MLflow account: %s", username, exc)
    except MlflowAccountError as exc:
        log.warning("MLflow account of %s not created at signup (retried at login): %s", username, exc)


def after_login(keeper: MlflowAccounts | None, username: str, password: str) -> None:
    """Repairs the user's MLflow account and their READ on their experiment if they drifted."""
    if keeper is None:
        return
    try:
        keeper.sync_user(username, password)
    except ReservedUsername as exc:
        log.error("user %s gets no MLflow account: %s", username, exc)
    except MlflowAccountError as exc:
        log.warning("MLflow account of %s not checked at login: %s", username, exc)


def after_job_start(keeper: MlflowAccounts | None, username: str, output_name: str) -> None:
    """READ on the registered model the job's adapter will be (granted ahead: MLflow needs no
    model for a grant), so the user opens its versions from the job detail's link."""
    if keeper is None:
        return
    try:
        keeper.grant_registered_model(username, output_name)
    except MlflowAccountError as exc:
        log.warning("READ on the registered model %s~%s not granted: %s", username, output_name, exc)
