"""`Client`: the service's REST API (`/v1`) as typed Python calls; the `qlora` command is built
on it.

    from qlora_client import Client
    api = Client()                       # QLORA_API_URL, the token of `qlora login` or QLORA_TOKEN
    dataset_id = api.upload_dataset("toy.zip", name="toy").dataset_id
    api.wait_for_dataset(dataset_id)
    job = api.start_training("flamingo-tiny-classification", dataset_id, "toy-colour", {"epochs": 8})
    final = api.wait_for_training(job["job_id"])

Every method returns the JSON the API answered (typed dicts, `qlora_client.types`) and raises
`ApiError` with the API's `detail` when it refuses.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any, cast

import httpx

from qlora_client import config
from qlora_client.types import (
    TERMINAL_TRAINING,
    Dataset,
    Model,
    MultipartParts,
    MultipartStarted,
    Training,
    TrainingStarted,
    User,
)


class ApiError(Exception):
    """The API refused a request (`status` is its HTTP status) or could not be reached
    (`status` is None). `detail` is the API's own sentence."""

    def __init__(self, detail: str, status: int | None = None) -> None:
        super().__init__(detail)
        self.detail = detail
        self.status = status

    @property
    def transient(self) -> bool:
        """Worth trying again later: unreachable, or S3/Airflow behind the API unavailable."""
        return self.status is None or self.status in (502, 503, 504)


class NotLoggedIn(ApiError):
    def __init__(self, api_url: str) -> None:
        super().__init__(f"not logged in to {api_url}: run `qlora login` (or set QLORA_TOKEN)", 401)


