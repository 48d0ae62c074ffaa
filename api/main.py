"""The FastAPI application: everything under `/v1`, OpenAPI at `/v1/openapi.json`, Swagger at `/v1/docs`.

Run it with `uvicorn api.main:app` (settings from the environment) or build one with
`create_app(settings)`. At start-up it migrates the database to head, seeds the model catalog
and starts the background loop that settles datasets with Airflow.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import AsyncIterator
from typing import Any

import anyio.to_thread
from fastapi import FastAPI, Request, status
from fastapi.routing import APIRoute
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from sqlalchemy.exc import DBAPIError
from sqlalchemy.exc import TimeoutError as PoolTimeout

from api.clients.airflow import AirflowApi, AirflowClient, AirflowError, DagNotFound
from api.clients.mlflow import MlflowApi, MlflowReader
from api.clients.mlflow_accounts import MlflowAccounts
from api.clients.s3 import S3Storage, S3Unavailable
from api.core.config import Settings, get_settings
from api.core.limits import AuthRateLimit, BodySizeLimit
from api.core.security import hash_slots
from api.core.server_timing import ServerTiming, time_statements
from api.db import database_unreachable, exclusive_pass, make_engine, make_sessionmaker, upgrade_to_head
from api.routers import auth, datasets, models, training_follow, training_results, trainings, webhooks
from api.schemas.common import ValidationErrorResponse
from api.schemas.health import HEALTH_DOWN_EXAMPLE, HEALTH_OK_EXAMPLE, HealthReport
from api.services.catalog import seed_catalog
from api.services.datasets import reconcile_all
from api.services.trainings.live_state import LiveState
from api.services.trainings.reconcile import reconcile_trainings
from api.services.errors import ServiceError
from api.services.webhooks.outbox import WebhookSender
from training import params

log = logging.getLogger("api")

API_PREFIX = "/v1"
DESCRIPTION = """
Fine-tune video captioning and classification models with QLoRA.

1. `POST /v1/auth/signup`, then `POST /v1/auth/login` for a bearer token.
2. `POST /v1/datasets/upload-initiate`, `PUT` the `.zip` to the returned `upload_url`,
   then `POST /v1/datasets/upload-complete`; poll `GET /v1/datasets/{id}` until `ready`.
3. Pick a base model from `GET /v1/models/allowed`.
4. `POST /v1/trainings`, then watch `GET /v1/trainings/{job_id}` (status, progress, logs, metrics);
   `POST /v1/trainings/{job_id}/stop` stops it.

