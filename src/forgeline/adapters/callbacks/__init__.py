"""Callback outbox adapter: one class over the SQL layer, on SQLite or PostgreSQL."""
