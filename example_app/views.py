"""Pages and JSON endpoints that trigger the shop's events."""

from __future__ import annotations

from typing import Any

from flask import Blueprint, flash, jsonify, redirect, render_template, request, url_for
from sqlalchemy.exc import IntegrityError
from werkzeug.wrappers import Response

from .extensions import db
from .models import AuditEntry, Order, PremiumOrder, SentEmail, User
from .services import place_order, register_user

shop = Blueprint("shop", __name__)


def activity() -> dict[str, list[dict[str, Any]]]:
    """What the data and each subscriber hold, newest first."""
    return {
        "users": [
            {"id": u.id, "email": u.email, "name": u.name}
            for u in User.query.order_by(User.id.desc())
        ],
        "orders": [
            {"id": o.id, "user_id": o.user_id, "total": o.total}
            for o in Order.query.order_by(Order.id.desc())
        ],
        "audit_log": [
            {"text": a.text, "at": a.at.isoformat()}
            for a in AuditEntry.query.order_by(AuditEntry.id.desc())
        ],
        "welcome_emails": [
            {"to": e.to, "subject": e.subject, "at": e.at.isoformat()}
            for e in SentEmail.query.order_by(SentEmail.id.desc())
        ],
        "premium_orders": [
            {"order_id": p.order_id, "total": p.total, "at": p.at.isoformat()}
            for p in PremiumOrder.query.order_by(PremiumOrder.id.desc())
        ],
    }


@shop.get("/")
def index() -> str:
    return render_template("index.html", **activity())


@shop.post("/users")
def create_user() -> Response:
    email = request.form.get("email", "").strip()
    name = request.form.get("name", "").strip()
    if not email or not name:
        flash("Give an email and a name.")
    else:
        try:
            user = register_user(email, name)
        except IntegrityError:
            flash(f"{email} is already registered.")
        else:
            flash(f"Registered user {user.id}.")
    return redirect(url_for("shop.index"))


@shop.post("/orders")
def create_order() -> Response:
    try:
        user_id = int(request.form["user_id"])
        total = float(request.form["total"])
        order = place_order(user_id, total)
    except (KeyError, ValueError):
        flash("Choose a user and give a total.")
    except LookupError as exc:
        flash(str(exc))
    else:
        flash(f"Placed order {order.id}.")
    return redirect(url_for("shop.index"))


@shop.post("/api/users")
def api_create_user() -> tuple[Response, int]:
    data = request.get_json(silent=True) or {}
    email, name = data.get("email"), data.get("name")
    if not isinstance(email, str) or not isinstance(name, str) or not email:
        return jsonify(error="Send JSON with 'email' and 'name' strings."), 400
    try:
        user = register_user(email, name)
    except IntegrityError:
        return jsonify(error=f"{email} is already registered."), 409
    return jsonify(id=user.id), 201


@shop.post("/api/orders")
def api_create_order() -> tuple[Response, int]:
    data = request.get_json(silent=True) or {}
    user_id, total = data.get("user_id"), data.get("total")
    if not isinstance(user_id, int) or not isinstance(total, int | float):
        return jsonify(
            error="Send JSON with 'user_id' (int) and 'total' (number)."
        ), 400
    try:
        order = place_order(user_id, float(total))
    except LookupError as exc:
        return jsonify(error=str(exc)), 404
    return jsonify(id=order.id), 201


@shop.get("/api/activity")
def api_activity() -> Response:
    return jsonify(activity())


@shop.teardown_app_request
def rollback_failed_requests(exc: BaseException | None) -> None:
    if exc is not None:
        db.session.rollback()
