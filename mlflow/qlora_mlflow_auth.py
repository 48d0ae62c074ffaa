"""The tracking server's sign-in function (`authorization_function` of MLflow's basic-auth app):
MLflow's own HTTP basic auth, plus one rule of this service: only MLflow admins (the service
accounts, operators) create anything. A user's request that would create an experiment, a
registered model (or prompt), a scorer, an AI-gateway secret/endpoint/model definition or a
workspace is refused with 403 before MLflow handles it.

Why: MLflow makes the creator of such a resource its MANAGE holder. A user could otherwise
- create the registered model `bob~x` before bob's job registers its adapter there (the names
  are predictable, `job_spec.registered_model_name`) and then read, change or delete bob's
  versions as its manager (squatting);
- create experiments of their own and upload artifacts into them through the server's artifact
  proxy, to S3, outside the service's storage quota.
Users of this service only read in MLflow (READ on their experiment and their registered
models, granted by the API); everything is created by the service accounts.

The routes refused are read from MLflow itself: every route after which the basic-auth app
grants the caller MANAGE on what it created (its `set_can_manage_*` after-request handlers), so
a creation route MLflow adds later is covered without a list kept here.

Configured as `authorization_function = qlora_mlflow_auth:authenticate_request` with this
folder on the server's PYTHONPATH (devstack/mlflow_server.py; the Dockerfile copies the file).
Not a package on purpose: a folder named `mlflow` with an `__init__.py` would shadow MLflow.
"""

from __future__ import annotations

import functools
import json
import re

#: after-request handlers by which MLflow hands the creator MANAGE on what it created
_OWNER_GRANT_PREFIX = "set_can_manage_"
_ALSO_CREATES = frozenset({"_seed_default_workspace_roles"})  # CreateWorkspace

REFUSAL = ("only the service creates MLflow resources (experiments, registered models, ...): your account "
           "reads your own experiment and registered models; start a training job through the service instead")


def authenticate_request():
    """MLflow's basic auth; then 403 for a non-admin's creation request."""
    from flask import Response, request
    from mlflow.server import auth

    authorization = auth.authenticate_request_basic_auth()
    if isinstance(authorization, Response):
        return authorization
    if creates(request.path, request.method) and not _is_admin(authorization.username):
        return Response(json.dumps({"error_code": "PERMISSION_DENIED", "message": REFUSAL}), status=403,
                        mimetype="application/json")
    return authorization


def creates(path: str, method: str) -> bool:
    """Whether the request (path, method) creates a resource its caller would then MANAGE."""
    exact, patterns = _creation_routes()
    return (path, method) in exact or any(m == method and p.fullmatch(path) for p, m in patterns)


@functools.cache
def _creation_routes() -> tuple[frozenset[tuple[str, str]], tuple[tuple[re.Pattern, str], ...]]:
    from mlflow.server import auth

    exact, patterns = set(), []
    for (path, method), handler in auth.AFTER_REQUEST_HANDLERS.items():
        name = getattr(handler, "__name__", "")
        if not (name.startswith(_OWNER_GRANT_PREFIX) or name in _ALSO_CREATES):
            continue
        if "<" in path:
            patterns.append((re.compile(re.sub(r"<([^>]+)>", r"([^/]+)", path)), method))
        else:
            exact.add((path, method))
    if not exact:  # MLflow renamed its handlers: fail closed rather than let users create
        raise RuntimeError("qlora_mlflow_auth: no creation route found in mlflow.server.auth.AFTER_REQUEST_HANDLERS")
    return frozenset(exact), tuple(patterns)


def _is_admin(username: str) -> bool:
    from mlflow.server import auth

    try:
        return bool(auth.store.get_user(username).is_admin)
    except Exception:  # noqa: BLE001 - an unknown user is no admin
        return False
