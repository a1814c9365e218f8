"""The app's extensions, created unbound so every module can import them."""

from flask_sqlalchemy import SQLAlchemy

from flask_messaging import Messaging

db = SQLAlchemy()
messaging = Messaging()
