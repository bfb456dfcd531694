"""Per-model token prices, for reporting the money the cache saved and what it cost.

Prices are US dollars per million tokens, ``(input, output)``: OpenAI's list
prices when this table was written. The database keeps its own table,
``pgcache_prices`` (seeded with the same, plus embedding models and the CPU
hour that prices local embeddings and the learned verifier), which the
``pgcache_savings`` view and the reports read. Override or extend them for one
process with ``PGCACHE_PRICES`` (inline JSON or the path of a JSON file), e.g.
``{"my-model": [0.5, 1.5]}``; ``{"cpu": [0.04, 0]}`` sets the CPU hour. A model
missing from the table is reported with tokens but no money.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from pathlib import Path

from .errors import ConfigurationError

DEFAULT_PRICES: dict[str, tuple[float, float]] = {
    "gpt-4o-mini": (0.15, 0.60),
    "gpt-4o": (2.50, 10.00),
    "gpt-4.1": (2.00, 8.00),
    "gpt-4.1-mini": (0.40, 1.60),
    "gpt-4.1-nano": (0.10, 0.40),
    "o3-mini": (1.10, 4.40),
    "gpt-3.5-turbo": (0.50, 1.50),
}

CPU = "cpu"
"""The price item of one CPU hour (its input price; the output price is unused)."""


def parse_prices(value: str | None, *, name: str = "PGCACHE_PRICES") -> dict[str, tuple[float, float]]:
    """The default table updated from ``value`` (JSON text or a path to a JSON file)."""
    prices = dict(DEFAULT_PRICES)
    if not value:
        return prices
    text = value
    if not value.lstrip().startswith("{"):
        try:
            text = Path(value).expanduser().read_text(encoding="utf-8")
        except OSError as exc:
            raise ConfigurationError(f"{name}: cannot read {value}: {exc.strerror or exc}") from None
    try:
        table = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ConfigurationError(f"{name} is not valid JSON: {exc.msg}") from None
    return {**prices, **check_prices(table, name)}


def check_prices(table: object, name: str = "prices") -> dict[str, tuple[float, float]]:
    """``{model: (input, output)}`` from a mapping of model names to two non-negative prices."""
    if not isinstance(table, Mapping):
        raise ConfigurationError(f'{name} must map model names to [input, output] prices, e.g. {{"m": [0.5, 1.5]}}')
    checked: dict[str, tuple[float, float]] = {}
    for model, pair in table.items():
        if (
            not isinstance(pair, (list, tuple))
            or len(pair) != 2
            or not all(
                isinstance(p, (int, float)) and not isinstance(p, bool) and math.isfinite(p) and p >= 0 for p in pair
            )
        ):
            raise ConfigurationError(f"{name}: price of {model!r} must be [input, output] dollars per 1M tokens")
        checked[str(model)] = (float(pair[0]), float(pair[1]))
    return checked


def cost(
    prices: Mapping[str, tuple[float, float]], model: str, prompt_tokens: int, completion_tokens: int
) -> float | None:
    """Dollars for the tokens, or ``None`` when the model has no price."""
    price = prices.get(model)
    if price is None:
        return None
    return (prompt_tokens * price[0] + completion_tokens * price[1]) / 1_000_000


def merged(
    stored: Mapping[str, tuple[float, float]], configured: Mapping[str, tuple[float, float]] | None
) -> dict[str, tuple[float, float]]:
    """The database's prices, with the configured ones that differ from the built-in table on top.

    A configured table holds the built-in prices too (``PGCACHE_PRICES`` extends
    them); only the prices someone set override what is stored.
    """
    table = {**DEFAULT_PRICES, **stored}
    for item, price in (configured or {}).items():
        if DEFAULT_PRICES.get(item) != tuple(price):
            table[item] = (float(price[0]), float(price[1]))
    return table


def cpu_cost(prices: Mapping[str, tuple[float, float]], milliseconds: float) -> float | None:
    """Dollars for ``milliseconds`` of CPU time, or ``None`` when the CPU hour has no price."""
    price = prices.get(CPU)
    return None if price is None else milliseconds / 3_600_000 * price[0]
