"""Named SQL of the credential store, one file per dialect (see
:mod:`forgeline.adapters.sql.executor`)."""
