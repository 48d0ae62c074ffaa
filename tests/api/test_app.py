"""App-wide behaviour: JSON errors everywhere, OpenAPI and Swagger under /v1, migrations."""

from __future__ import annotations

from fastapi.testclient import TestClient
from sqlalchemy import inspect

from api.main import create_app


def test_unknown_route_and_method_are_json(client: TestClient) -> None:
    resp = client.get("/v1/nothing-here")
    assert resp.status_code == 404
    assert resp.json() == {"detail": "Not Found: no such route"}
    resp = client.get("/")
    assert resp.status_code == 404 and "detail" in resp.json()
    resp = client.put("/v1/auth/login", json={})
    assert resp.status_code == 405
    assert resp.json() == {"detail": "Method Not Allowed"}
    assert resp.headers["allow"] == "POST"
    # a path served by several routes names all their methods
    assert client.options("/v1/trainings").headers["allow"] == "GET, POST"
    assert client.put("/v1/datasets/some-id").headers["allow"] == "DELETE, GET"
    assert client.options("/v1/datasets/upload-complete").headers["allow"] == "POST"


def test_unhandled_exception_is_json_500(settings, airflow) -> None:
    app = create_app(settings)

    @app.get("/v1/boom")
    def boom() -> None:
        raise RuntimeError("secret internals")

    with TestClient(app, raise_server_exceptions=False) as client:
        resp = client.get("/v1/boom")
    assert resp.status_code == 500
    assert resp.json() == {"detail": "Internal server error"}


def test_openapi_and_docs_under_v1(client: TestClient) -> None:
    spec = client.get("/v1/openapi.json").json()
    paths = spec["paths"]
    for path in ("/v1/auth/signup", "/v1/auth/login", "/v1/datasets/upload-initiate", "/v1/datasets/upload-complete",
                 "/v1/datasets", "/v1/datasets/{dataset_id}", "/v1/models/allowed", "/v1/models/{model_id}"):
        assert path in paths, path
    assert "400" in paths["/v1/auth/signup"]["post"]["responses"]
    assert "409" in paths["/v1/datasets/{dataset_id}"]["delete"]["responses"]
    assert spec["components"]["schemas"]["SignupRequest"]["examples"]
    # a 422 is documented as what the API returns: `detail` a string, each problem in `errors`
    login_422 = paths["/v1/auth/login"]["post"]["responses"]["422"]["content"]["application/json"]["schema"]
    assert login_422 == {"$ref": "#/components/schemas/ValidationErrorResponse"}
    schema = spec["components"]["schemas"]["ValidationErrorResponse"]
    assert schema["properties"]["detail"]["type"] == "string" and "HTTPValidationError" not in spec["components"]["schemas"]
    body = client.post("/v1/auth/login").json()
    assert isinstance(body["detail"], str) and set(body) == set(schema["properties"])
    docs = client.get("/v1/docs")
    assert docs.status_code == 200 and "swagger" in docs.text.lower()


def test_sqlite_default_migrates_at_start_up(tmp_path, settings, airflow) -> None:
    db = tmp_path / "sub" / "api.db"
    app = create_app(settings.model_copy(update={"database_url": f"sqlite:///{db}"}))
    with TestClient(app) as client:
        assert client.get("/v1/health/live").json() == {"status": "ok"}
        tables = set(inspect(app.state.engine).get_table_names())
    assert {"users", "datasets", "base_models", "training_jobs", "alembic_version"} <= tables
    # a second start on the same database is a no-op
    with TestClient(create_app(settings.model_copy(update={"database_url": f"sqlite:///{db}"}))) as client:
        assert client.post("/v1/auth/signup", json={"username": "bob", "email": "b@example.com",
                                                     "password": "long-enough-pw"}).status_code == 201


def test_timestamps_carry_their_zone_on_sqlite(tmp_path, settings, airflow) -> None:
    """SQLite (the `make up` default) keeps no time zone; responses still say UTC."""
    from datetime import UTC, datetime, timedelta

    from api.deps import get_airflow
    from tests.api.conftest import signup_and_login

    app = create_app(settings.model_copy(update={"database_url": f"sqlite:///{tmp_path / 'api.db'}"}))
    app.dependency_overrides[get_airflow] = lambda: airflow
    before = datetime.now(UTC)
    with TestClient(app) as client:
        auth = signup_and_login(client)
        dataset = client.post("/v1/datasets/upload-initiate", headers=auth, json={
            "file_name": "clips.zip", "file_type": "application/zip", "dataset_name": "tz"}).json()
        stamps = [client.get("/v1/auth/me", headers=auth).json()["created_at"],
                  *(client.get(f"/v1/datasets/{dataset['dataset_id']}", headers=auth).json()[k]
                    for k in ("created_at", "updated_at")),
                  client.get("/v1/datasets", headers=auth).json()[0]["created_at"]]
    for stamp in stamps:
        parsed = datetime.fromisoformat(stamp)
        assert parsed.utcoffset() == timedelta(0), stamp
        assert before - timedelta(seconds=1) <= parsed <= datetime.now(UTC), stamp


def test_a_body_that_is_not_json_is_a_validation_error(client: TestClient) -> None:
    for body in (b"{not json", b'{"username": "\xff\xfe"}'):  # broken JSON, then bytes that are not UTF-8
        resp = client.post("/v1/auth/login", content=body, headers={"content-type": "application/json"})
        assert resp.status_code == 422, (body, resp.text)
        assert resp.json()["detail"] == "body: is not valid JSON", resp.text


def test_the_api_serves_as_many_requests_at_once_as_its_threads_setting(postgres_url, s3) -> None:
    """QLORA_API_THREADS: the sync routes' worker threads of the app's event loop (anyio's
    default of 40 queued job lists behind details waiting on a slow Airflow)."""
    import anyio.to_thread
    from fastapi.testclient import TestClient

    from api.main import create_app
    from tests.api.conftest import make_settings

    async def tokens() -> float:
        return anyio.to_thread.current_default_thread_limiter().total_tokens

    with TestClient(create_app(make_settings(postgres_url, s3, api_threads=7))) as client:
        assert client.portal.call(tokens) == 7
    with TestClient(create_app(make_settings(postgres_url, s3))) as client:
        assert client.portal.call(tokens) == 100
