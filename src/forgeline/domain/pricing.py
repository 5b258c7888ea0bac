"""Prices of model tokens, to estimate the cost of runs whose CLI reports tokens only.

A :class:`PriceTable` maps model names to :class:`Price` (USD per million input, output and
cached input tokens). It is plain data: the file it comes from (``FORGELINE_PRICES``, or the
default shipped with the package) is read by the composition root.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from forgeline.domain.agent import Usage
from forgeline.domain.errors import ValidationError

_MILLION = 1_000_000


@dataclass(frozen=True, slots=True)
class Price:
    """USD per million tokens of one model. ``cached`` prices cache reads (default: the
    input price); cache writes are priced as input."""

    input: float
    output: float
    cached: float | None = None

    def cost(self, usage: Usage) -> float:
        """What ``usage`` costs. ``input_tokens`` counts uncached input only (forgeline's
        usage keeps cache reads apart), so each kind is priced once."""
        cached = self.input if self.cached is None else self.cached
        return (
            usage.input_tokens * self.input
            + usage.cache_write_tokens * self.input
            + usage.cache_read_tokens * cached
            + usage.output_tokens * self.output
        ) / _MILLION


@dataclass(frozen=True, slots=True)
class PriceTable:
    """Prices by model name; lookups ignore case and a ``provider/`` prefix."""

    prices: Mapping[str, Price] = field(default_factory=dict)

    @classmethod
    def from_json(cls, obj: Any) -> PriceTable:
        """Build a table from ``{"models": {name: {"input": …, "output": …, "cached": …}}}``;
        ``ValidationError`` naming the first bad entry."""
        models = obj.get("models") if isinstance(obj, Mapping) else None
        if not isinstance(models, Mapping):
            raise ValidationError('a price table is an object with a "models" object')
        prices = {}
        for name, entry in models.items():
            try:
                cached = entry.get("cached")
                price = Price(
                    input=float(entry["input"]),
                    output=float(entry["output"]),
                    cached=None if cached is None else float(cached),
                )
            except (AttributeError, KeyError, TypeError, ValueError):
                raise ValidationError(
                    f"price of model {name!r}: needs numbers input and output (USD per million)"
                ) from None
            if min(price.input, price.output, price.cached or 0.0) < 0:
                raise ValidationError(f"price of model {name!r} is negative")
            prices[str(name).lower()] = price
        return cls(prices)

    def price(self, model: str | None) -> Price | None:
        """The price of ``model``, if the table has it."""
        if not model:
            return None
        name = model.lower()
        return self.prices.get(name) or self.prices.get(name.rpartition("/")[2])

    def estimate(self, model: str | None, usage: Usage) -> float | None:
        """What ``usage`` of ``model`` costs, or None when the price is unknown."""
        price = self.price(model)
        return None if price is None else price.cost(usage)
