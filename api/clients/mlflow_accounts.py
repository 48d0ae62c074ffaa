"""MLflow accounts of the service's users, on a tracking server that runs MLflow's `basic-auth`
app (`mlflow server --app-name basic-auth`, default permission NO_PERMISSIONS).

Each service user gets an MLflow account with the same username and password and READ on their
own experiment (`job_spec.mlflow_experiment_name`), nothing else: they sign in to the MLflow UI
and REST API with their service credentials and see their runs, not anyone else's. The API talks
to MLflow's auth REST API here with its own service account (an MLflow admin: creating users and
granting permissions needs one); the workers and operators have their own accounts
(`bootstrap_service_accounts`, run by `make up`, the test stack and compose's `mlflow-accounts`).

Rules that keep accounts safe:
- an MLflow *admin* account is never changed through a service user (a signup named like a
  service account is refused; its password is never set from a login);
- at signup the user's experiment is created by the API; one that already exists was made by
  someone else before this user existed (an operator; users cannot create experiments, see
  mlflow/qlora_mlflow_auth.py, but could before that rule) and is renamed
  out of the way, so nobody but the user (and the service accounts) can read the new one;
- at login the account is checked with the user's password and repaired (created, or its
  password set) if it drifted: a signup while MLflow was down, a database restored, an old user.

`python -m api.clients.mlflow_accounts bootstrap` creates or updates the service accounts
(admin credentials from `MLFLOW_AUTH_ADMIN_USERNAME`/`MLFLOW_AUTH_ADMIN_PASSWORD`, the accounts
from `QLORA_MLFLOW_SERVICE_ACCOUNTS`, `name:password` pairs separated by commas).
"""

from __future__ import annotations

import logging
import os
import sys
from dataclasses import dataclass

import httpx

from api.core.config import Settings
from training import job_spec

log = logging.getLogger(__name__)

#: MLflow's own minimum password length (`mlflow.utils.validation._validate_password`): the
#: service's passwords are at least this long so that the MLflow account can share them
MLFLOW_PASSWORD_MIN_LENGTH = 12
#: what a service user may do in their own experiment
USER_PERMISSION = "READ"

_USERS = "/api/2.0/mlflow/users"
_GRANT = "/api/3.0/mlflow/users/permissions/grant"
_EXPERIMENTS = "/api/2.0/mlflow/experiments"


class MlflowAccountError(Exception):
    """The tracking server could not be reached or refused an account operation."""


class ReservedUsername(MlflowAccountError):
    """The username belongs to an MLflow admin (a service or operator account)."""


@dataclass(frozen=True)
class MlflowUser:
    username: str
    is_admin: bool


