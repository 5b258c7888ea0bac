"""Named SQL of the callback outbox, one file per dialect (see
:mod:`forgeline.adapters.sql.executor`)."""
