"""Postgres persistence: Piccolo tables, migrations and repositories."""
