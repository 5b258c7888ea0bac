"""Named SQL of the queue adapters, loaded once by :func:`forgeline.adapters.sql.queries.load`."""
