"""``AnalyticsEmitter``: server-side domain events (billing, automations, moderation, messaging), signed as
device ``svc:<service>``, on the same queue and sender as the app client."""
from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any

from headwater_client.core import LIBRARY, Collector
from headwater_client.fields import build_properties

When = dt.datetime | str | None


class AnalyticsEmitter(Collector):
    """Typed methods, one per server-side event, that check their arguments against the event's schema before
    anything is queued. Required fields are keyword-only parameters (a missing one is a ``TypeError``);
    optional ones are keyword arguments, left out when None. Each method returns the event_id.

    Events without a user (an automation run, an automated moderation action) carry
    ``anonymous_id = "svc:<service>"``.

    :param service: name of the emitting service; the signing device id is ``svc:<service>``
    :param queue_path: the SQLite queue (default ``~/.cache/headwater/queue-svc_<service>.sqlite3``)
    Other parameters as for :class:`headwater_client.AnalyticsClient`.
    """

    def __init__(self, url: str, service: str, kid: str, master_key: bytes | None = None,
                 device_secret: bytes | None = None, queue_path: str | Path | None = None, *,
                 batch_size: int = 50, flush_interval: float | None = 1.0, max_attempts: int = 5,
                 backoff_base: float = 0.25, backoff_max: float = 30.0, gzip: bool = True,
                 timeout: float = 10.0) -> None:
        if not service or not service.replace("-", "").replace("_", "").isalnum():
            raise ValueError(f"service must be a name of letters, digits, '-' and '_', got {service!r}")
        super().__init__(url, f"svc:{service}", kid, device_secret=device_secret, master_key=master_key,
                         queue_path=queue_path, batch_size=batch_size, flush_interval=flush_interval,
                         max_attempts=max_attempts, backoff_base=backoff_base, backoff_max=backoff_max,
                         gzip=gzip, timeout=timeout)
        self.service = service
        self._context = {"library": dict(LIBRARY), "device": {"type": "server"}}

    def emit(self, event: str, properties: dict[str, Any], *, user_id: str | None = None, timestamp: When = None,
             event_id: str | None = None) -> str:
        """Queue any event as this service (the typed methods below are preferred where one exists)."""
        return self._enqueue(event, properties, user_id=user_id,
                             anonymous_id=None if user_id is not None else self.device_id,
                             timestamp=timestamp, event_id=event_id, context=self._context)

    def _typed(self, event: str, user_id: str | None, required: dict[str, Any], optional: dict[str, Any],
               timestamp: When, event_id: str | None) -> str:
        return self.emit(event, build_properties(event, required, optional), user_id=user_id,
                         timestamp=timestamp, event_id=event_id)

    def subscription_started(self, *, user_id: str, subscription_id: str, plan_id: str, billing_interval: str,
                             amount_minor: int, currency: str, timestamp: When = None, event_id: str | None = None,
                             **optional: Any) -> str:
        """Optional: plan_name, previous_plan_id, seats, trial_days, payment_provider, discount, billing_email."""
        return self._typed("subscription_started", user_id, {
            "subscription_id": subscription_id, "plan_id": plan_id, "billing_interval": billing_interval,
            "amount_minor": amount_minor, "currency": currency}, optional, timestamp, event_id)

    def subscription_cancelled(self, *, user_id: str, subscription_id: str, plan_id: str, reason: str,
                               cancel_at_period_end: bool, timestamp: When = None, event_id: str | None = None,
                               **optional: Any) -> str:
        """Optional: reason_comment, initiated_by, effective_at, tenure_days, mrr_lost_minor, currency,
        offered_retention_discount."""
        return self._typed("subscription_cancelled", user_id, {
            "subscription_id": subscription_id, "plan_id": plan_id, "reason": reason,
            "cancel_at_period_end": cancel_at_period_end}, optional, timestamp, event_id)

    def payment_failed(self, *, user_id: str, payment_id: str, amount_minor: int, currency: str,
                       failure_code: str, attempt_number: int, timestamp: When = None, event_id: str | None = None,
                       **optional: Any) -> str:
        """Optional: subscription_id, invoice_id, provider_code, will_retry, next_retry_at, payment_method_type,
        card_brand, billing_country, billing_postcode."""
        return self._typed("payment_failed", user_id, {
            "payment_id": payment_id, "amount_minor": amount_minor, "currency": currency,
            "failure_code": failure_code, "attempt_number": attempt_number}, optional, timestamp, event_id)

    def automation_run(self, *, automation_id: str, run_id: str, trigger: str, status: str, duration_ms: int,
                       user_id: str | None = None, timestamp: When = None, event_id: str | None = None,
                       **optional: Any) -> str:
        """Optional: automation_name, automation_version, steps_total, steps_failed, actions,
        records_processed, error_code."""
        return self._typed("automation_run", user_id, {
            "automation_id": automation_id, "run_id": run_id, "trigger": trigger, "status": status,
            "duration_ms": duration_ms}, optional, timestamp, event_id)

    def moderation_action(self, *, community_id: str, action: str, target_type: str, target_id: str,
                          automated: bool, user_id: str | None = None, timestamp: When = None,
                          event_id: str | None = None, **optional: Any) -> str:
        """Optional: target_user_id, moderator_user_id, rule_id, reason, note, duration_seconds (None =
        permanent), appeal_allowed."""
        return self._typed("moderation_action", user_id, {
            "community_id": community_id, "action": action, "target_type": target_type, "target_id": target_id,
            "automated": automated}, optional, timestamp, event_id)

    def message_sent(self, *, user_id: str, message_id: str, conversation_id: str, channel_type: str,
                     message_type: str, length_chars: int, timestamp: When = None, event_id: str | None = None,
                     **optional: Any) -> str:
        """Optional: community_id, attachment_count, mention_count, contains_link, is_reply,
        reply_to_message_id, recipient_count, sent_via, edited_within_seconds."""
        return self._typed("message_sent", user_id, {
            "message_id": message_id, "conversation_id": conversation_id, "channel_type": channel_type,
            "message_type": message_type, "length_chars": length_chars}, optional, timestamp, event_id)

    def community_join(self, *, user_id: str, community_id: str, join_source: str, timestamp: When = None,
                       event_id: str | None = None, **optional: Any) -> str:
        """Optional: community_name, invite_code, inviter_user_id, role, requires_approval, is_rejoin,
        member_count, referrer_url."""
        return self._typed("community_join", user_id, {"community_id": community_id, "join_source": join_source},
                           optional, timestamp, event_id)
