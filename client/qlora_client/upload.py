"""Dataset uploads: one pre-signed PUT for small archives, an S3 multipart upload with pre-signed
part URLs above a threshold (100 MiB; S3 takes at most 5 GiB in one PUT).

Multipart: parts go up in parallel and each is retried (a fresh URL when S3 says it expired).
The upload's ids are kept in a state file in the user's config folder until it completes, so
that the same command on the same file resumes it: the API lists the parts S3 already holds
(each checked against the local bytes by size and MD5) and only the others are sent. Ctrl-C
leaves the state for a resume; `resume=False` aborts the old upload and starts anew; deleting
the dataset (`qlora datasets delete ID`) aborts it on the server.

A single PUT that fails or is interrupted deletes its dataset: nothing is left behind.
"""

from __future__ import annotations

import hashlib
import os
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import FIRST_EXCEPTION, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx

from qlora_client import config
from qlora_client.client import ApiError

if TYPE_CHECKING:
    from qlora_client.client import Client

MIB = 1024**2
DEFAULT_MULTIPART_THRESHOLD = 100 * MIB
MIN_PART_BYTES = 5 * MIB  # S3's smallest part (every part but the last)
CHUNK = MIB
URL_BATCH = 1000  # the API's most URLs per answer

Advance = Callable[[int], None]  # bytes sent since the last call (negative: a retried part starts over)
Notify = Callable[[str], None]


class UploadFailed(ApiError):
    """The upload could not finish. `dataset_id` is set when a multipart upload stays resumable."""

    def __init__(self, detail: str, dataset_id: str | None = None, resumable: bool = False) -> None:
        super().__init__(detail)
        self.dataset_id = dataset_id
        self.resumable = resumable


class UploadInterrupted(UploadFailed):
    """Ctrl-C during the upload."""


@dataclass(frozen=True)
class UploadResult:
    dataset_id: str
    size_bytes: int
    multipart: bool
    part_count: int = 1
    parts_resumed: int = 0


def multipart_threshold() -> int:
    """Bytes above which archives go up in parts: `QLORA_MULTIPART_THRESHOLD` (bytes), default 100 MiB."""
    raw = os.environ.get("QLORA_MULTIPART_THRESHOLD")
    if not raw:
        return DEFAULT_MULTIPART_THRESHOLD
    try:
        value = int(raw)
    except ValueError:
        raise ApiError(f"QLORA_MULTIPART_THRESHOLD must be a number of bytes, got {raw!r}") from None
    return max(value, 0)


def upload_dataset(client: Client, path: Path, name: str, description: str = "", *,
                   advance: Advance | None = None, notify: Notify | None = None,
                   multipart_threshold_bytes: int | None = None, part_size_bytes: int | None = None,
                   resume: bool = True, concurrency: int | None = None, retries: int = 5,
                   state_dir: Path | None = None) -> UploadResult:
    """Uploads the archive at `path` as dataset `name` and completes the upload (the API starts
    validating it). `advance(n)` is told about bytes sent, `notify(line)` about what happens;
    `concurrency` parts go up at once (default `QLORA_UPLOAD_CONCURRENCY` or 4), each tried
    `retries` more times."""
    advance = advance or (lambda n: None)
    notify = notify or (lambda line: None)
    size = path.stat().st_size
    if size == 0:
        raise ApiError(f"{path} is empty")
    threshold = multipart_threshold() if multipart_threshold_bytes is None else multipart_threshold_bytes
    if size <= threshold:
        return _single_put(client, path, size, name, description, advance, retries)
    if concurrency is None:  # parts in flight at once
        concurrency = int(os.environ.get("QLORA_UPLOAD_CONCURRENCY") or 4)
    return _Multipart(client, path, size, name, description, advance, notify, part_size_bytes, resume,
                      max(1, concurrency), max(0, retries), state_dir or config.uploads_dir()).run()


#: waits between the attempts of a completion the API answered with a transient error
COMPLETE_RETRY_DELAYS_S = (2.0, 5.0, 10.0)


