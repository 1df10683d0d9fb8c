"""Usage and cost accounting, with a price table the user can extend or override."""

from __future__ import annotations

import json
import tomllib
from dataclasses import asdict, dataclass
from pathlib import Path

from ..errors import UserError

#: USD per million (prompt, completion) LLM tokens, list prices when written; override with --price-table or
#: --input-price-per-mtok/--output-price-per-mtok, since prices change and local servers cost nothing.
BUILTIN_PRICES: dict[str, tuple[float, float]] = {
    "gpt-4o-mini": (0.15, 0.60),
    "gpt-4o": (2.50, 10.00),
    "gpt-4.1": (2.00, 8.00),
    "gpt-4.1-mini": (0.40, 1.60),
    "gpt-4.1-nano": (0.10, 0.40),
    "gpt-3.5-turbo": (0.50, 1.50),
}


def load_price_table(path: str | None) -> dict[str, tuple[float, float]]:
    table = dict(BUILTIN_PRICES)
    if not path:
        return table
    p = Path(path)
    if not p.is_file():
        raise UserError(f"{p}: price table not found")
    try:
        data = tomllib.loads(p.read_text()) if p.suffix == ".toml" else json.loads(p.read_text())
        for model, entry in data.items():
            table[model] = (float(entry["input_per_mtok"]), float(entry["output_per_mtok"]))
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise UserError(f"{p}: price table must map model -> "
                        f"{{input_per_mtok, output_per_mtok}} ({exc})") from None
    return table


def model_price(model: str, table_path: str | None, input_override: float | None,
                output_override: float | None) -> tuple[float, float] | None:
    """(input, output) USD per million LLM tokens, or None when the model's price is unknown."""
    base = load_price_table(table_path).get(model)
    if input_override is None and output_override is None:
        return base
    return (input_override if input_override is not None else (base[0] if base else 0.0),
            output_override if output_override is not None else (base[1] if base else 0.0))


@dataclass
class Usage:
    calls: int = 0  # HTTP requests sent, retries included
    cached: int = 0  # replies served from the cache
    retries: int = 0
    timeouts: int = 0  # calls cut off at the first-token or chunk timeout
    prompt_tokens: int = 0  # LLM tokens, as reported by the endpoint for the calls of this run
    completion_tokens: int = 0

    def cost(self, price: tuple[float, float] | None) -> float | None:
        if price is None:
            return None
        return (self.prompt_tokens * price[0] + self.completion_tokens * price[1]) / 1e6

    def as_dict(self) -> dict[str, int]:
        return asdict(self)
