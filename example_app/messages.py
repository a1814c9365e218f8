"""The events the shop's components exchange."""

from __future__ import annotations

from dataclasses import dataclass

from flask_messaging import Message


@dataclass(frozen=True)
class UserRegistered(Message, name="shop.user_registered"):
    user_id: int
    email: str
    name: str


@dataclass(frozen=True)
class OrderPlaced(Message, name="shop.order_placed"):
    order_id: int
    user_id: int
    total: float