def completing(call: Callable[[], Any], delays: tuple[float, ...] = COMPLETE_RETRY_DELAYS_S) -> Any:
    """Completes an upload, retried while the API answers a transient error (503: S3 or Airflow
    busy or down; the API unreachable). Completing is idempotent on the server: a retry after an
    answer lost to a timeout (the validation run may already exist) carries on without a second
    run."""
    for delay in (*delays, None):
        try:
            return call()
        except ApiError as exc:
            if not exc.transient or delay is None:
                raise
            time.sleep(delay)
    return None


# --- one PUT ---------------------------------------------------------------------------------
def _single_put(client: Client, path: Path, size: int, name: str, description: str, advance: Advance,
                retries: int) -> UploadResult:
    started = client.upload_initiate(path.name, name, description, file_size_bytes=size)
    dataset_id = started["dataset_id"]
    try:
        with httpx.Client(timeout=httpx.Timeout(60.0, connect=10.0)) as s3:
            _put_with_retries(s3, lambda: started["upload_url"], path, 0, size, advance, retries, None, "the archive")
        completing(lambda: client.upload_complete(dataset_id, started["s3_key"]))
    except BaseException as exc:
        try:  # nothing left behind: the dataset was never completed
            client.delete_dataset(dataset_id)
        except Exception:  # noqa: BLE001 - the expiry sweep deletes it later anyway
            pass
        if isinstance(exc, KeyboardInterrupt):
            raise UploadInterrupted(f"upload interrupted; dataset {dataset_id} was deleted") from None
        if isinstance(exc, UploadFailed):
            raise UploadFailed(f"{exc.detail}; dataset {dataset_id} was deleted") from None
        raise
    return UploadResult(dataset_id, size, multipart=False)


class _Stopped(Exception):
    pass


def _chunks(path: Path, offset: int, length: int, sent: list[int], advance: Advance,
            stop: threading.Event | None) -> Iterator[bytes]:
    with path.open("rb") as f:
        f.seek(offset)
        left = length
        while left > 0:
            if stop is not None and stop.is_set():
                raise _Stopped()
            data = f.read(min(CHUNK, left))
            if not data:
                raise UploadFailed(f"{path} changed while it was being uploaded (shorter than expected)")
            left -= len(data)
            sent[0] += len(data)
            advance(len(data))
            yield data


def _put_with_retries(http: httpx.Client, url_of: Callable[[], str], path: Path, offset: int, length: int,
                      advance: Advance, retries: int, stop: threading.Event | None, what: str,
                      on_expired: Callable[[], None] | None = None) -> str:
    """PUTs `length` bytes of `path` from `offset` to a pre-signed URL; returns the ETag."""
    problem = ""
    for attempt in range(retries + 1):
        if attempt:
            time.sleep(min(0.5 * 2 ** (attempt - 1), 8.0))
        if stop is not None and stop.is_set():
            raise KeyboardInterrupt  # Ctrl-C meanwhile: no new attempt
        sent = [0]
        try:
            resp = http.put(url_of(), content=_chunks(path, offset, length, sent, advance, stop),
                            headers={"content-length": str(length)})
        except _Stopped:
            advance(-sent[0])
            raise KeyboardInterrupt from None
        except httpx.TransportError as exc:
            advance(-sent[0])
            problem = f"{type(exc).__name__}: {exc}"
            continue
        if resp.status_code == 200:
            return resp.headers.get("etag", "")
        advance(-sent[0])
        problem = f"S3 answered {resp.status_code}: {_s3_error(resp)}"
        if resp.status_code == 403 and on_expired is not None:
            on_expired()  # the URL expired: ask the API for a new one
        elif resp.status_code == 404:
            break  # NoSuchUpload: aborted (deleted, or expired and swept); no retry helps
        elif resp.status_code < 500 and resp.status_code not in (403, 408, 429):
            break
    raise UploadFailed(f"could not upload {what}: {problem}")


def _s3_error(resp: httpx.Response) -> str:
    import re

    code = re.search(r"<Code>([^<]+)</Code>", resp.text)
    message = re.search(r"<Message>([^<]+)</Message>", resp.text)
    return ": ".join(m.group(1) for m in (code, message) if m) or resp.reason_phrase


