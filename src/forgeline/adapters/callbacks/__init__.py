"""Callback outbox adapters: SQLite (embedded) and PostgreSQL (many workers)."""
