"""The webhook outbox: a `WebhookDelivery` row per (endpoint, event) is added in the same
transaction as the state change that causes it (a job settled, a dataset validated), so an API
crash can delay a message but never lose it. `WebhookSender.run_once` (the API's background
loop, `api.main`) claims the due rows, sends them at most `webhook_concurrency` at a time with
a timeout each, and records every attempt; a failure is retried after
`webhook_retry_base_s * 2**(n-1)` seconds (at most `webhook_retry_max_delay_s`, plus up to 10%
jitter) until `webhook_retry_window_s` (24 h) after the event, then given up. A row claimed by a
process that died is sent again once its claim expires: delivery is at least once, and the
`webhook-id` of a message never changes, so receivers can drop repeats."""

from __future__ import annotations

import hashlib
import json
import logging
import random
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

import httpx
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from api.models import (
    Dataset,
    DatasetStatus,
    DeliveryStatus,
    TrainingJob,
    TrainingStatus,
    Webhook,
    WebhookAttempt,
    WebhookDelivery,
    WebhookEvent,
)
from api.models.base import utcnow
from api.services.webhooks import sealing, signing, targets

if TYPE_CHECKING:
    from api.core.config import Settings

log = logging.getLogger(__name__)

TRAINING_EVENTS = {
    TrainingStatus.COMPLETED.value: WebhookEvent.TRAINING_COMPLETED,
    TrainingStatus.FAILED.value: WebhookEvent.TRAINING_FAILED,
    TrainingStatus.STOPPED.value: WebhookEvent.TRAINING_STOPPED,
}
DATASET_EVENTS = {DatasetStatus.READY.value: WebhookEvent.DATASET_READY, DatasetStatus.ERROR.value: WebhookEvent.DATASET_ERROR}
USER_AGENT = "qlora-orchestration-webhooks/1"
#: a claimed delivery is sent again by anyone after this long past its timeout (its sender died)
CLAIM_SLACK_S = 30.0


# --- writing: in the transaction of the state change -------------------------------------------
def message_id(webhook_id: str, event: str, subject_id: str, occurrence: str = "") -> str:
    """The `webhook-id` of a message: the same for the same event of the same subject to the same
    endpoint (recorded once, however many readers observe the change); `occurrence` tells apart
    the same event happening again (a resumed job's run ending)."""
    key = f"{webhook_id}|{event}|{subject_id}" + (f"|{occurrence}" if occurrence else "")
    return "msg_" + hashlib.sha256(key.encode()).hexdigest()[:32]


def enqueue(session: Session, owner_id: str, event: WebhookEvent, subject_id: str, data: dict[str, Any],
            occurrence: str = "") -> int:
    """Adds a delivery of `event` to every endpoint of the owner subscribed to it; returns how many."""
    hooks = [h for h in session.scalars(select(Webhook).where(Webhook.owner_id == owner_id)) if event.value in h.events]
    if not hooks:
        return 0
    now = utcnow()
    body = json.dumps({"type": event.value, "timestamp": now.isoformat().replace("+00:00", "Z"), "data": data},
                      separators=(",", ":"), default=str)
    if session.get_bind().dialect.name == "postgresql":
        from sqlalchemy.dialects.postgresql import insert
    else:
        from sqlalchemy.dialects.sqlite import insert
    added = 0
    for hook in hooks:
        statement = insert(WebhookDelivery).values(
            id=message_id(hook.id, event.value, subject_id, occurrence), webhook_id=hook.id, event=event.value,
            subject_id=subject_id, body=body, status=DeliveryStatus.PENDING.value, attempts=0, created_at=now,
            next_attempt_at=now,
        ).on_conflict_do_nothing(index_elements=["id"])
        added += session.execute(statement).rowcount or 0
    return added


def training_ended(session: Session, job: TrainingJob, settings: Settings) -> int:
    """`training.completed|failed|stopped` with the job as its detail shows it (settled)."""
    event = TRAINING_EVENTS.get(job.status)
    if event is None:
        return 0
    from api.schemas.trainings import TrainingDetail

    session.flush()  # its `updated_at` as stored
    detail = TrainingDetail.from_job(job, settings, logs=job.log_tail or "").model_dump(mode="json")
    # a resumed job (POST .../resume) ends again in its new run: a new message
    return enqueue(session, job.owner_id, event, job.id, detail, job.airflow_run_id if job.runs else "")


def dataset_ended(session: Session, dataset: Dataset, settings: Settings) -> int:
    """`dataset.ready|error` with the dataset as its detail shows it."""
    event = DATASET_EVENTS.get(dataset.status)
    if event is None:
        return 0
    from api.schemas.datasets import DatasetDetail

    session.flush()  # its `updated_at` as stored
    detail = DatasetDetail.from_dataset(dataset, settings.s3_bucket).model_dump(mode="json")
    return enqueue(session, dataset.owner_id, event, dataset.id, detail)


# --- sending ----------------------------------------------------------------------------------
def retry_delay_s(attempts: int, settings: Settings, jitter: float | None = None) -> float:
    """Seconds before the attempt after `attempts` failed ones."""
    delay = min(settings.webhook_retry_base_s * 2 ** max(attempts - 1, 0), settings.webhook_retry_max_delay_s)
    return delay * (1 + (random.uniform(0, 0.1) if jitter is None else jitter))


