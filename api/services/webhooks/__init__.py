"""Webhooks (`/v1/webhooks`): a user's endpoints and the messages sent to them.

- `signing`: Standard Webhooks signatures (`webhook-id`, `webhook-timestamp`, `webhook-signature`).
- `targets`: which URLs may receive (http(s), no private, loopback or link-local address unless
  `QLORA_WEBHOOK_ALLOW_PRIVATE`), checked at creation and again at each delivery.
- `outbox`: deliveries written with the state change that causes them, sent by `WebhookSender`
  (the API's background loop) at least once, with exponential backoff over >= 24 h.
- `endpoints`: create, list, delete endpoints and list their deliveries.
"""
