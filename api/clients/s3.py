"""Thin boto3 wrapper for what the API does in S3: presign (PUT, GET), HEAD, list, read JSON, delete a prefix,
multipart uploads (create, presign parts, list parts, complete, abort)."""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from typing import Any

import boto3
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError

from api.core.config import Settings
from training.s3 import MISSING_CODES

log = logging.getLogger(__name__)

#: the pipeline's "no such object" codes, and a bucket not created yet reads as empty too
_NOT_FOUND = MISSING_CODES | {"NoSuchBucket"}


class S3Unavailable(Exception):
    """S3 could not be reached or refused the request."""


class S3Rejected(Exception):
    """S3 answered with a client error about the request itself (`code`: S3's error code,
    e.g. `NoSuchUpload`, `InvalidPart`, `EntityTooSmall`)."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message


#: the S3 error codes of a multipart request that the caller got wrong (not an outage)
_MULTIPART_CLIENT_CODES = frozenset({"NoSuchUpload", "InvalidPart", "InvalidPartOrder", "EntityTooSmall",
                                     "EntityTooLarge", "InvalidArgument", "MalformedXML"})


@dataclass(frozen=True)
class UploadedPart:
    part_number: int
    etag: str
    size: int


@dataclass(frozen=True)
class PendingUpload:
    key: str
    upload_id: str


@dataclass(frozen=True)
class ObjectInfo:
    key: str
    size: int
    content_type: str | None
    #: S3's ETag, quotes included (what `If-Match` compares against)
    etag: str | None = None


def _client(settings: Settings, endpoint_url: str | None):  # type: ignore[no-untyped-def]
    return boto3.client(
        "s3",
        endpoint_url=endpoint_url,
        region_name=settings.aws_region,
        aws_access_key_id=settings.aws_access_key_id,
        aws_secret_access_key=settings.aws_secret_access_key,
        config=Config(
            signature_version="s3v4",
            s3={"addressing_style": "path"} if endpoint_url else {},
            connect_timeout=5,
            read_timeout=30,
            retries={"max_attempts": 2, "mode": "standard"},
        ),
    )


class S3Storage:
    """The bucket of the platform. Presigned URLs use the public endpoint when one is set."""

    def __init__(self, settings: Settings) -> None:
        self.bucket = settings.s3_bucket
        self.presign_expiry_s = settings.presigned_url_expiry_s
        self._client = _client(settings, settings.s3_endpoint_url)
        self._endpoint_url = settings.s3_endpoint_url
        self._region = settings.aws_region
        self._keys = (settings.aws_access_key_id, settings.aws_secret_access_key)
        self._health_client = None
        public = settings.public_s3_endpoint_url
        self._presign_client = _client(settings, public) if public else self._client

    def ensure_bucket(self) -> None:
        try:
            self._client.head_bucket(Bucket=self.bucket)
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") not in _NOT_FOUND:
                raise S3Unavailable(f"cannot access bucket {self.bucket}: {exc}") from exc
            self._client.create_bucket(Bucket=self.bucket)
        except BotoCoreError as exc:
            raise S3Unavailable(f"cannot reach S3: {exc}") from exc

    def check(self) -> None:
        """Raises unless the bucket answers `HeadBucket` within a few seconds (the health check:
        its own client, short timeouts, no retries)."""
        if self._health_client is None:
            self._health_client = boto3.client(
                "s3", endpoint_url=self._endpoint_url, region_name=self._region,
                aws_access_key_id=self._keys[0], aws_secret_access_key=self._keys[1],
                config=Config(signature_version="s3v4", s3={"addressing_style": "path"} if self._endpoint_url else {},
                              connect_timeout=2, read_timeout=3, retries={"max_attempts": 1, "mode": "standard"}))
        self._health_client.head_bucket(Bucket=self.bucket)

    def presign_put(self, key: str, expires_in: int | None = None, content_length: int | None = None) -> str:
        """A pre-signed `PUT`; with `content_length`, `Content-Length` is a signed header, so S3
        refuses (403 `SignatureDoesNotMatch`) a body of any other size."""
        params: dict[str, Any] = {"Bucket": self.bucket, "Key": key}
        if content_length is not None:
            params["ContentLength"] = content_length
        return self._presign("put_object", params, "PUT", expires_in, "an upload URL")

    def presign_get(self, key: str, expires_in: int | None = None, file_name: str | None = None) -> str:
        """A GET URL that works without credentials until it expires (`file_name`: the name a
        browser saves it under)."""
        params: dict[str, Any] = {"Bucket": self.bucket, "Key": key}
        if file_name:
            params["ResponseContentDisposition"] = f'attachment; filename="{file_name}"'
        return self._presign("get_object", params, "GET", expires_in, "a download URL")

    def _presign(self, operation: str, params: dict[str, Any], method: str, expires_in: int | None,
                 what: str) -> str:
        try:
            return self._presign_client.generate_presigned_url(
                operation, Params=params, ExpiresIn=expires_in or self.presign_expiry_s, HttpMethod=method)
        except (BotoCoreError, ClientError) as exc:
            raise S3Unavailable(f"cannot presign {what}: {exc}") from exc

    def list_prefix(self, prefix: str) -> dict[str, int]:
        """{key: size} of every object under `prefix` (empty when there is none)."""
        found: dict[str, int] = {}
        try:
            for page in self._client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=prefix):
                found.update({obj["Key"]: int(obj["Size"]) for obj in page.get("Contents", [])})
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in _NOT_FOUND:
                return found
            raise S3Unavailable(f"cannot list s3://{self.bucket}/{prefix}: {exc}") from exc
        except BotoCoreError as exc:
            raise S3Unavailable(f"cannot reach S3: {exc}") from exc
        return found

    def head(self, key: str) -> ObjectInfo | None:
        try:
            resp = self._client.head_object(Bucket=self.bucket, Key=key)
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in _NOT_FOUND:
                return None
            raise S3Unavailable(f"cannot HEAD s3://{self.bucket}/{key}: {exc}") from exc
        except BotoCoreError as exc:
            raise S3Unavailable(f"cannot reach S3: {exc}") from exc
        return ObjectInfo(key=key, size=int(resp["ContentLength"]), content_type=resp.get("ContentType"),
                          etag=resp.get("ETag"))

    def get_json(self, key: str) -> Any | None:
        """The JSON document at `key`, or None when there is none."""
        try:
            body = self._client.get_object(Bucket=self.bucket, Key=key)["Body"].read()
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in _NOT_FOUND:
                return None
            raise S3Unavailable(f"cannot read s3://{self.bucket}/{key}: {exc}") from exc
        except BotoCoreError as exc:
            raise S3Unavailable(f"cannot reach S3: {exc}") from exc
        try:
            return json.loads(body)
        except ValueError:
            log.warning("s3://%s/%s is not valid JSON", self.bucket, key)
            return None

    def put_json(self, key: str, value: Any) -> None:
        """Writes a small JSON document at `key`."""
        try:
            self._client.put_object(Bucket=self.bucket, Key=key, Body=json.dumps(value).encode(),
                                    ContentType="application/json")
        except (BotoCoreError, ClientError) as exc:
            raise S3Unavailable(f"cannot write s3://{self.bucket}/{key}: {exc}") from exc

    def delete_prefix(self, prefix: str) -> int:
        """Deletes every object under `prefix` (paginated); returns how many were deleted."""
        if not prefix or not prefix.endswith("/"):
            raise ValueError(f"refusing to delete a prefix that is not a folder: {prefix!r}")
        deleted = 0
        try:
            paginator = self._client.get_paginator("list_objects_v2")
            for page in paginator.paginate(Bucket=self.bucket, Prefix=prefix):
                keys = [{"Key": obj["Key"]} for obj in page.get("Contents", [])]
                for start in range(0, len(keys), 1000):
                    batch = keys[start : start + 1000]
                    resp = self._client.delete_objects(Bucket=self.bucket, Delete={"Objects": batch, "Quiet": True})
                    if resp.get("Errors"):
                        first = resp["Errors"][0]
                        raise S3Unavailable(f"cannot delete {first.get('Key')}: {first.get('Message')}")
                    deleted += len(batch)
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") == "NoSuchBucket":
                return deleted
            raise S3Unavailable(f"cannot delete s3://{self.bucket}/{prefix}: {exc}") from exc
        except BotoCoreError as exc:
            raise S3Unavailable(f"cannot reach S3: {exc}") from exc
        return deleted

    # --- multipart uploads -------------------------------------------------------------------
    def _multipart_error(self, what: str, exc: Exception) -> Exception:
        if isinstance(exc, ClientError):
            error = exc.response.get("Error", {})
            if error.get("Code") in _MULTIPART_CLIENT_CODES:
                return S3Rejected(str(error.get("Code")), str(error.get("Message") or ""))
        return S3Unavailable(f"cannot {what}: {exc}")

    def create_multipart(self, key: str) -> str:
        """Starts a multipart upload to `key`; returns its upload id."""
        try:
            return str(self._client.create_multipart_upload(Bucket=self.bucket, Key=key)["UploadId"])
        except (BotoCoreError, ClientError) as exc:
            raise self._multipart_error(f"start a multipart upload to s3://{self.bucket}/{key}", exc) from exc

    def presign_part(self, key: str, upload_id: str, part_number: int, expires_in: int | None = None,
                     content_length: int | None = None) -> str:
        """A pre-signed `PUT` URL for one part (S3's `UploadPart`; its answer's `ETag` header is
        what completing needs); with `content_length` S3 refuses a part of any other size."""
        params: dict[str, Any] = {"Bucket": self.bucket, "Key": key, "UploadId": upload_id, "PartNumber": part_number}
        if content_length is not None:
            params["ContentLength"] = content_length
        return self._presign("upload_part", params, "PUT", expires_in, "a part URL")

    def list_parts(self, key: str, upload_id: str) -> list[UploadedPart]:
        """The parts uploaded so far (paginated); `S3Rejected('NoSuchUpload')` when the upload
        is unknown for `key` (aborted, completed, or another key's)."""
        parts: list[UploadedPart] = []
        try:
            paginator = self._client.get_paginator("list_parts")
            for page in paginator.paginate(Bucket=self.bucket, Key=key, UploadId=upload_id):
                parts.extend(UploadedPart(int(p["PartNumber"]), str(p["ETag"]), int(p["Size"]))
                             for p in page.get("Parts", []))
        except (BotoCoreError, ClientError) as exc:
            raise self._multipart_error("list the uploaded parts", exc) from exc
        return sorted(parts, key=lambda p: p.part_number)

    def complete_multipart(self, key: str, upload_id: str, parts: list[tuple[int, str]]) -> None:
        """Assembles the object from `(part_number, etag)` pairs; `S3Rejected` for a wrong part,
        ETag, order, a part too small, or an unknown upload."""
        body = {"Parts": [{"PartNumber": number, "ETag": etag} for number, etag in sorted(parts)]}
        try:
            self._client.complete_multipart_upload(Bucket=self.bucket, Key=key, UploadId=upload_id,
                                                   MultipartUpload=body)
        except (BotoCoreError, ClientError) as exc:
            raise self._multipart_error(f"complete the multipart upload to s3://{self.bucket}/{key}", exc) from exc

    def pending_uploads(self, prefix: str) -> list[PendingUpload]:
        """The multipart uploads started and neither completed nor aborted under `prefix`."""
        found: list[PendingUpload] = []
        try:
            paginator = self._client.get_paginator("list_multipart_uploads")
            for page in paginator.paginate(Bucket=self.bucket, Prefix=prefix):
                found.extend(PendingUpload(u["Key"], u["UploadId"]) for u in page.get("Uploads", []))
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") == "NoSuchBucket":
                return found
            raise S3Unavailable(f"cannot list the multipart uploads under s3://{self.bucket}/{prefix}: {exc}") from exc
        except BotoCoreError as exc:
            raise S3Unavailable(f"cannot reach S3: {exc}") from exc
        return found

    def abort_uploads(self, prefix: str) -> int:
        """Aborts every multipart upload pending under `prefix` (S3 then frees their parts);
        returns how many were aborted."""
        if not prefix or not prefix.endswith("/"):
            raise ValueError(f"refusing to abort uploads under a prefix that is not a folder: {prefix!r}")
        aborted = 0
        for upload in self.pending_uploads(prefix):
            try:
                self._client.abort_multipart_upload(Bucket=self.bucket, Key=upload.key, UploadId=upload.upload_id)
            except ClientError as exc:
                if exc.response.get("Error", {}).get("Code") != "NoSuchUpload":  # gone already: fine
                    raise S3Unavailable(f"cannot abort the upload to s3://{self.bucket}/{upload.key}: {exc}") from exc
            except BotoCoreError as exc:
                raise S3Unavailable(f"cannot reach S3: {exc}") from exc
            aborted += 1
        return aborted
