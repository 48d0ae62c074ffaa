"""`/v1/webhooks`: signed notifications when a training or a dataset ends."""

from __future__ import annotations

from fastapi import APIRouter, Response, status

from api.deps import PAGED_LIST_ROUTE, CurrentUser, PageDep, SessionDep, SettingsDep
from api.routers.openapi_doc import (
    WEBHOOK,
    WEBHOOK_DELIVERY,
    UNAUTHORIZED,
    body_example,
    error,
    ok_example,
)
from api.schemas.webhooks import AttemptOut, DeliveryOut, WebhookCreate, WebhookCreated, WebhookOut
from api.services.webhooks import endpoints

router = APIRouter(prefix="/webhooks", tags=["webhooks"], responses=UNAUTHORIZED)

_NOT_FOUND = {404: error("No such webhook of yours", "Webhook not found")}


@router.post(
    "",
    status_code=status.HTTP_201_CREATED,
    response_model=WebhookCreated,
    responses={201: ok_example({**WEBHOOK, "secret": "whsec_MfKQ9r8GKYqXTwjWPoUa8wZGr1KQkTjC6tMhT+4ZXxc="}),
               400: error("A URL that may not receive webhooks, or bad fields",
                          "url: host '10.0.0.5' resolves to 10.0.0.5, a private address; webhooks go to public "
                          "addresses only")},
    openapi_extra=body_example(WebhookCreate, **{"x-validation-status": 400}),
    summary="Register an endpoint: returns its signing secret, this once",
    description="Each event (`training.completed|failed|stopped`, `dataset.ready|error`) is POSTed as JSON "
    "`{type, timestamp, data}` (`data`: the job or dataset as its detail endpoint returns it), signed per the "
    "Standard Webhooks specification (`webhook-id`, `webhook-timestamp`, `webhook-signature: v1,<base64>`). A "
    "2xx answer delivers it; otherwise it is retried with exponential backoff for 24 hours (at least once: use "
    "`webhook-id` to drop repeats). The URL must be http(s) on a public address.",
)
def create_webhook(body: WebhookCreate, user: CurrentUser, session: SessionDep, settings: SettingsDep) -> WebhookCreated:
    hook, secret = endpoints.create(session, user, settings, body.url, list(body.events), body.description)
    return WebhookCreated(**WebhookOut.model_validate(hook).model_dump(), secret=secret)


@router.get(
    "",
    response_model=list[WebhookOut],
    responses={200: ok_example([WEBHOOK])},
    summary="Your webhook endpoints, newest first (without secrets)",
    description="Every endpoint you registered, with the events it receives; `X-Total-Count` counts them. The "
    "signing secret is shown only when an endpoint is created.",
)
def list_webhooks(user: CurrentUser, session: SessionDep, response: Response) -> list[WebhookOut]:
    hooks = endpoints.list_for(session, user)
    response.headers["X-Total-Count"] = str(len(hooks))
    return [WebhookOut.model_validate(h) for h in hooks]


@router.delete(
    "/{webhook_id}",
    status_code=status.HTTP_204_NO_CONTENT,
    response_class=Response,
    responses={204: {"description": "Deleted: nothing more is sent to it"}, **_NOT_FOUND},
    summary="Delete an endpoint (its pending deliveries are dropped)",
    description="Stops every delivery to the endpoint at once, pending retries included.",
)
def delete_webhook(webhook_id: str, user: CurrentUser, session: SessionDep) -> Response:
    endpoints.delete(session, user, webhook_id)
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@router.get(
    "/{webhook_id}/deliveries",
    response_model=list[DeliveryOut],
    responses={200: ok_example([WEBHOOK_DELIVERY]), **_NOT_FOUND, **PAGED_LIST_ROUTE["responses"]},
    openapi_extra=PAGED_LIST_ROUTE["openapi_extra"],
    summary="The endpoint's deliveries, newest first, each with every attempt",
    description="Each attempt: when, the receiver's status code or the error, how long it took, and when the next "
    "retry is due. `X-Total-Count` counts every delivery.",
)
def list_deliveries(webhook_id: str, user: CurrentUser, session: SessionDep, page: PageDep,
                    response: Response) -> list[DeliveryOut]:
    result = endpoints.deliveries(session, user, webhook_id, page.limit, page.offset)
    response.headers["X-Total-Count"] = str(result.total)
    return [DeliveryOut(id=d.id, event=d.event, subject_id=d.subject_id, status=d.status, created_at=d.created_at,
                        next_attempt_at=d.next_attempt_at, delivered_at=d.delivered_at, last_error=d.last_error,
                        attempts=[AttemptOut.model_validate(a) for a in attempts])
            for d, attempts in result.deliveries]
