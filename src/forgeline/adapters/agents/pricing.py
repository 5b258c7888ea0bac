"""Loading the price table: ``FORGELINE_PRICES`` or the default file shipped here."""

from __future__ import annotations

import json
from importlib import resources
from pathlib import Path

from forgeline.domain.errors import ConfigurationError, ValidationError
from forgeline.domain.pricing import PriceTable

#: The default table (``prices.json`` next to this module): list prices at the time of
#: writing, for the models the native CLIs are used with most.
DEFAULT_PRICES = "prices.json"


def load_prices(path: Path | None = None) -> PriceTable:
    """The table at ``path``, or the default one; ``ConfigurationError`` naming the file
    when it cannot be read or is not a price table."""
    try:
        if path is None:
            text = resources.files(__package__).joinpath(DEFAULT_PRICES).read_text()
        else:
            text = path.read_text()
        return PriceTable.from_json(json.loads(text))
    except (OSError, ValueError, ValidationError) as exc:
        where = path or DEFAULT_PRICES
        detail = exc.message if isinstance(exc, ValidationError) else str(exc)
        raise ConfigurationError(f"price table {where}: {detail}") from exc
