"""Model prices and cost computation; the bundled table is ``prices.json`` in this package."""

from __future__ import annotations

from ._table import ModelPrice as ModelPrice
from ._table import PriceTable as PriceTable
from ._table import TokenUsage as TokenUsage
from ._table import compute_cost as compute_cost

__all__ = ["ModelPrice", "PriceTable", "TokenUsage", "compute_cost"]