Every error is JSON: `{"detail": "..."}`.
"""
#: the groups of operations (OpenAPI tags), in the order the documentation shows them
OPENAPI_TAGS = [
    {"name": "auth", "description": "Sign up, log in for a bearer token, check who a token belongs to."},
    {"name": "datasets", "description": "Upload a `.zip` of video clips straight to S3 through pre-signed URLs; "
     "the `dataset_validation` Airflow DAG checks it and the dataset ends `ready` or `error`."},
    {"name": "models", "description": "The catalog of base models that may be fine-tuned, with their LoRA limits."},
    {"name": "trainings", "description": "Start QLoRA fine-tuning jobs (the `qlora_training` Airflow DAG), follow "
     "their status, progress, metrics and logs, stop them."},
    {"name": "webhooks", "description": "Signed HTTP notifications (Standard Webhooks) when a training or a dataset "
     "ends, with every delivery attempt recorded."},
    {"name": "health", "description": "Health of the API and of each service it depends on (database, S3, Airflow's "
     "scheduler, MLflow), and the liveness of the API process."},
]


def operation_id(route: APIRoute) -> str:
    """The OpenAPI operation id of a route: its function's name in camelCase (`start_training` ->
    `startTraining`), unless the route sets `operation_id=`."""
    head, *rest = route.name.split("_")
    return head + "".join(word[:1].upper() + word[1:] for word in rest)



def create_app(
    settings: Settings | None = None,
    *,
    s3: S3Storage | None = None,
    airflow: AirflowApi | None = None,
    mlflow: MlflowApi | None = None,
) -> FastAPI:
    """Builds the app; `s3`/`airflow`/`mlflow` replace the clients made from the settings."""
    settings = settings or get_settings()

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        # the routes are sync: each runs in one of these threads, most of its time waiting on
        # Airflow, MLflow or S3 (a job detail up to QLORA_DETAIL_AIRFLOW_TIMEOUT_S); with anyio's
        # default of 40, lists queued behind waiting details for seconds under bench.load
        anyio.to_thread.current_default_thread_limiter().total_tokens = settings.api_threads
        engine = make_engine(settings.database_url, settings.database_pool_size, settings.database_max_overflow,
                             settings.database_pool_timeout_s)
        time_statements(engine)  # the `db` part of each answer's Server-Timing header
        app.state.engine = engine
        app.state.sessionmaker = make_sessionmaker(engine)
        if settings.migrate_on_startup:
            await asyncio.to_thread(_migrate_and_seed, app)
        app.state.s3 = s3 or S3Storage(settings)
        owned_airflow = airflow is None
        app.state.airflow = airflow or AirflowClient.from_settings(settings)
        # importing mlflow takes a second or two: done once here, off the event loop
        app.state.mlflow = mlflow or await asyncio.to_thread(MlflowReader.from_settings, settings)
        # users' MLflow accounts (signup, login); None when the server runs without auth
        app.state.mlflow_accounts = MlflowAccounts.from_settings(settings)
        app.state.training_live = LiveState.create(settings.live_state_ttl_s)
        try:
            await asyncio.to_thread(app.state.s3.ensure_bucket)
        except S3Unavailable as exc:
            log.warning("S3 bucket check failed at start-up: %s", exc)
        loop_task = None
        if settings.reconcile_interval_s > 0:
            loop_task = asyncio.create_task(_reconcile_loop(app, settings.reconcile_interval_s))
        # the webhook outbox's sender: resumes whatever a stopped process left pending
        app.state.webhook_sender = WebhookSender(app.state.sessionmaker, settings)
        sender_task = None
        if settings.webhook_poll_interval_s > 0:
            sender_task = asyncio.create_task(_webhook_loop(app, settings.webhook_poll_interval_s))
        try:
            yield
        finally:
            if sender_task is not None:
                sender_task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await sender_task
            app.state.webhook_sender.close()
            if loop_task is not None:
                loop_task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await loop_task
            if owned_airflow:
                app.state.airflow.close()
            if app.state.mlflow_accounts is not None:
                app.state.mlflow_accounts.close()
            engine.dispose()

    app = FastAPI(
        title="QLoRA Orchestration Service",
        version="1.0.0",
        description=DESCRIPTION,
        openapi_url=f"{API_PREFIX}/openapi.json",
        docs_url=f"{API_PREFIX}/docs",
        redoc_url=f"{API_PREFIX}/redoc",
        lifespan=lifespan,
        openapi_tags=OPENAPI_TAGS,
        generate_unique_id_function=operation_id,
    )
    app.state.settings = settings
    # abuse limits outside every route (api/core/limits.py): the body size first, then login/signup rates
    app.add_middleware(AuthRateLimit, prefix=API_PREFIX, per_address=settings.auth_rate_limit_per_address,
                       per_username=settings.auth_rate_limit_per_username, window_s=settings.auth_rate_limit_window_s)
    app.add_middleware(BodySizeLimit, max_bytes=settings.max_request_body_bytes)
    app.add_middleware(ServerTiming)  # outermost: `app` in the Server-Timing header is the whole time inside
    hash_slots.configure(settings.password_hash_concurrency, settings.password_hash_wait_s)
    for router in (auth.router, datasets.router, models.router, trainings.router, training_follow.router,
                   training_results.router,
                   webhooks.router):
        app.include_router(router, prefix=API_PREFIX)

    @app.get(f"{API_PREFIX}/health", tags=["health"], operation_id="getHealth", response_model=HealthReport,
             summary="Health: the API and each dependency, checked now",
             description="Checks, at once and each within 3 s: the database, S3 (the bucket), Airflow (its API and "
             "metadata database), the Airflow scheduler's heartbeat and DAG processor (Airflow's "
             "`/api/v2/monitor/health`), and the MLflow tracking server. 200 when all answer; 503 with a `detail` "
             "naming what is down (jobs do not advance while the scheduler is down). Needs no token.",
             responses={200: {"content": {"application/json": {"example": HEALTH_OK_EXAMPLE}}},
                        503: {"model": HealthReport, "description": "A dependency is down: `detail` and `down` "
                              "name it", "content": {"application/json": {"example": HEALTH_DOWN_EXAMPLE}}}})
    async def health() -> JSONResponse:
        from api.services.health import check_all, summary

        code, body = summary(await check_all(app))
        headers = {"Cache-Control": "no-store", **({"Retry-After": "30"} if code == 503 else {})}
        return JSONResponse(body, status_code=code, headers=headers)

    @app.get(f"{API_PREFIX}/health/live", tags=["health"], operation_id="getLiveness",
             summary="Liveness: the process answers",
             description="Answers `{\"status\": \"ok\"}` while the process runs; checks no other service (for "
             "a process supervisor's liveness probe: `/v1/health` is the readiness of the whole service).",
             responses={200: {"content": {"application/json": {"example": {"status": "ok"}}}}})
    def liveness() -> dict[str, str]:
        return {"status": "ok"}

    _install_error_handlers(app)
    _document_validation_errors(app)
    return app


def _document_validation_errors(app: FastAPI) -> None:
    """The OpenAPI schema names the validation error body the handler below really returns
    (`detail` is a string everywhere) instead of FastAPI's default `HTTPValidationError`."""
    generate = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            spec = generate()
            schemas = spec.get("components", {}).get("schemas", {})
            if schemas.pop("HTTPValidationError", None) is not None:
                schemas.pop("ValidationError", None)
                ours = ValidationErrorResponse.model_json_schema(ref_template="#/components/schemas/{model}")
                schemas.update(ours.pop("$defs", {}))
                schemas["ValidationErrorResponse"] = ours
                text = json.dumps(spec).replace('"#/components/schemas/HTTPValidationError"',
                                                '"#/components/schemas/ValidationErrorResponse"')
                spec = json.loads(text)
            app.openapi_schema = _restore_example_nulls(app, _document_422(spec))
        return app.openapi_schema

    app.openapi = openapi