# --- multipart -------------------------------------------------------------------------------
class _Multipart:
    def __init__(self, client: Client, path: Path, size: int, name: str, description: str, advance: Advance,
                 notify: Notify, part_size: int | None, resume: bool, concurrency: int, retries: int,
                 state_dir: Path) -> None:
        self.client, self.path, self.size, self.name, self.description = client, path, size, name, description
        self.notify, self.part_size, self.resume = notify, part_size, resume
        self.concurrency, self.retries = concurrency, retries
        self._lock = threading.Lock()
        self._advance = advance
        stat = path.stat()
        key = hashlib.sha256(f"{client.api_url}\n{path.resolve()}\n{size}\n{stat.st_mtime_ns}".encode()).hexdigest()
        self.state_path = state_dir / f"{key[:32]}.json"
        self.urls: dict[int, str] = {}
        self.state: dict[str, Any] = {}

    def advance(self, n: int) -> None:
        with self._lock:
            self._advance(n)

    def run(self) -> UploadResult:
        uploaded = self._resume() if self.resume else self._abort_previous()
        if not self.state:
            self._start()
        dataset_id, count, part_size = self.state["dataset_id"], self.state["part_count"], self.state["part_size"]
        etags = {n: etag for n, etag in uploaded.items()}
        self.advance(sum(self._length(n) for n in etags))
        missing = [n for n in range(1, count + 1) if n not in etags]
        try:
            self._upload(missing, etags)
        except KeyboardInterrupt:
            raise UploadInterrupted(
                f"upload interrupted ({len(etags)} of {count} parts of dataset {dataset_id} are in S3)",
                dataset_id, resumable=True) from None
        except UploadFailed as exc:
            raise UploadFailed(f"{exc.detail} (dataset {dataset_id}: {len(etags)} of {count} parts are in S3)",
                               dataset_id, resumable=True) from None
        completing(lambda: self.client.multipart_complete(dataset_id, self.state["upload_id"], etags))
        self.state_path.unlink(missing_ok=True)
        return UploadResult(dataset_id, self.size, multipart=True, part_count=count, parts_resumed=len(uploaded))

    # the upload's ids, kept until it completes
    def _start(self) -> None:
        started = self.client.multipart_initiate(self.path.name, self.name, self.size, self.description,
                                                 self.part_size)
        self.state = {"api_url": self.client.api_url, "path": str(self.path.resolve()), "size": self.size,
                      "dataset_id": started["dataset_id"], "upload_id": started["upload_id"],
                      "s3_key": started["s3_key"], "part_size": started["part_size_bytes"],
                      "part_count": started["part_count"]}
        config.write_private(self.state_path, self.state)
        self.urls = {p["part_number"]: p["url"] for p in started["parts"]}
        self.notify(f"Uploading {self.path.name} in {started['part_count']} parts of "
                    f"{_mib(started['part_size_bytes'])} as dataset {started['dataset_id']}")

    def _saved(self) -> dict[str, Any] | None:
        state = config.read_json(self.state_path)
        return state if isinstance(state, dict) and state.get("upload_id") else None

    def _abort_previous(self) -> dict[int, str]:
        state = self._saved()
        if state:
            try:
                self.client.multipart_abort(state["dataset_id"])
                self.notify(f"Aborted the earlier upload of this file (dataset {state['dataset_id']})")
            except ApiError as exc:
                if exc.status not in (404, 409):
                    raise
            self.state_path.unlink(missing_ok=True)
        return {}

    def _resume(self) -> dict[int, str]:
        state = self._saved()
        if not state:
            return {}
        try:
            listed = self.client.multipart_parts(state["dataset_id"], state["upload_id"])
        except ApiError as exc:
            if exc.status not in (400, 404):
                raise
            self.notify(f"The earlier upload of this file cannot be resumed ({exc.detail}); starting a new one")
            self.state_path.unlink(missing_ok=True)
            return {}
        self.state = state
        held = {}
        for part in listed["uploaded"]:
            n = part["part_number"]
            if 1 <= n <= state["part_count"] and part["size_bytes"] == self._length(n) and self._same_bytes(n, part["etag"]):
                held[n] = part["etag"]
        self.notify(f"Resuming the upload of dataset {state['dataset_id']}: {len(held)} of {state['part_count']} "
                    "parts are already in S3")
        return held

    def _length(self, n: int) -> int:
        part_size = self.state["part_size"]
        return min(part_size, self.size - (n - 1) * part_size)

    def _same_bytes(self, n: int, etag: str) -> bool:
        """A part's ETag is its MD5 (S3 without KMS encryption): compare with the local bytes."""
        digest = etag.strip('"').lower()
        if len(digest) != 32 or any(c not in "0123456789abcdef" for c in digest):
            return True  # not an MD5 (an encrypted bucket): the size matched
        md5 = hashlib.md5(usedforsecurity=False)
        with self.path.open("rb") as f:
            f.seek((n - 1) * self.state["part_size"])
            left = self._length(n)
            while left > 0:
                data = f.read(min(CHUNK, left))
                if not data:
                    return False
                md5.update(data)
                left -= len(data)
        return md5.hexdigest() == digest

    def _fetch_urls(self, numbers: list[int]) -> None:
        for start in range(0, len(numbers), URL_BATCH):
            got = self.client.multipart_parts(self.state["dataset_id"], self.state["upload_id"],
                                              numbers[start:start + URL_BATCH])
            with self._lock:
                self.urls.update({p["part_number"]: p["url"] for p in got["parts"]})

    def _url(self, n: int) -> str:
        with self._lock:
            url = self.urls.get(n)
        if url is None:
            self._fetch_urls([n])
            url = self.urls[n]
        return url

    def _expired(self, n: int) -> None:
        with self._lock:
            self.urls.pop(n, None)

    def _upload(self, missing: list[int], etags: dict[int, str]) -> None:
        if not missing:
            return
        unknown = [n for n in missing if n not in self.urls]
        if unknown:
            self._fetch_urls(unknown)
        stop = threading.Event()
        http = httpx.Client(timeout=httpx.Timeout(120.0, connect=10.0),
                            limits=httpx.Limits(max_connections=self.concurrency))
        pool = ThreadPoolExecutor(self.concurrency, thread_name_prefix="qlora-part")

        def one(n: int) -> tuple[int, str]:
            offset = (n - 1) * self.state["part_size"]
            etag = _put_with_retries(http, lambda: self._url(n), self.path, offset, self._length(n), self.advance,
                                     self.retries, stop, f"part {n}", on_expired=lambda: self._expired(n))
            return n, etag

        futures: list[Future[tuple[int, str]]] = [pool.submit(one, n) for n in missing]
        try:
            pending = set(futures)
            while pending:
                done, pending = wait(pending, timeout=0.2, return_when=FIRST_EXCEPTION)
                for future in done:
                    n, etag = future.result()  # raises the part's failure
                    etags[n] = etag
        except BaseException:
            stop.set()
            for future in futures:
                future.cancel()
            pool.shutdown(wait=True)
            for future in futures:  # parts that finished meanwhile still count
                if future.done() and not future.cancelled() and future.exception() is None:
                    n, etag = future.result()
                    etags[n] = etag
            http.close()
            raise
        pool.shutdown(wait=True)
        http.close()


def _mib(n: int) -> str:
    return f"{n / MIB:.0f} MiB" if n >= MIB else f"{n} bytes"


def forget_uploads_of(dataset_id: str, state_dir: Path | None = None) -> int:
    """Deletes the local state of uploads of `dataset_id` (after the dataset was deleted)."""
    folder = state_dir or config.uploads_dir()
    gone = 0
    for path in folder.glob("*.json") if folder.is_dir() else ():
        state = config.read_json(path)
        if isinstance(state, dict) and state.get("dataset_id") == dataset_id:
            path.unlink(missing_ok=True)
            gone += 1
    return gone
