"""A user's webhook endpoints: create (the secret is returned this once), list, delete, and
the deliveries of one endpoint with every attempt."""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from api.core.config import Settings
from api.models import User, Webhook, WebhookAttempt, WebhookDelivery
from api.services.errors import InvalidInput, NotFound
from api.services.webhooks import sealing, signing, targets


def create(session: Session, owner: User, settings: Settings, url: str, events: list[str],
           description: str) -> tuple[Webhook, str]:
    """A new endpoint of `owner` and its signing secret (stored encrypted: this is the only time it
    is read in clear); `InvalidInput` (400) for a URL that may not receive webhooks."""
    try:
        targets.resolve(url, settings.webhook_allow_private)
    except targets.TargetRefused as exc:
        raise InvalidInput(str(exc)) from None
    count = session.scalar(select(func.count()).select_from(Webhook).where(Webhook.owner_id == owner.id)) or 0
    if count >= settings.webhook_max_per_user:
        raise InvalidInput(f"You have {count} webhooks, the most allowed; delete one first")
    hook = Webhook(owner_id=owner.id, url=url.strip(), events=list(dict.fromkeys(events)),
                   description=description.strip(), secret=sealing.seal(secret := signing.new_secret(), settings))
    session.add(hook)
    session.commit()
    return hook, secret


def owned(session: Session, owner: User, webhook_id: str) -> Webhook:
    hook = session.get(Webhook, webhook_id)
    if hook is None or hook.owner_id != owner.id:
        raise NotFound("Webhook not found")
    return hook


def list_for(session: Session, owner: User) -> list[Webhook]:
    return list(session.scalars(
        select(Webhook).where(Webhook.owner_id == owner.id).order_by(Webhook.created_at.desc(), Webhook.id)))


def delete(session: Session, owner: User, webhook_id: str) -> None:
    """Deletes the endpoint and its deliveries (pending ones are not sent any more)."""
    session.delete(owned(session, owner, webhook_id))
    session.commit()


@dataclass(frozen=True)
class DeliveryPage:
    deliveries: list[tuple[WebhookDelivery, list[WebhookAttempt]]]
    total: int


def deliveries(session: Session, owner: User, webhook_id: str, limit: int | None, offset: int) -> DeliveryPage:
    """The endpoint's deliveries, newest first (optionally one page), each with its attempts."""
    hook = owned(session, owner, webhook_id)
    total = session.scalar(select(func.count()).select_from(WebhookDelivery)
                           .where(WebhookDelivery.webhook_id == hook.id)) or 0
    rows = list(session.scalars(
        select(WebhookDelivery).where(WebhookDelivery.webhook_id == hook.id)
        .order_by(WebhookDelivery.created_at.desc(), WebhookDelivery.id).offset(offset).limit(limit)))
    attempts: dict[str, list[WebhookAttempt]] = {d.id: [] for d in rows}
    if rows:
        for attempt in session.scalars(select(WebhookAttempt).where(WebhookAttempt.delivery_id.in_(list(attempts)))
                                       .order_by(WebhookAttempt.attempt)):
            attempts[attempt.delivery_id].append(attempt)
    return DeliveryPage([(d, attempts[d.id]) for d in rows], total)