#: what a 422 looks like (FastAPI documents the response, the example is ours)
VALIDATION_EXAMPLE = {"detail": "password: is required",
                      "errors": [{"loc": ["body", "password"], "msg": "Field required", "type": "missing"}]}


def _document_422(spec: dict[str, Any]) -> dict[str, Any]:
    """Validation errors as they are answered: a route with `x-validation-status: 400` never
    answers 422 (its 400 says so); every other 422 gets a description and an example."""
    for operations in spec.get("paths", {}).values():
        for operation in operations.values():
            responses = operation.get("responses", {})
            if "422" not in responses:
                continue
            if operation.get("x-validation-status") == 400:
                del responses["422"]
                continue
            responses["422"]["description"] = "The request does not match the schema: `detail` names each problem"
            responses["422"]["content"]["application/json"]["example"] = VALIDATION_EXAMPLE
    return spec


def _restore_example_nulls(app: FastAPI, spec: dict[str, Any]) -> dict[str, Any]:
    """The routes' examples as written: FastAPI drops every null from the schema it generates,
    examples included (a `"checkpoint": null` would vanish and the example would no longer
    match its schema)."""
    from fastapi.encoders import jsonable_encoder

    def media(node: dict[str, Any] | None) -> dict[str, Any]:
        return ((node or {}).get("content") or {}).get("application/json") or {}

    for route in app.routes:
        if not isinstance(route, APIRoute) or route.path not in spec.get("paths", {}):
            continue
        for method in route.methods or ():
            operation = spec["paths"][route.path].get(method.lower())
            if operation is None:
                continue
            body = media((route.openapi_extra or {}).get("requestBody"))
            if "example" in body and "example" in media(operation.get("requestBody")):
                media(operation["requestBody"])["example"] = jsonable_encoder(body["example"])
            for code, response in (route.responses or {}).items():
                documented = media(operation.get("responses", {}).get(str(code)))
                if "example" in media(response) and "example" in documented:
                    documented["example"] = jsonable_encoder(media(response)["example"])
    return spec