@dataclass(frozen=True)
class Outcome:
    status_code: int | None
    error: str | None
    duration_ms: int

    @property
    def ok(self) -> bool:
        return self.status_code is not None and 200 <= self.status_code < 300


@dataclass(frozen=True)
class Claimed:
    id: str
    url: str
    secret: str  # as stored (encrypted): decrypted in `_send`
    body: str
    attempt: int


class WebhookSender:
    """Sends the due deliveries of the outbox; `run_once` is one round (the API's loop calls it
    every `webhook_poll_interval_s`). At most `webhook_concurrency` requests at once, each bounded
    by `webhook_timeout_s`: a slow receiver delays only its own messages by at most that."""

    def __init__(self, sessions: sessionmaker[Session], settings: Settings,
                 transport: httpx.BaseTransport | None = None) -> None:
        self.sessions = sessions
        self.settings = settings
        self._pool = ThreadPoolExecutor(max_workers=settings.webhook_concurrency, thread_name_prefix="webhook")
        self._http = httpx.Client(timeout=httpx.Timeout(settings.webhook_timeout_s), follow_redirects=False,
                                  trust_env=False, transport=transport,
                                  limits=httpx.Limits(max_connections=settings.webhook_concurrency))

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
        self._http.close()

    def run_once(self) -> int:
        """Claims and sends the due deliveries (one batch); returns how many were attempted."""
        claimed = self._claim()
        if not claimed:
            return 0
        outcomes = list(self._pool.map(self._send, claimed))
        for item, outcome in zip(claimed, outcomes):
            self._record(item, outcome)
        return len(claimed)

    def _claim(self) -> list[Claimed]:
        now = utcnow()
        lease = timedelta(seconds=self.settings.webhook_timeout_s + CLAIM_SLACK_S)
        with self.sessions() as session:
            query = (select(WebhookDelivery, Webhook).join(Webhook, Webhook.id == WebhookDelivery.webhook_id)
                     .where(WebhookDelivery.status == DeliveryStatus.PENDING.value,
                            WebhookDelivery.next_attempt_at <= now)
                     .order_by(WebhookDelivery.next_attempt_at).limit(self.settings.webhook_concurrency))
            if session.get_bind().dialect.name == "postgresql":  # several API processes: each row to one
                query = query.with_for_update(of=WebhookDelivery, skip_locked=True)
            claimed = []
            for delivery, hook in session.execute(query).all():
                delivery.next_attempt_at = now + lease  # sent again after this if we die while sending
                delivery.attempts += 1
                claimed.append(Claimed(delivery.id, hook.url, hook.secret, delivery.body, delivery.attempts))
            session.commit()
        return claimed

    def _send(self, item: Claimed) -> Outcome:
        started = time.monotonic()

        def took() -> int:
            return int((time.monotonic() - started) * 1000)

        try:  # checked again now: the name may resolve elsewhere than at creation
            target = targets.resolve(item.url, self.settings.webhook_allow_private)
        except targets.TargetRefused as exc:
            return Outcome(None, str(exc).removeprefix("url: "), took())
        try:  # stored encrypted (`sealing`): read in clear only to sign
            secret = sealing.unseal(item.secret, self.settings)
        except sealing.SecretUnreadable as exc:
            return Outcome(None, str(exc), took())
        headers = {"content-type": "application/json", "user-agent": USER_AGENT, "host": target.host_header,
                   **signing.headers(secret, item.id, item.body)}
        extensions = {"sni_hostname": target.host} if target.https else {}
        try:
            request = self._http.build_request("POST", target.pinned_url, content=item.body.encode(),
                                               headers=headers, extensions=extensions)
            response = self._http.send(request, stream=True)
            response.close()  # the answer's body is not needed
            return Outcome(response.status_code, None, took())
        except httpx.TimeoutException:
            return Outcome(None, f"timed out after {self.settings.webhook_timeout_s:g} s", took())
        except httpx.HTTPError as exc:
            return Outcome(None, f"{type(exc).__name__}: {exc}"[:500], took())

    def _record(self, item: Claimed, outcome: Outcome) -> None:
        now = utcnow()
        with self.sessions() as session:
            delivery = session.get(WebhookDelivery, item.id)
            if delivery is None:  # its endpoint was deleted meanwhile
                return
            next_at: datetime | None = None
            if outcome.ok:
                delivery.status, delivery.delivered_at, delivery.last_error = DeliveryStatus.DELIVERED.value, now, None
            else:
                delivery.last_error = outcome.error or f"answered {outcome.status_code}"
                created = delivery.created_at or now
                if now - created >= timedelta(seconds=self.settings.webhook_retry_window_s):
                    delivery.status = DeliveryStatus.FAILED.value
                else:
                    next_at = now + timedelta(seconds=retry_delay_s(item.attempt, self.settings))
            delivery.next_attempt_at = next_at
            session.add(WebhookAttempt(delivery_id=item.id, attempt=item.attempt, at=now,
                                       status_code=outcome.status_code, error=outcome.error,
                                       duration_ms=outcome.duration_ms, next_retry_at=next_at))
            try:
                session.commit()
            except IntegrityError:  # the endpoint (and its deliveries) deleted meanwhile
                session.rollback()
        level = logging.INFO if outcome.ok else logging.WARNING
        log.log(level, "webhook %s attempt %d: %s", item.id, item.attempt,
                outcome.status_code if outcome.status_code is not None else outcome.error)