class Client:
    """One API (`api_url`, default `QLORA_API_URL`) as one user (`token`, default the stored
    login or `QLORA_TOKEN`)."""

    def __init__(self, api_url: str | None = None, token: str | None = None, *, timeout: float = 30.0,
                 transport: httpx.BaseTransport | None = None) -> None:
        self.api_url = config.api_url(api_url)
        self.token = token if token is not None else config.token(self.api_url)
        self._http = httpx.Client(base_url=self.api_url, timeout=timeout, transport=transport,
                                  headers={"user-agent": "qlora-client"})

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- plumbing -------------------------------------------------------------------------
    def request(self, method: str, path: str, *, json: Any = None, params: dict[str, Any] | None = None,
                auth: bool = True, headers: dict[str, str] | None = None) -> Any:
        """The JSON of the API's answer (None for 204); `ApiError` with its `detail` otherwise."""
        headers = dict(headers or {})
        if auth:
            if not self.token:
                raise NotLoggedIn(self.api_url)
            headers["authorization"] = f"Bearer {self.token}"
        try:
            resp = self._http.request(method, path, json=json, params=params, headers=headers)
        except httpx.TransportError as exc:
            raise ApiError(f"cannot reach the API at {self.api_url}: {exc or type(exc).__name__}") from None
        if resp.status_code >= 400:
            raise ApiError(_detail(resp), resp.status_code)
        if resp.status_code == 204 or not resp.content:
            return None
        try:
            return resp.json()
        except ValueError:
            raise ApiError(f"the API answered {method} {path} with something that is not JSON "
                           f"(is {self.api_url} the service's /v1 address?)", resp.status_code) from None

    def _idempotent_post(self, path: str, body: dict[str, Any], idempotency_key: str | None, retries: int) -> Any:
        """`POST path` with an `Idempotency-Key` (a fresh one unless given), sent again with that
        same key (after 2 s, 4 s, ...) up to `retries` times while the API is unreachable or
        answers 502/503/504: a retry that reaches what the first attempt created gets that back."""
        headers = {"idempotency-key": idempotency_key or uuid.uuid4().hex}
        for attempt in range(retries + 1):
            try:
                return self.request("POST", path, json=body, headers=headers)
            except ApiError as exc:
                if not exc.transient or attempt == retries:
                    raise
                time.sleep(2.0 * (attempt + 1))
        raise AssertionError("unreachable")

    # --- auth -----------------------------------------------------------------------------
    def signup(self, username: str, email: str, password: str) -> dict[str, Any]:
        return cast(dict[str, Any], self.request("POST", "/auth/signup", auth=False,
                                                 json={"username": username, "email": email, "password": password}))

    def login(self, username: str, password: str) -> str:
        """Logs in; the token is used by this client from now on (and returned)."""
        body = self.request("POST", "/auth/login", auth=False, json={"username": username, "password": password})
        self.token = str(body["access_token"])
        return self.token

    def me(self) -> User:
        return cast(User, self.request("GET", "/auth/me"))

    # --- datasets -------------------------------------------------------------------------
    def list_datasets(self, limit: int | None = None, offset: int = 0) -> list[Dataset]:
        params = {"limit": limit, "offset": offset} if limit is not None else None
        return cast(list[Dataset], self.request("GET", "/datasets", params=params))

    def get_dataset(self, dataset_id: str) -> Dataset:
        return cast(Dataset, self.request("GET", f"/datasets/{_segment(dataset_id)}"))

    def delete_dataset(self, dataset_id: str) -> None:
        self.request("DELETE", f"/datasets/{_segment(dataset_id)}")

    def upload_initiate(self, file_name: str, dataset_name: str, description: str = "",
                        file_type: str = "application/zip", file_size_bytes: int | None = None, *,
                        idempotency_key: str | None = None, retries: int = 2) -> dict[str, str]:
        """`file_size_bytes`: the archive's size, bound into the pre-signed URL (S3 refuses any other).
        The request carries an `Idempotency-Key` (a fresh one unless given) and is retried with it
        when the API was unreachable or answered 502/503/504: a retry that reaches the dataset the
        first attempt created gets that dataset back (with a fresh URL), never a second one."""
        body: dict[str, Any] = {"file_name": file_name, "file_type": file_type, "dataset_name": dataset_name,
                                "dataset_description": description}
        if file_size_bytes is not None:
            body["file_size_bytes"] = file_size_bytes
        return cast(dict[str, str], self._idempotent_post("/datasets/upload-initiate", body, idempotency_key,
                                                          retries))

    def upload_complete(self, dataset_id: str, s3_key: str) -> dict[str, str]:
        return cast(dict[str, str], self.request("POST", "/datasets/upload-complete",
                                                 json={"dataset_id": dataset_id, "s3_key": s3_key}))

    def multipart_initiate(self, file_name: str, dataset_name: str, size_bytes: int, description: str = "",
                           part_size_bytes: int | None = None,
                           file_type: str = "application/zip", *,
                           idempotency_key: str | None = None, retries: int = 2) -> MultipartStarted:
        """Retried like `upload_initiate`, with one `Idempotency-Key`: a retry that reaches the
        upload the first attempt created gets it back (part URLs signed anew), never a second."""
        body = {"file_name": file_name, "file_type": file_type, "dataset_name": dataset_name,
                "dataset_description": description, "size_bytes": size_bytes, "part_size_bytes": part_size_bytes}
        return cast(MultipartStarted, self._idempotent_post("/datasets/multipart/initiate", body, idempotency_key,
                                                            retries))

    def multipart_parts(self, dataset_id: str, upload_id: str, part_numbers: list[int] | None = None) -> MultipartParts:
        return cast(MultipartParts, self.request("POST", "/datasets/multipart/parts", json={
            "dataset_id": dataset_id, "upload_id": upload_id, "part_numbers": list(part_numbers or [])}))

    def multipart_complete(self, dataset_id: str, upload_id: str, etags: dict[int, str]) -> dict[str, str]:
        parts = [{"part_number": n, "etag": etags[n]} for n in sorted(etags)]
        return cast(dict[str, str], self.request("POST", "/datasets/multipart/complete", json={
            "dataset_id": dataset_id, "upload_id": upload_id, "parts": parts}))

    def multipart_abort(self, dataset_id: str) -> None:
        self.request("POST", "/datasets/multipart/abort", json={"dataset_id": dataset_id})

    def upload_dataset(self, path: str | Path, name: str, description: str = "", **options: Any):  # noqa: ANN201
        """Uploads a `.zip` archive and starts its validation; returns an `UploadResult`.

        Archives above `multipart_threshold` bytes (default 100 MiB, `QLORA_MULTIPART_THRESHOLD`)
        go up as an S3 multipart upload: parts are retried, and an interrupted upload is resumed
        by the next call for the same file (`resume=False` aborts it and starts anew). Options:
        see `qlora_client.upload.upload_dataset`."""
        from qlora_client.upload import upload_dataset

        return upload_dataset(self, Path(path), name, description, **options)

    def wait_for_dataset(self, dataset_id: str, *, poll_s: float = 1.0, timeout_s: float | None = None,
                         on_update: Callable[[Dataset], None] | None = None) -> Dataset:
        """Polls the dataset until its validation ended (`ready` or `error`); returns it."""
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        for dataset in self._poll(lambda: self.get_dataset(dataset_id), poll_s, deadline):
            if on_update:
                on_update(dataset)
            if dataset.get("status") != "processing":
                return dataset
        raise ApiError(f"dataset {dataset_id} is still being validated after {timeout_s} s")

    # --- models ---------------------------------------------------------------------------
    def list_models(self) -> list[Model]:
        return cast(list[Model], self.request("GET", "/models/allowed"))

    def get_model(self, model_id: str) -> Model:
        return cast(Model, self.request("GET", f"/models/{_segment(model_id)}"))

    # --- trainings ------------------------------------------------------------------------
    def start_training(self, model_id: str, dataset_id: str, output_name: str,
                       training_params: dict[str, Any] | None = None, *, max_runtime_minutes: int | None = None,
                       idempotency_key: str | None = None, retries: int = 2) -> TrainingStarted:
        """Starts a job. The request carries an `Idempotency-Key` (a fresh one unless given), so
        it is retried safely when the API was unreachable or answered 502/503/504: a retry that
        reaches a job the first attempt created gets that job back, never a second one."""
        body: dict[str, Any] = {"model_id": model_id, "dataset_id": dataset_id, "output_name": output_name,
                                "training_params": training_params or {}}
        if max_runtime_minutes is not None:
            body["max_runtime_minutes"] = max_runtime_minutes
        return cast(TrainingStarted, self._idempotent_post("/trainings", body, idempotency_key, retries))

    def list_trainings(self, limit: int | None = None, offset: int = 0) -> list[Training]:
        params = {"limit": limit, "offset": offset} if limit is not None else None
        return cast(list[Training], self.request("GET", "/trainings", params=params))

    def get_training(self, job_id: str) -> Training:
        return cast(Training, self.request("GET", f"/trainings/{_segment(job_id)}"))

    def stop_training(self, job_id: str) -> dict[str, str]:
        return cast(dict[str, str], self.request("POST", f"/trainings/{_segment(job_id)}/stop"))

    def resume_training(self, job_id: str) -> dict[str, Any]:
        """Resumes a stopped or failed job from its newest uploaded checkpoint: `{message, job_id,
        status, resumed_from_step, airflow_run_id}`; `ApiError` 409 with the reason otherwise."""
        return cast(dict[str, Any], self.request("POST", f"/trainings/{_segment(job_id)}/resume"))

    def get_evaluation(self, job_id: str) -> dict[str, Any]:
        """The held-out evaluation of the adapter against the base model (`adapter`, `base`:
        metrics, per-class figures, confusion matrix; captioning `samples`); 409 until evaluated."""
        return cast(dict[str, Any], self.request("GET", f"/trainings/{_segment(job_id)}/evaluation"))

    def get_adapter(self, job_id: str) -> dict[str, Any]:
        """`{job_id, partial, expires_at, files: [{name, size_bytes, sha256, download_url}]}`;
        `ApiError` 409 while there is nothing to download."""
        return cast(dict[str, Any], self.request("GET", f"/trainings/{_segment(job_id)}/adapter"))

    def list_checkpoints(self, job_id: str) -> list[dict[str, Any]]:
        return cast(list[dict[str, Any]], self.request("GET", f"/trainings/{_segment(job_id)}/checkpoints"))

    def download_adapter(self, job_id: str, folder: str | Path,
                         advance: Callable[[int], None] | None = None) -> dict[str, Any]:
        """Downloads every file of the job's adapter into `folder` through its pre-signed URL,
        each to a temporary name, verified against its SHA-256 and size, then renamed (a failed
        or corrupt download leaves no file under the real name). Returns the listing."""
        import hashlib
        import os

        listing = self.get_adapter(job_id)
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        for entry in listing["files"]:
            name = Path(entry["name"]).name
            target, partial = folder / name, folder / f".{name}.part"
            digest, size = hashlib.sha256(), 0
            try:
                with httpx.stream("GET", entry["download_url"], timeout=self._http.timeout) as resp, \
                        partial.open("wb") as out:
                    if resp.status_code != 200:
                        raise ApiError(f"download of {name} failed: HTTP {resp.status_code} (the links expire; "
                                       "run the command again for fresh ones)", resp.status_code)
                    for chunk in resp.iter_bytes(1 << 20):
                        out.write(chunk)
                        digest.update(chunk)
                        size += len(chunk)
                        if advance:
                            advance(len(chunk))
                if size != entry["size_bytes"] or digest.hexdigest() != entry["sha256"]:
                    raise ApiError(f"{name}: downloaded {size} bytes with SHA-256 {digest.hexdigest()}, expected "
                                   f"{entry['size_bytes']} bytes with {entry['sha256']}; nothing kept")
                os.replace(partial, target)
            except httpx.HTTPError as exc:
                raise ApiError(f"download of {name} failed: {exc}") from None
            finally:
                partial.unlink(missing_ok=True)
        return listing

    def wait_for_training(self, job_id: str, *, poll_s: float = 1.0, timeout_s: float | None = None,
                          on_update: Callable[[Training], None] | None = None) -> Training:
        """Polls the job until it is completed, failed or stopped; returns its last detail."""
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        for job in self._poll(lambda: self.get_training(job_id), poll_s, deadline):
            if on_update:
                on_update(job)
            if job.get("status") in TERMINAL_TRAINING:
                return job
        raise ApiError(f"job {job_id} has not ended after {timeout_s} s")

    def _poll(self, read: Callable[[], Any], poll_s: float, deadline: float | None, max_transient: int = 30):
        """Yields `read()` every `poll_s` until the deadline, riding out a few transient errors
        (the API restarting, Airflow briefly unreachable)."""
        failures = 0
        while deadline is None or time.monotonic() < deadline:
            try:
                value = read()
            except ApiError as exc:
                failures += 1
                if not exc.transient or failures > max_transient:
                    raise
            else:
                failures = 0
                yield value
            time.sleep(poll_s)


def _detail(resp: httpx.Response) -> str:
    try:
        body = resp.json()
    except ValueError:
        body = None
    if isinstance(body, dict) and body.get("detail"):
        detail = body["detail"]
        return detail if isinstance(detail, str) else str(detail)
    text = resp.text.strip().splitlines()[0][:200] if resp.text.strip() else ""
    return f"HTTP {resp.status_code} from {resp.request.method} {resp.request.url.path}" + (f": {text}" if text else "")


def _segment(value: str) -> str:
    """An id as one URL path segment (no `/`, `..` tricks)."""
    from urllib.parse import quote

    return quote(value, safe="")