def _migrate_and_seed(app: FastAPI) -> None:
    upgrade_to_head(app.state.engine, app.state.settings)
    with app.state.sessionmaker() as session:
        seed_catalog(session)


def reconcile_once(app: FastAPI) -> int:
    """One pass: expire stale uploads, settle validating datasets, refresh and settle training
    jobs (a job whose run died ends failed with a reason). Returns how many changed. One API
    process at a time: with several, the others skip the pass (and return 0)."""
    with exclusive_pass(app.state.engine) as mine:
        if not mine:
            return 0
        with app.state.sessionmaker() as session:
            changed = reconcile_all(session, app.state.s3, app.state.airflow, app.state.settings)
        with app.state.sessionmaker() as session:
            changed += reconcile_trainings(session, app.state.s3, app.state.airflow, app.state.mlflow,
                                           app.state.settings)
        return changed


async def _reconcile_loop(app: FastAPI, interval_s: float) -> None:
    """A pass every `interval_s`, started at a fixed cadence (the next one `interval_s` after the
    last one started, at once if it took longer): a change is seen by a pass starting within one
    interval, so its event is recorded at most one interval plus that pass's reads after it."""
    loop = asyncio.get_running_loop()
    started = loop.time()
    while True:
        await asyncio.sleep(max(0.0, started + interval_s - loop.time()))
        started = loop.time()
        try:
            changed = await asyncio.to_thread(reconcile_once, app)
            if changed:
                log.info("reconcile: %d datasets or training jobs changed", changed)
        except Exception:  # the loop must survive any one failed pass
            log.exception("reconcile pass failed")


async def _webhook_loop(app: FastAPI, interval_s: float) -> None:
    while True:
        try:
            sent = await asyncio.to_thread(app.state.webhook_sender.run_once)
        except Exception:  # the loop must survive any one failed round
            log.exception("webhook round failed")
            sent = 0
        if not sent:  # after a round that sent something, look again at once
            await asyncio.sleep(interval_s)


# --- errors: always {"detail": ...} ---------------------------------------------------------
#: what FastAPI raises (400) for a body it cannot decode; answered like invalid JSON
BODY_PARSE_ERROR = "There was an error parsing the body"


def _format_validation_errors(errors: list[dict[str, Any]]) -> str:
    parts = []
    for error in errors:
        loc = [str(p) for p in error.get("loc", ()) if p not in ("body", "query", "path", "header")]
        if loc[:1] == ["training_params"] and len(loc) > 1:  # the sentences the DAG and the engine use too
            parts.append(params.describe_error({**error, "loc": loc[1:]}))
            continue
        where = ".".join(loc) or "request"
        message = str(error.get("msg", "is invalid"))
        if error.get("type") == "json_invalid":
            where, message = "body", "is not valid JSON"
        elif error.get("type") == "missing":
            message = "is required"
        parts.append(f"{where}: {message}")
    return "; ".join(parts) or "Invalid request"


def _methods_of(request: Request) -> list[str]:
    """Every method served on the path template this request's path matched first (Starlette's
    405 names only one route's, e.g. `POST` for `/v1/trainings`, which serves `GET` too)."""
    routes = [r for r in request.app.router.routes if getattr(r, "path_regex", None) is not None]
    template = next((r.path for r in routes if r.path_regex.match(request.url.path)), None)
    methods = {m for r in routes if r.path == template for m in getattr(r, "methods", None) or ()}
    return sorted(methods - {"HEAD"})


