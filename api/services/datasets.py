"""The dataset lifecycle: initiate an upload (one pre-signed PUT, or an S3 multipart upload with
pre-signed part URLs), complete it, reconcile with Airflow and the validation report, expire
uploads never completed (aborting their multipart uploads), delete.

    awaiting_upload --complete--> validating --run success + valid report--> ready
          |                           `--run failed / invalid report / run lost--> failed
          `--not completed in time (objects deleted)--> expired
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import RowMapping, func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from api.clients.airflow import AirflowApi, AirflowError, DagRun
from api.clients.s3 import S3Rejected, S3Storage, S3Unavailable, UploadedPart
from api.core.config import Settings
from api.models import ACTIVE_TRAINING_STATUSES, Dataset, DatasetStage, IdempotencyKey, TrainingJob, User
from api.models.base import new_id, utcnow
from api.schemas.datasets import (
    MULTIPART_DEFAULT_PART_BYTES,
    MULTIPART_MAX_PART_BYTES,
    MULTIPART_MAX_PARTS,
    MULTIPART_MAX_URLS,
    MULTIPART_MIN_PART_BYTES,
    MultipartInitiateRequest,
    UploadInitiateRequest,
)
from api.services import idempotency
from api.services.errors import Conflict, InvalidInput, NotFound, TooLarge
from api.services.file_names import check_file_type, sanitize_file_name
from training import s3 as s3_layout  # the S3 key layout

log = logging.getLogger(__name__)

#: a validating dataset whose run Airflow does not know after this long ends failed
LOST_RUN_GRACE = timedelta(minutes=5)
#: report keys copied into `Dataset.stats`
STATS_KEYS = (
    "clip_count", "tasks", "labels", "captions", "splits", "video", "clips", "source", "errors", "error_count",
    "row_numbering",
)
MAX_ERRORS_IN_DETAIL = 10
UNSETTLED_STAGES = (DatasetStage.AWAITING_UPLOAD.value, DatasetStage.VALIDATING.value)
#: what the list endpoint reads (no stats JSON, no ORM objects)
LIST_COLUMNS = (
    Dataset.id,
    Dataset.name,
    Dataset.description,
    Dataset.s3_key,
    Dataset.status,
    Dataset.stage,
    Dataset.error,
    Dataset.created_at,
    Dataset.file_count,
    Dataset.total_size_bytes,
)


#: the `Idempotency-Key` scope of upload initiations
INITIATE_SCOPE = "POST /v1/datasets/upload-initiate"
MULTIPART_INITIATE_SCOPE = "POST /v1/datasets/multipart/initiate"


def validation_run_id(dataset_id: str) -> str:
    return f"validate-{dataset_id}"


@dataclass(frozen=True)
class MultipartUpload:
    """A multipart upload as the API hands it out: pre-signed URLs of some of its parts."""

    dataset: Dataset
    upload_id: str
    part_size: int
    part_count: int
    urls: list[tuple[int, str]]
    expires_at: datetime


#: what S3's refusal of a completion means for the user
_COMPLETE_REFUSALS = {
    "InvalidPart": "S3 holds no such part with that ETag: upload every listed part and send the ETag each PUT "
                   "answered with",
    "InvalidPartOrder": "the parts must be listed in ascending part-number order",
    "EntityTooSmall": f"every part but the last must be at least {MULTIPART_MIN_PART_BYTES} bytes (5 MiB)",
}


class DatasetService:
    """One request's (or one reconcile pass's) view of the datasets."""

    def __init__(self, session: Session, s3: S3Storage, airflow: AirflowApi, settings: Settings) -> None:
        self.session = session
        self.s3 = s3
        self.airflow = airflow
        self.settings = settings

    # --- queries ----------------------------------------------------------------------------
    def _owned(self, owner: User, dataset_id: str) -> Dataset:
        dataset = self.session.get(Dataset, dataset_id)
        if dataset is None or dataset.owner_id != owner.id:
            raise NotFound("Dataset not found")
        return dataset

    def get(self, owner: User, dataset_id: str) -> Dataset:
        dataset = self._owned(owner, dataset_id)
        self.refresh([dataset])
        return dataset

    def list(self, owner: User, limit: int | None = None, offset: int = 0) -> Sequence[RowMapping]:
        """The owner's datasets, newest first (optionally one page), as plain rows of `LIST_COLUMNS`.

        Only unsettled datasets (awaiting upload or validating) are loaded as ORM objects and
        reconciled (in bulk); the list itself is one column query, which keeps 1,000 rows cheap.
        """
        unsettled = self.session.scalars(
            select(Dataset).where(Dataset.owner_id == owner.id, Dataset.stage.in_(UNSETTLED_STAGES))
        ).all()
        self.refresh(unsettled)
        return (
            self.session.execute(
                select(*LIST_COLUMNS)
                .where(Dataset.owner_id == owner.id)
                .order_by(Dataset.created_at.desc(), Dataset.id)
                .offset(offset)
                .limit(limit)
            )
            .mappings()
            .all()
        )

    def count(self, owner: User) -> int:
        """How many datasets the owner has (the list's `X-Total-Count`)."""
        return self.session.scalar(select(func.count()).select_from(Dataset).where(Dataset.owner_id == owner.id)) or 0

    # --- upload -----------------------------------------------------------------------------
    def initiate(self, owner: User, request: UploadInitiateRequest,
                 idempotency_key: str | None = None) -> tuple[Dataset, str, bool]:
        """A new dataset awaiting its upload and its pre-signed PUT URL; the last item says whether
        the answer is a replay of `idempotency_key`'s first answer (see `_replay_initiate`)."""
        key = idempotency.check_key(idempotency_key)
        digest = idempotency.body_hash(request.model_dump(mode="json", exclude_unset=True)) if key else ""
        if key:
            idempotency.lock_user(self.session, owner)  # until the commit: a parallel retry waits, then replays
            if (first := idempotency.replay(self.session, owner, INITIATE_SCOPE, key, digest)) is not None:
                return (*self._replay_initiate(owner, key, first), True)
        dataset = self._new_dataset(owner, request)
        size = request.file_size_bytes
        if size is not None:
            self._check_upload_limit(size, "file_size_bytes")
        self._check_quota(owner, size or 0, dataset.id, declared=size is not None)
        dataset.declared_size_bytes = size
        # presign first: if S3 is misconfigured no row is written. A declared size is signed
        # into the URL (Content-Length): S3 refuses a body of any other size
        url = self.s3.presign_put(dataset.s3_key, self.settings.presigned_url_expiry_s, content_length=size)
        self.session.add(dataset)
        if key:  # the URL is not kept (a credential); a replay signs a fresh one
            self.session.flush()
            idempotency.remember(self.session, owner, INITIATE_SCOPE, key, digest, 200,
                                 {"dataset_id": dataset.id, "s3_key": dataset.s3_key}, dataset.id)
        try:
            self.session.commit()
        except IntegrityError:  # the same key committed by a parallel request (SQLite: no row lock)
            self.session.rollback()
            if key and (first := idempotency.replay(self.session, owner, INITIATE_SCOPE, key, digest)) is not None:
                return (*self._replay_initiate(owner, key, first), True)
            raise
        return dataset, url, False

    def _replay_initiate(self, owner: User, key: str, first: IdempotencyKey) -> tuple[Dataset, str]:
        """The first answer to `key` again: the same dataset, with a PUT URL signed now (bound to
        the same declared size, expiring with the upload window at the latest; the first URL is
        not kept). Once that dataset no longer awaits its upload (completed, expired, deleted) no
        upload URL is handed out again: 409 naming it."""
        dataset = self._replayed_dataset(owner, key, first, gone="deleted", urls="upload URL is")
        expires_in, _ = self._part_url_expiry(dataset)
        self.session.rollback()  # releases the user's row lock; nothing was written
        url = self.s3.presign_put(dataset.s3_key, expires_in, content_length=dataset.declared_size_bytes)
        return dataset, url

    def _replayed_dataset(self, owner: User, key: str, first: IdempotencyKey, *, gone: str, urls: str) -> Dataset:
        """The dataset `key`'s first answer created, as long as it still awaits its upload; 409
        otherwise (`gone`: how it may have gone; `urls`: what is no longer issued for it)."""
        dataset = self.session.get(Dataset, first.resource_id) if first.resource_id else None
        if dataset is None or dataset.owner_id != owner.id:
            raise Conflict(f"Idempotency-Key {key!r} created dataset {first.resource_id}, which was {gone} since; "
                           "use a new key for a new upload")
        if dataset.stage != DatasetStage.AWAITING_UPLOAD.value or self._upload_expired(dataset, utcnow()):
            raise Conflict(f"Idempotency-Key {key!r} created dataset {dataset.id}, which no longer awaits its upload "
                           f"(stage {dataset.stage}); no new {urls} issued for it: use a new key for a new upload")
        return dataset

    def _check_upload_limit(self, size: int, field: str) -> None:
        if size > self.settings.max_upload_bytes:
            raise InvalidInput(f"{field} is {size}; the limit is {self.settings.max_upload_bytes} bytes")

    # --- the per-user storage quota ---------------------------------------------------------
    def storage_used(self, owner: User, exclude_id: str | None = None) -> int:
        """Bytes the owner's datasets hold or have reserved in S3: each uploaded archive (its
        declared size while the upload is awaited), plus the extracted files of ready ones."""
        rows = self.session.execute(
            select(Dataset.id, Dataset.stage, Dataset.declared_size_bytes, Dataset.upload_size_bytes,
                   Dataset.total_size_bytes).where(Dataset.owner_id == owner.id)
        ).all()
        used = 0
        for dataset_id, stage, declared, uploaded, extracted in rows:
            if dataset_id == exclude_id or stage == DatasetStage.EXPIRED.value:
                continue
            if stage == DatasetStage.AWAITING_UPLOAD.value:
                used += declared or 0
            else:
                used += (uploaded or 0) + ((extracted or 0) if stage == DatasetStage.READY.value else 0)
        return used

    def _check_quota(self, owner: User, size: int, dataset_id: str, *, declared: bool = True) -> None:
        """Refuses (413) an upload of `size` bytes that would take the owner past
        `QLORA_USER_STORAGE_QUOTA_BYTES`. The owner's row is locked first (PostgreSQL), so two
        uploads of one user are checked one after the other, each seeing the other's size."""
        quota = self.settings.user_storage_quota_bytes
        if not quota:
            return
        self.session.execute(select(User.id).where(User.id == owner.id).with_for_update())
        used = self.storage_used(owner, exclude_id=dataset_id)
        if used + size > quota or (not declared and used >= quota):
            needs = f"this upload needs {size}" if declared else "an upload of unknown size needs space left"
            raise TooLarge(
                f"Storage quota exceeded: your datasets use {used} of your {quota} bytes "
                f"(QLORA_USER_STORAGE_QUOTA_BYTES) and {needs}; delete datasets you no longer need"
            )

    def _new_dataset(self, owner: User, request: UploadInitiateRequest) -> Dataset:
        """A dataset awaiting its upload (not added to the session yet)."""
        check_file_type(request.file_type)
        safe_name = sanitize_file_name(request.file_name)
        name = request.dataset_name.strip()
        if not name:
            raise InvalidInput("dataset_name must not be blank")
        dataset_id = new_id()
        dataset = Dataset(
            id=dataset_id,
            owner_id=owner.id,
            name=name,
            description=request.dataset_description.strip(),
            file_name=safe_name,
            s3_key=s3_layout.dataset_upload_key(dataset_id, safe_name),
        )
        dataset.set_stage(DatasetStage.AWAITING_UPLOAD)
        return dataset

    # --- multipart upload (archives beyond a single PUT) ------------------------------------
    def initiate_multipart(self, owner: User, request: MultipartInitiateRequest,
                           idempotency_key: str | None = None) -> tuple[MultipartUpload, bool]:
        """A new dataset and its S3 multipart upload; URLs of the first parts, each binding its
        part's size (S3 refuses a part of any other size). The last item says whether the answer
        is a replay of `idempotency_key`'s first answer (`_replay_multipart`), as for `initiate`."""
        key = idempotency.check_key(idempotency_key)
        digest = idempotency.body_hash(request.model_dump(mode="json", exclude_unset=True)) if key else ""
        if key:
            idempotency.lock_user(self.session, owner)  # until the commit: a parallel retry waits, then replays
            if (first := idempotency.replay(self.session, owner, MULTIPART_INITIATE_SCOPE, key, digest)) is not None:
                return self._replay_multipart(owner, key, first), True
        if request.file_size_bytes is not None and request.file_size_bytes != request.size_bytes:
            raise InvalidInput(f"file_size_bytes ({request.file_size_bytes}) differs from size_bytes "
                               f"({request.size_bytes}); send one of them")
        self._check_upload_limit(request.size_bytes, "size_bytes")
        part_size = max(request.part_size_bytes or MULTIPART_DEFAULT_PART_BYTES,
                        math.ceil(request.size_bytes / MULTIPART_MAX_PARTS))
        if part_size > MULTIPART_MAX_PART_BYTES:
            raise InvalidInput(f"size_bytes is {request.size_bytes}: more than S3's 10,000 parts of 5 GiB")
        part_count = math.ceil(request.size_bytes / part_size)
        dataset = self._new_dataset(owner, request)
        self._check_quota(owner, request.size_bytes, dataset.id)
        dataset.declared_size_bytes = request.size_bytes
        dataset.part_size_bytes = part_size
        # S3 first: if it fails no row is written
        upload_id = self.s3.create_multipart(dataset.s3_key)
        try:
            expires_in, expires_at = self._part_url_expiry(dataset)
            urls = [(n, self._part_url(dataset, upload_id, n, expires_in))
                    for n in range(1, min(part_count, MULTIPART_MAX_URLS) + 1)]
            self.session.add(dataset)
            if key:  # the part URLs are not kept (credentials); a replay signs fresh ones
                self.session.flush()
                idempotency.remember(self.session, owner, MULTIPART_INITIATE_SCOPE, key, digest, 200,
                                     {"dataset_id": dataset.id, "s3_key": dataset.s3_key, "upload_id": upload_id},
                                     dataset.id)
            self.session.commit()
        except BaseException as exc:
            self.session.rollback()
            self.s3.abort_uploads(s3_layout.dataset_prefix(dataset.id))  # nothing left behind
            if key and isinstance(exc, IntegrityError):  # the same key committed by a parallel request (SQLite)
                if (first := idempotency.replay(self.session, owner, MULTIPART_INITIATE_SCOPE, key, digest)) is not None:
                    return self._replay_multipart(owner, key, first), True
            raise
        return MultipartUpload(dataset, upload_id, part_size, part_count, urls, expires_at), False

    def _replay_multipart(self, owner: User, key: str, first: IdempotencyKey) -> MultipartUpload:
        """The first answer to `key` again: the same dataset and S3 upload, with the URLs of its
        first parts signed now (the first ones are not kept); 409 once the dataset no longer awaits
        its upload (completed, expired, aborted or deleted), as `_replay_initiate`."""
        dataset = self._replayed_dataset(owner, key, first, gone="aborted or deleted", urls="upload URLs are")
        upload_id = str((first.response_body or {}).get("upload_id") or "")
        part_count = self._part_count(dataset) or 1
        expires_in, expires_at = self._part_url_expiry(dataset)
        self.session.rollback()  # releases the user's row lock; nothing was written
        urls = [(n, self._part_url(dataset, upload_id, n, expires_in))
                for n in range(1, min(part_count, MULTIPART_MAX_URLS) + 1)]
        return MultipartUpload(dataset, upload_id, dataset.part_size_bytes or 0, part_count, urls, expires_at)

    def multipart_parts(
        self, owner: User, dataset_id: str, upload_id: str, part_numbers: Sequence[int]
    ) -> tuple[Dataset, list[UploadedPart], list[tuple[int, str]], datetime]:
        """The parts S3 holds for the upload and fresh URLs for `part_numbers` (to resume)."""
        dataset = self._awaiting_upload(owner, dataset_id)
        uploaded = self._parts_of(dataset, upload_id)
        expires_in, expires_at = self._part_url_expiry(dataset)
        count = self._part_count(dataset)
        beyond = [n for n in part_numbers if count is not None and n > count]
        if beyond:
            raise InvalidInput(f"part {beyond[0]} does not exist: this upload has {count} parts")
        urls = [(n, self._part_url(dataset, upload_id, n, expires_in)) for n in part_numbers]
        return dataset, uploaded, urls, expires_at

    @staticmethod
    def _part_count(dataset: Dataset) -> int | None:
        if not dataset.declared_size_bytes or not dataset.part_size_bytes:
            return None  # initiated before sizes were recorded
        return math.ceil(dataset.declared_size_bytes / dataset.part_size_bytes)

    def _part_url(self, dataset: Dataset, upload_id: str, number: int, expires_in: int) -> str:
        """Part `number`'s URL, binding its size: the part size, the rest for the last part."""
        count = self._part_count(dataset)
        length = None
        if count is not None and dataset.declared_size_bytes and dataset.part_size_bytes:
            length = (dataset.part_size_bytes if number < count
                      else dataset.declared_size_bytes - (count - 1) * dataset.part_size_bytes)
        return self.s3.presign_part(dataset.s3_key, upload_id, number, expires_in, content_length=length)

    def complete_multipart(self, owner: User, dataset_id: str, upload_id: str, parts: list[tuple[int, str]]) -> Dataset:
        """Assembles the archive from its parts, then completes the upload as `complete` does
        (size checks, validation run). Idempotent, like `complete`."""
        dataset = self._owned(owner, dataset_id)
        if DatasetStage(dataset.stage) is DatasetStage.AWAITING_UPLOAD and not self._upload_expired(dataset, utcnow()):
            try:
                self.s3.complete_multipart(dataset.s3_key, upload_id, parts)
            except S3Rejected as exc:
                # completed by an earlier call whose validation trigger failed (503): carry on
                if not (exc.code == "NoSuchUpload" and self.s3.head(dataset.s3_key) is not None):
                    raise InvalidInput(self._refusal(exc)) from None
        return self.complete(owner, dataset_id, dataset.s3_key)

    def abort_multipart(self, owner: User, dataset_id: str) -> None:
        """Aborts the dataset's upload: its multipart uploads, objects and row are deleted."""
        dataset = self._owned(owner, dataset_id)
        if dataset.stage not in (DatasetStage.AWAITING_UPLOAD.value, DatasetStage.EXPIRED.value):
            raise Conflict("The upload of this dataset is complete; delete the dataset instead")
        prefix = s3_layout.dataset_prefix(dataset.id)
        self.s3.abort_uploads(prefix)
        self.s3.delete_prefix(prefix)
        self.session.delete(dataset)
        self.session.commit()

    def _awaiting_upload(self, owner: User, dataset_id: str) -> Dataset:
        dataset = self._owned(owner, dataset_id)
        stage = DatasetStage(dataset.stage)
        if stage is DatasetStage.EXPIRED or self._upload_expired(dataset, utcnow()):
            if stage is not DatasetStage.EXPIRED:
                self._expire(dataset)
                self.session.commit()
            raise InvalidInput("The upload window of this dataset has expired; initiate a new upload")
        if stage is not DatasetStage.AWAITING_UPLOAD:
            raise InvalidInput(f"The upload of this dataset is complete (stage {stage.value})")
        return dataset

    def _parts_of(self, dataset: Dataset, upload_id: str) -> list[UploadedPart]:
        try:
            return self.s3.list_parts(dataset.s3_key, upload_id)
        except S3Rejected as exc:
            raise InvalidInput(self._refusal(exc)) from None

    @staticmethod
    def _refusal(exc: S3Rejected) -> str:
        if exc.code == "NoSuchUpload":
            return ("No such multipart upload for this dataset (wrong upload_id, or aborted or completed); "
                    "initiate a new upload")
        return f"S3 refused the upload ({exc.code}): {_COMPLETE_REFUSALS.get(exc.code, exc.message)}"

    def _part_url_expiry(self, dataset: Dataset) -> tuple[int, datetime]:
        """Part URLs expire after the presigned-URL expiry, and never after the upload window
        (once the sweep aborted the upload, a late part has nowhere to go anyway)."""
        now = utcnow()
        window_end = (dataset.created_at or now) + timedelta(seconds=self._upload_window_s())
        seconds = max(1, min(self.settings.presigned_url_expiry_s, int((window_end - now).total_seconds())))
        return seconds, now + timedelta(seconds=seconds)

    def complete(self, owner: User, dataset_id: str, s3_key: str) -> Dataset:
        dataset = self._owned(owner, dataset_id)
        if s3_key != dataset.s3_key:
            raise InvalidInput("s3_key does not match the key returned by upload-initiate for this dataset")
        stage = DatasetStage(dataset.stage)
        if stage in (DatasetStage.VALIDATING, DatasetStage.READY, DatasetStage.FAILED):
            return dataset  # already completed: idempotent, nothing triggered again
        if stage is DatasetStage.EXPIRED or self._upload_expired(dataset, utcnow()):
            if stage is not DatasetStage.EXPIRED:
                self._expire(dataset)
                self.session.commit()
            raise InvalidInput("The upload window of this dataset has expired; initiate a new upload")
        info = self.s3.head(dataset.s3_key)
        if info is None:
            raise InvalidInput("No object at s3_key: PUT the archive to upload_url before completing the upload")
        if info.size == 0:
            raise InvalidInput("The uploaded archive is empty")
        if info.size > self.settings.max_upload_bytes:
            self.s3.delete_prefix(s3_layout.dataset_prefix(dataset.id))
            raise InvalidInput(
                f"The uploaded archive is {info.size} bytes; the limit is {self.settings.max_upload_bytes} bytes "
                "(the object was deleted)"
            )
        if dataset.declared_size_bytes is not None and info.size != dataset.declared_size_bytes:
            self.s3.delete_prefix(s3_layout.dataset_prefix(dataset.id))
            raise InvalidInput(
                f"The uploaded archive is {info.size} bytes, not the {dataset.declared_size_bytes} declared at "
                "initiation (the object was deleted); upload every part, or initiate a new upload"
            )
        try:
            self._check_quota(owner, info.size, dataset.id)
        except TooLarge as exc:
            self.session.rollback()
            self.s3.delete_prefix(s3_layout.dataset_prefix(dataset.id))
            raise TooLarge(f"{exc.detail} (the uploaded object was deleted)") from None
        run_id = validation_run_id(dataset.id)
        # the run processes exactly this object: its size and ETag go into the conf
        conf: dict[str, Any] = {"dataset_id": dataset.id, "s3_key": dataset.s3_key, "size_bytes": info.size}
        if info.etag:
            conf["etag"] = info.etag
        # raises AirflowError (-> 503) before anything changes, so the upload stays completable
        self.airflow.trigger_dag_run(self.settings.dataset_validation_dag_id, run_id, conf)
        dataset.airflow_run_id = run_id
        dataset.upload_size_bytes = info.size
        dataset.upload_etag = info.etag
        dataset.upload_completed_at = utcnow()
        dataset.set_stage(DatasetStage.VALIDATING)
        self.session.commit()
        return dataset

    # --- delete -----------------------------------------------------------------------------
    def delete(self, owner: User, dataset_id: str) -> None:
        dataset = self._owned(owner, dataset_id)
        active = self.session.scalars(
            select(TrainingJob).where(
                TrainingJob.dataset_id == dataset.id, TrainingJob.status.in_(ACTIVE_TRAINING_STATUSES)
            )
        ).all()
        if active:
            # the cached states may be stale: read the runs (one request) before refusing
            from api.services.trainings.context import TrainingContext
            from api.services.trainings.sync import refresh_active

            refresh_active(TrainingContext(self.session, self.s3, self.airflow, None, self.settings), active)  # type: ignore[arg-type]
        if any(job.status in ACTIVE_TRAINING_STATUSES for job in active):
            raise Conflict("Dataset is used by a queued or running training job; stop the job or wait for it to end")
        if dataset.stage == DatasetStage.VALIDATING:
            self.refresh([dataset])
            if dataset.stage == DatasetStage.VALIDATING:
                raise Conflict("Dataset is being validated; delete it once it is ready or in error")
        if dataset.stage == DatasetStage.AWAITING_UPLOAD:
            self.s3.abort_uploads(s3_layout.dataset_prefix(dataset.id))  # a multipart upload under way
        self.s3.delete_prefix(s3_layout.dataset_prefix(dataset.id))
        self.session.delete(dataset)
        self.session.commit()

    # --- reconciliation ---------------------------------------------------------------------
    def refresh(self, datasets: Sequence[Dataset]) -> int:
        """Expires stale uploads and settles validating datasets among `datasets`.

        One Airflow request for all validating ones; S3 is read only for runs that ended.
        Outside failures are logged and leave the datasets as they were. Returns changes.
        """
        now = utcnow()
        changed = 0
        for dataset in datasets:
            if dataset.stage == DatasetStage.AWAITING_UPLOAD and self._upload_expired(dataset, now):
                try:
                    self._expire(dataset)
                    changed += 1
                except S3Unavailable as exc:
                    log.warning("cannot expire dataset %s yet: %s", dataset.id, exc)
        validating = [d for d in datasets if d.stage == DatasetStage.VALIDATING]
        if validating:
            try:
                runs = self.airflow.list_dag_runs(
                    self.settings.dataset_validation_dag_id,
                    [d.airflow_run_id or validation_run_id(d.id) for d in validating],
                )
            except AirflowError as exc:
                log.warning("cannot reconcile %d datasets with Airflow: %s", len(validating), exc)
                runs = None
            if runs is not None:
                for dataset in validating:
                    try:
                        settled = self._settle(dataset, runs.get(dataset.airflow_run_id or ""), now)
                        if settled:  # ready or failed: the owner's webhooks hear of it (same transaction)
                            from api.services.webhooks.outbox import dataset_ended

                            dataset_ended(self.session, dataset, self.settings)
                        changed += settled
                    except S3Unavailable as exc:
                        log.warning("cannot read the report of dataset %s: %s", dataset.id, exc)
        if changed:
            self.session.commit()
        return changed

    def _settle(self, dataset: Dataset, run: DagRun | None, now: datetime) -> int:
        settled = self._settle_stage(dataset, run, now)
        if settled and dataset.stage == DatasetStage.FAILED.value:
            # a dataset in error keeps no extracted files, however its run ended (the DAG deletes
            # them too; this covers runs killed midway). S3 down: the dataset stays validating
            # (its changes are dropped) and the next pass settles it
            try:
                self.s3.delete_prefix(s3_layout.dataset_files_prefix(dataset.id))
            except S3Unavailable:
                self.session.refresh(dataset)
                raise
        return settled

    def _settle_stage(self, dataset: Dataset, run: DagRun | None, now: datetime) -> int:
        if run is None:
            completed = dataset.upload_completed_at or dataset.created_at
            if completed is not None and now - completed > LOST_RUN_GRACE:
                dataset.set_stage(
                    DatasetStage.FAILED,
                    f"Validation run {dataset.airflow_run_id} no longer exists in Airflow; upload the dataset again",
                )
                return 1
            return 0
        if not run.terminal:
            return 0
        report = self.s3.get_json(s3_layout.dataset_report_key(dataset.id))
        if isinstance(report, dict):
            self._apply_report(dataset, report)
        if run.state == "success":
            if not isinstance(report, dict):
                dataset.set_stage(
                    DatasetStage.FAILED, f"Validation run {run.run_id} succeeded but wrote no validation report"
                )
            elif report.get("valid") is True:
                dataset.set_stage(DatasetStage.READY)
            else:
                dataset.set_stage(DatasetStage.FAILED, _errors_detail(report))
            return 1
        if isinstance(report, dict) and report.get("valid") is False:
            dataset.set_stage(DatasetStage.FAILED, _errors_detail(report))
        else:
            dataset.set_stage(
                DatasetStage.FAILED,
                f"Validation run {run.run_id} ended {run.state} without a validation report "
                "(the task crashed or was killed before validating); see the run's logs in Airflow",
            )
        return 1

    @staticmethod
    def _apply_report(dataset: Dataset, report: dict[str, Any]) -> None:
        dataset.file_count = _int(report.get("file_count"))
        dataset.total_size_bytes = _int(report.get("total_size_bytes"))
        dataset.stats = {key: report.get(key) for key in STATS_KEYS if key in report}

    def _upload_expired(self, dataset: Dataset, now: datetime) -> bool:
        created = dataset.created_at
        return created is not None and now - created > timedelta(seconds=self._upload_window_s())

    def _upload_window_s(self) -> int:
        # never before the presigned URL itself expires, or a late PUT would leave an orphan
        return max(self.settings.upload_expiry_s, self.settings.presigned_url_expiry_s)

    def _expire(self, dataset: Dataset) -> None:
        # abort first: a multipart upload's parts are no objects, delete_prefix would miss them
        self.s3.abort_uploads(s3_layout.dataset_prefix(dataset.id))
        self.s3.delete_prefix(s3_layout.dataset_prefix(dataset.id))
        dataset.set_stage(
            DatasetStage.EXPIRED,
            "The upload was not completed in time; its objects were deleted. Initiate a new upload",
        )
        # status `error` like the other ends: the owner's webhooks hear of it (same transaction)
        from api.services.webhooks.outbox import dataset_ended

        dataset_ended(self.session, dataset, self.settings)


def reconcile_all(session: Session, s3: S3Storage, airflow: AirflowApi, settings: Settings, batch: int = 500) -> int:
    """One pass of the background loop over every user's unsettled datasets."""
    service = DatasetService(session, s3, airflow, settings)
    window = max(settings.upload_expiry_s, settings.presigned_url_expiry_s)
    cutoff = utcnow() - timedelta(seconds=window)
    validating = session.scalars(
        select(Dataset).where(Dataset.stage == DatasetStage.VALIDATING.value).order_by(Dataset.updated_at).limit(batch)
    ).all()
    stale = session.scalars(
        select(Dataset)
        .where(Dataset.stage == DatasetStage.AWAITING_UPLOAD.value, Dataset.created_at < cutoff)
        .limit(batch)
    ).all()
    return service.refresh([*validating, *stale])


def _errors_detail(report: dict[str, Any]) -> str:
    errors = [str(e) for e in report.get("errors") or []]
    if not errors:
        return "Validation failed (the report lists no errors)"
    shown = "; ".join(errors[:MAX_ERRORS_IN_DETAIL])
    total = report.get("error_count")
    more = (total if isinstance(total, int) and total >= len(errors) else len(errors)) - MAX_ERRORS_IN_DETAIL
    return f"Validation failed: {shown}" + (f" (and {more} more)" if more > 0 else "")


def _int(value: Any) -> int:
    try:
        return max(0, int(value))
    except (TypeError, ValueError):
        return 0
