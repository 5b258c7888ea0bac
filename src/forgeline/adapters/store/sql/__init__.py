"""Named SQL of the store, one file per dialect, run by :mod:`forgeline.adapters.sql.executor`."""
