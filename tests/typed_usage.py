"""How an application's code uses the package, checked by mypy (strict) in CI.

Not a test module: mypy reads it (``[tool.mypy] files``), pytest does not
collect it. Each line is a call the documentation shows.
"""

from __future__ import annotations

from flask import Flask
from flask_sqlalchemy import SQLAlchemy

from flask_messaging import Messaging, register_event, transactional
from flask_messaging.broker import NullBroker, TestBroker, override_message_broker
from flask_messaging.state import get_state

app = Flask(__name__)
db = SQLAlchemy()
messaging = Messaging()
# Flask-SQLAlchemy's object, with its own Session class, is accepted as is.
messaging.init_app(app, db=db)
Messaging(Flask("other"), db=db)

with app.app_context():
    state = get_state()
    with override_message_broker(NullBroker()), override_message_broker(TestBroker()):
        pass

_ = (register_event, transactional)
