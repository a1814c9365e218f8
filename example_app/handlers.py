"""Subscribers: sync ones (the audit log), async ones (run by workers)."""

from __future__ import annotations

import asyncio
import logging

from flask_messaging import current_envelope
from flask_messaging.queue_names import DEFAULT_PRIORITY, LOW_PRIORITY

from .extensions import db, messaging
from .messages import OrderPlaced, UserRegistered
from .models import AuditEntry, PremiumOrder, SentEmail

logger = logging.getLogger(__name__)


@messaging.subscribe
def audit_registration(event: UserRegistered) -> None:
    """Sync: runs in the request, right after the commit."""
    db.session.add(AuditEntry(text=f"user {event.user_id} registered ({event.email})"))
    db.session.commit()


@messaging.subscribe
def audit_order(event: OrderPlaced) -> None:
    db.session.add(AuditEntry(text=f"order {event.order_id} placed: {event.total:.2f}"))
    db.session.commit()


@messaging.subscribe(UserRegistered, queue_name=LOW_PRIORITY)
def send_welcome_email(event: UserRegistered) -> None:
    """Async: a worker runs it. Idempotent: a message id is recorded once."""
    envelope = current_envelope()
    assert envelope is not None
    if SentEmail.query.filter_by(message_id=envelope.id).first():
        return  # delivered twice (at-least-once): already done
    logger.info("Sending the welcome email to %s", event.email)
    db.session.add(
        SentEmail(
            message_id=envelope.id, to=event.email, subject=f"Welcome, {event.name}!"
        )
    )
    db.session.commit()


@messaging.subscribe(
    OrderPlaced,
    queue_name=DEFAULT_PRIORITY,
    predicate=lambda order: order.total > 100,  # no job at all for small orders
)
def handle_premium_order(event: OrderPlaced) -> None:
    if PremiumOrder.query.filter_by(order_id=event.order_id).first():
        return
    db.session.add(PremiumOrder(order_id=event.order_id, total=event.total))
    db.session.commit()


@messaging.subscribe(OrderPlaced, queue_name=LOW_PRIORITY)
async def notify_warehouse(event: OrderPlaced) -> None:
    """Async, and ``async def``: it waits on the network, not on the CPU.

    The call to the warehouse's HTTP API is simulated; a real one would use
    an asyncio client (httpx.AsyncClient, aiohttp), never a blocking one.
    """
    await asyncio.sleep(0.05)  # the request's round trip
    logger.info("Told the warehouse about order %s", event.order_id)