def _install_error_handlers(app: FastAPI) -> None:
    def invalid_request(request: Request, errors: list[dict[str, Any]]) -> JSONResponse:
        route = request.scope.get("route")
        extra = getattr(route, "openapi_extra", None) or {}
        code = extra.get("x-validation-status", status.HTTP_422_UNPROCESSABLE_CONTENT)
        detail = _format_validation_errors(errors)  # names the input where it helps; the list does not echo it
        errors = [{k: v for k, v in e.items() if k != "input"} for e in errors]
        return JSONResponse({"detail": detail, "errors": errors}, status_code=code)

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        return invalid_request(request, [
            {"loc": list(e.get("loc", ())), "msg": str(e.get("msg")), "type": e.get("type"), "input": e.get("input")}
            for e in exc.errors()
        ])

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        if exc.status_code == 400 and exc.detail == BODY_PARSE_ERROR:  # e.g. a body that is not UTF-8
            return invalid_request(request, [{"loc": ["body"], "msg": "is not valid JSON", "type": "json_invalid"}])
        detail = exc.detail if exc.status_code != 404 or exc.detail != "Not Found" else "Not Found: no such route"
        headers = exc.headers
        if exc.status_code == status.HTTP_405_METHOD_NOT_ALLOWED:
            headers = {**(headers or {}), "Allow": ", ".join(_methods_of(request))}
        return JSONResponse({"detail": detail}, status_code=exc.status_code, headers=headers)

    @app.exception_handler(ServiceError)
    async def service_error(_: Request, exc: ServiceError) -> JSONResponse:
        return JSONResponse({"detail": exc.detail}, status_code=exc.status_code, headers=exc.headers)

    @app.exception_handler(S3Unavailable)
    async def s3_unavailable(_: Request, exc: S3Unavailable) -> JSONResponse:
        log.warning("S3 unavailable: %s", exc)
        return JSONResponse({"detail": "Storage (S3) is unavailable; retry later"}, status_code=503)

    @app.exception_handler(AirflowError)
    async def airflow_unavailable(_: Request, exc: AirflowError) -> JSONResponse:
        log.warning("Airflow error: %s", exc)
        if isinstance(exc, DagNotFound):  # not parsed yet, or renamed: a state of Airflow, not of the request
            return JSONResponse({"detail": exc.detail}, status_code=503, headers={"Retry-After": "60"})
        return JSONResponse({"detail": "The pipeline service (Airflow) is unavailable; retry later"}, status_code=503,
                            headers={"Retry-After": "30"})

    async def database_error(request: Request, exc: Exception) -> JSONResponse:
        if isinstance(exc, PoolTimeout):  # the database is up; this process's connections are all in use
            log.warning("no database connection free on %s %s: %s", request.method, request.url.path, exc)
            return JSONResponse({"detail": "The service is busy: no database connection came free in time; retry in "
                                           "a few seconds"}, status_code=503, headers={"Retry-After": "5"})
        if database_unreachable(exc):  # restarted, failed over, out of connections: a state, not a bug
            log.warning("database unavailable on %s %s: %s", request.method, request.url.path,
                        getattr(exc, "orig", exc))
            return JSONResponse({"detail": "The service database is unavailable (restarting or unreachable); "
                                           "retry in a few seconds"}, status_code=503, headers={"Retry-After": "5"})
        return await unhandled(request, exc)

    app.add_exception_handler(DBAPIError, database_error)
    app.add_exception_handler(PoolTimeout, database_error)  # no connection free in the pool in time

    @app.exception_handler(Exception)
    async def unhandled(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error on %s %s", request.method, request.url.path)
        return JSONResponse({"detail": "Internal server error"}, status_code=500)


def __getattr__(name: str) -> Any:
    """`api.main:app` for uvicorn, built on first access from the environment's settings."""
    if name == "app":
        from pydantic import ValidationError

        global app
        try:
            app = create_app()
        except ValidationError as exc:  # e.g. no QLORA_JWT_SECRET in production: one clear line, no traceback
            problems = "; ".join(str(e.get("msg", "")).removeprefix("Value error, ") for e in exc.errors())
            raise SystemExit(f"cannot start the API: {problems}") from None
        return app
    raise AttributeError(name)