class MlflowAccounts:
    """The auth REST API of one tracking server, called as `username` (an MLflow admin)."""

    def __init__(self, tracking_uri: str, username: str, password: str, timeout_s: float = 5.0,
                 transport: httpx.BaseTransport | None = None) -> None:
        self.tracking_uri = tracking_uri.rstrip("/")
        self._auth = (username, password)
        self._timeout = timeout_s
        self._client = httpx.Client(base_url=self.tracking_uri, timeout=timeout_s, transport=transport)

    @classmethod
    def from_settings(cls, settings: Settings) -> MlflowAccounts | None:
        """None unless the API has an MLflow tracking server over http(s) and credentials for it
        (a server without auth has no accounts to keep)."""
        uri, user, password = (settings.mlflow_tracking_uri, settings.mlflow_tracking_username,
                               settings.mlflow_tracking_password)
        if not (uri and uri.startswith(("http://", "https://")) and user and password):
            return None
        return cls(uri, user, password, settings.mlflow_timeout_s)

    def close(self) -> None:
        self._client.close()

    # -- low level -------------------------------------------------------------------------
    def _call(self, method: str, path: str, *, auth: tuple[str, str] | None = None, ok: tuple[int, ...] = (200,),
              **kwargs) -> httpx.Response:
        try:
            resp = self._client.request(method, path, auth=auth or self._auth, **kwargs)
        except httpx.HTTPError as exc:
            raise MlflowAccountError(f"MLflow at {self.tracking_uri} cannot be reached: {exc}") from exc
        if resp.status_code not in ok:
            raise MlflowAccountError(f"MLflow {method} {path}: {resp.status_code} {resp.text[:200]}")
        return resp

    def get_user(self, username: str) -> MlflowUser | None:
        resp = self._call("GET", f"{_USERS}/get", params={"username": username}, ok=(200, 404))
        if resp.status_code == 404:
            return None
        user = resp.json()["user"]
        return MlflowUser(user["username"], bool(user.get("is_admin")))

    def create_user(self, username: str, password: str) -> None:
        self._call("POST", f"{_USERS}/create", json={"username": username, "password": password})

    def set_password(self, username: str, password: str) -> None:
        self._call("PATCH", f"{_USERS}/update-password", json={"username": username, "password": password})

    def set_admin(self, username: str, is_admin: bool) -> None:
        self._call("PATCH", f"{_USERS}/update-admin", json={"username": username, "is_admin": is_admin})

    def signs_in(self, username: str, password: str) -> bool:
        """Whether MLflow accepts these credentials (as a user's browser would send them)."""
        resp = self._call("GET", f"{_USERS}/current", auth=(username, password), ok=(200, 401))
        return resp.status_code == 200

    def experiment_id(self, name: str) -> str | None:
        resp = self._call("GET", f"{_EXPERIMENTS}/get-by-name", params={"experiment_name": name}, ok=(200, 404))
        return resp.json()["experiment"]["experiment_id"] if resp.status_code == 200 else None

    def create_experiment(self, name: str) -> str:
        return self._call("POST", f"{_EXPERIMENTS}/create", json={"name": name}).json()["experiment_id"]

    def rename_experiment(self, experiment_id: str, new_name: str) -> None:
        self._call("POST", f"{_EXPERIMENTS}/update", json={"experiment_id": experiment_id, "new_name": new_name})

    def grant(self, username: str, resource_id: str, permission: str = USER_PERMISSION,
              resource_type: str = "experiment") -> None:
        """`permission` on an experiment (by id) or a registered model (by name; one that does
        not exist yet is granted too, for when it is registered). A grant the user already holds
        is no error (MLflow answers 400 RESOURCE_ALREADY_EXISTS: every login grants again)."""
        resp = self._call("POST", _GRANT, ok=(200, 400), json={
            "username": username, "resource_type": resource_type, "resource_id": resource_id,
            "permission": permission})
        if resp.status_code == 400 and "RESOURCE_ALREADY_EXISTS" not in resp.text:
            raise MlflowAccountError(f"MLflow POST {_GRANT}: 400 {resp.text[:200]}")

    # -- what the API does -----------------------------------------------------------------
    def _account(self, username: str, password: str) -> None:
        """The user's account exists with this password (created, or its password set)."""
        existing = self.get_user(username)
        if existing is not None and existing.is_admin:
            raise ReservedUsername(f"{username!r} is an MLflow admin account; it is never given to a user")
        if existing is None:
            self.create_user(username, password)
        elif not self.signs_in(username, password):
            self.set_password(username, password)

    def provision_new_user(self, username: str, password: str) -> str:
        """At signup: the account, a fresh experiment and READ on it. Returns the experiment id."""
        self._account(username, password)
        name = job_spec.mlflow_experiment_name(username)
        squatted = self.experiment_id(name)
        if squatted is not None:  # made before this user existed: not theirs to read
            self.rename_experiment(squatted, f"{name}~orphaned-{squatted}")
            log.warning("MLflow experiment %s (id %s) existed before user %s signed up: renamed", name,
                        squatted, username)
        experiment_id = self.create_experiment(name)
        self.grant(username, experiment_id)
        return experiment_id

    def sync_user(self, username: str, password: str) -> str:
        """At login: repairs the account if it drifted (missing, other password) and makes sure
        the user reads their experiment (created if missing). Returns the experiment id."""
        if not self.signs_in(username, password):
            self._account(username, password)
        name = job_spec.mlflow_experiment_name(username)
        experiment_id = self.experiment_id(name) or self.create_experiment(name)
        self.grant(username, experiment_id)
        return experiment_id

    def grant_registered_model(self, username: str, output_name: str) -> None:
        """READ on the registered model a job of `username` named `output_name` registers its
        adapter as (`job_spec.registered_model_name`)."""
        if (user := self.get_user(username)) is None or user.is_admin:
            return  # no account yet (made at the next login) or not a user's
        self.grant(username, job_spec.registered_model_name(username, output_name), resource_type="registered_model")

    def ensure_service_account(self, username: str, password: str) -> None:
        """An MLflow admin account for a service (the API, the workers) or an operator."""
        existing = self.get_user(username)
        if existing is None:
            self.create_user(username, password)
        elif not self.signs_in(username, password):
            self.set_password(username, password)
        if existing is None or not existing.is_admin:
            self.set_admin(username, True)


def bootstrap_service_accounts(tracking_uri: str, admin: tuple[str, str], accounts: dict[str, str],
                               timeout_s: float = 10.0) -> None:
    """Creates (or updates the password of) each `name: password` of `accounts` as an MLflow
    admin, signed in as the server's bootstrap admin."""
    client = MlflowAccounts(tracking_uri, *admin, timeout_s=timeout_s)
    try:
        for username, password in accounts.items():
            if username != admin[0]:
                client.ensure_service_account(username, password)
    finally:
        client.close()


def parse_accounts(text: str) -> dict[str, str]:
    """`name:password,name:password` -> {name: password} (a password may hold `:`)."""
    accounts = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        name, sep, password = item.partition(":")
        if not sep or not name or not password:
            raise ValueError(f"QLORA_MLFLOW_SERVICE_ACCOUNTS: {name or item!r} needs the form name:password")
        accounts[name] = password
    return accounts


def main(argv: list[str]) -> int:
    if argv[1:] != ["bootstrap"]:
        print("usage: python -m api.clients.mlflow_accounts bootstrap", file=sys.stderr)
        return 2
    env = os.environ
    missing = [k for k in ("MLFLOW_TRACKING_URI", "MLFLOW_AUTH_ADMIN_PASSWORD", "QLORA_MLFLOW_SERVICE_ACCOUNTS")
               if not env.get(k)]
    if missing:
        print(f"set {', '.join(missing)}", file=sys.stderr)
        return 2
    accounts = parse_accounts(env["QLORA_MLFLOW_SERVICE_ACCOUNTS"])
    bootstrap_service_accounts(env["MLFLOW_TRACKING_URI"],
                               (env.get("MLFLOW_AUTH_ADMIN_USERNAME") or "admin", env["MLFLOW_AUTH_ADMIN_PASSWORD"]),
                               accounts)
    print(f"MLflow service accounts ready: {', '.join(sorted(accounts))}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
