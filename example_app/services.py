"""The shop's use cases: data and its events, committed together."""

from __future__ import annotations

from sqlalchemy.orm import Session

from flask_messaging.transaction import register_event, transactional

from .messages import OrderPlaced, UserRegistered
from .models import Order, User


@transactional
def register_user(session: Session, email: str, name: str) -> User:
    user = User(email=email, name=name)
    session.add(user)
    session.flush()  # the user's id
    register_event(UserRegistered(user_id=user.id, email=email, name=name))
    return user


@transactional
def place_order(session: Session, user_id: int, total: float) -> Order:
    if session.get(User, user_id) is None:
        raise LookupError(f"No user {user_id}.")
    order = Order(user_id=user_id, total=total)
    session.add(order)
    session.flush()
    register_event(OrderPlaced(order_id=order.id, user_id=user_id, total=total))
    return order
