"""Cost: a price table (prices.yaml, USD per million tokens) and a budget that stops new calls
before spending could pass `--max-cost`."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field

from factory.config import ROOT, Strict
from factory.errors import BudgetExceeded, FactoryError
from factory.models.spec import ModelSpec
from factory.yamlfile import load_yaml

DEFAULT_PRICES = ROOT / "prices.yaml"
CHARS_PER_TOKEN = 4  # for estimates before a call; usage figures replace them after
MESSAGE_OVERHEAD = 8  # tokens a chat format may add per message (OpenAI's adds 3 or 4)


class Price(Strict):
    input: float = Field(ge=0, description="USD per million input tokens")
    output: float = Field(ge=0, description="USD per million output tokens")
    cached_input: float | None = Field(default=None, ge=0, description="USD per million input tokens read from "
                                       "the provider's prompt cache (default: the input price)")
    cache_write: float | None = Field(default=None, ge=0, description="USD per million input tokens written to "
                                      "the prompt cache (Anthropic; default: the input price)")


class PriceTable(Strict):
    batch_discount: float = Field(default=0.5, gt=0, le=1)
    openai: dict[str, Price] = Field(default_factory=dict)
    anthropic: dict[str, Price] = Field(default_factory=dict)

    def price(self, provider: str, model: str) -> Price | None:
        """The model's price; a dated snapshot (gpt-4o-mini-2024-07-18) matches its family's
        longest prefix. Local models are free; None means the table does not know the model."""
        if provider == "local":
            return Price(input=0, output=0)
        table: dict[str, Price] = getattr(self, provider, {})
        if model in table:
            return table[model]
        prefixes = [name for name in table if model.startswith(name + "-")]
        return table[max(prefixes, key=len)] if prefixes else None

    def cost(self, provider: str, model: str, prompt_tokens: int, completion_tokens: int,
             batch: bool = False, cached_tokens: int = 0, cache_write_tokens: int = 0) -> float | None:
        """`prompt_tokens` counts every input token; `cached_tokens` and `cache_write_tokens` are the
        parts of it read from and written to the provider's prompt cache, billed at their own prices."""
        p = self.price(provider, model)
        if p is None:
            return None
        plain = max(0, prompt_tokens - cached_tokens - cache_write_tokens)
        read_price = p.input if p.cached_input is None else p.cached_input
        write_price = p.input if p.cache_write is None else p.cache_write
        usd = (plain * p.input + cached_tokens * read_price + cache_write_tokens * write_price
               + completion_tokens * p.output) / 1e6
        return usd * self.batch_discount if batch else usd


def load_prices(path: Path | None = None) -> PriceTable:
    return load_yaml(path or DEFAULT_PRICES, PriceTable)


def estimate_tokens(text_chars: int) -> int:
    return text_chars // CHARS_PER_TOKEN + 1


def token_bound(messages: list) -> int:
    """Input tokens a request cannot exceed: one per UTF-8 byte (a byte-level BPE token, as OpenAI's
    and Anthropic's tokenizers use, covers at least one byte), plus MESSAGE_OVERHEAD per message and
    for the reply's start. Code and non-Latin scripts can take more than one token per 4
    characters; no text takes more than one per byte."""
    return sum(len(m["content"].encode()) for m in messages) + MESSAGE_OVERHEAD * (len(messages) + 1)


class Budget:
    """Spent so far plus what calls in flight could still cost (their worst case: token_bound in,
    max_tokens out), settled to the real usage when the answer comes.
    A call is refused when its worst case would pass the limit, so the limit is never crossed."""

    def __init__(self, limit: float | None, spent: float = 0.0):
        self.limit, self.spent, self.reserved = limit, spent, 0.0
        self.exceeded = False

    def reserve(self, worst_case: float) -> None:
        if self.limit is not None and self.spent + self.reserved + worst_case > self.limit:
            self.exceeded = True
            raise BudgetExceeded(self.refusal())
        self.reserved += worst_case

    def refusal(self) -> str:
        return (f"the next call could take spending past --max-cost {self.limit:.2f} USD "
                f"(spent {self.spent:.4f}, in flight up to {self.reserved:.4f})")

    async def room_for(self, worst_case: float) -> None:
        """Wait, if need be, until `worst_case` could fit; here it always could (a Ray shard's budget
        asks the cluster for more: factory/engine/limits.py)."""

    def settle(self, worst_case: float, actual: float) -> None:
        self.reserved -= worst_case
        self.spent += actual


def require_prices(table: PriceTable, models: list[ModelSpec], what: str) -> None:
    """A budget needs a price for every model it spends on."""
    missing = [str(spec) for spec in models if table.price(spec.provider, spec.name) is None]
    if missing:
        raise FactoryError(f"{what} needs a price for {', '.join(missing)}; add it to prices.yaml "
                           "(USD per million input and output tokens) or point the pipeline's `prices:` at your table")
