"""Piccolo project configuration (``PICCOLO_CONF=common_operations.db.piccolo_conf``).

The engine's address comes from the same settings as the service (``DATABASE_URL``).
"""

from __future__ import annotations

import os

from piccolo.conf.apps import AppRegistry
from piccolo.engine.postgres import PostgresEngine

from common_operations.config import get_settings

DB = PostgresEngine(config={"dsn": os.environ.get("DATABASE_URL") or get_settings().database.url})

APP_REGISTRY = AppRegistry(apps=["common_operations.db.piccolo_app"])
