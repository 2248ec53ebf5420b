"""The accountant: what each response cost, and the gateway's totals.

It is one actor of the chain (between the transformer and the ID encoder), and
:meth:`Accountant.price` is its step: on the batch that ends a response it prices the terminal
event's usage, normalises its shape, and attaches the :class:`Settlement` the recorder stores.
A response cut before its upstream reported usage is settled from an estimate
(:meth:`Accountant.estimate`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import attrs
import trio

from .._types import ResponseEvent, Usage
from ..config import Deployment
from ..pricing import ModelPrice, PriceTable, TokenUsage, compute_cost
from ..runtime._messages import Batch, EventItem, Settlement

__all__ = ["Accountant", "AccountantStatistics", "run_accountant"]


@attrs.frozen(kw_only=True)
class AccountantStatistics:
    responses_settled: int
    input_tokens: int
    output_tokens: int
    cost: float
    unpriced: int


@attrs.define(eq=False)
class Accountant:
    """Prices usage; shared by every request of a gateway (its totals are the gateway's)."""

    _prices: PriceTable
    _include_cost: bool
    #: Told the tokens each response used, by deployment (the router's tpm windows).
    _on_usage: Callable[[Deployment, int], None] | None = None
    _settled: int = 0
    _input: int = 0
    _output: int = 0
    _cost: float = 0.0
    _unpriced: int = 0

    def price(self, item: EventItem) -> EventItem:
        """The actor's step: a batch that ends a response gets its terminal event's usage
        priced and normalised and its :class:`Settlement` attached; anything else passes."""
        if not isinstance(item, Batch):
            return item
        # A terminal event is always the last of its stream, hence of its batch.
        events = item.events
        last = events[-1]
        if type(last) is not ResponseEvent or not last.is_terminal:
            return item
        deployment = item.routed.deployment
        events[-1], settlement = self.settle(last, self.price_for(deployment))
        self.report(deployment, settlement)
        return attrs.evolve(item, settlement=settlement)

    def price_for(self, deployment: Deployment) -> ModelPrice | None:
        return deployment.price or self._prices.lookup(deployment.provider, deployment.model)

    def settle(
        self, event: ResponseEvent, price: ModelPrice | None
    ) -> tuple[ResponseEvent, Settlement]:
        """Account the terminal event's usage, normalise its shape, attach ``usage.cost`` when
        configured; the event and what it cost."""
        raw = event.response_data.get("usage")
        if not isinstance(raw, dict):
            return event, Settlement(None, None)
        settlement, normal = self._settle_usage(raw, price)
        if self._include_cost:
            normal["cost"] = settlement.cost
        if normal == raw:
            return event, settlement
        return event.with_response_fields(usage=normal), settlement

    def settle_usage(self, raw: Any, price: ModelPrice | None) -> Settlement:
        """Account a usage object the upstream reported outside a terminal event (the final
        Response of a background response it cancelled, read with a GET): what it cost."""
        if not isinstance(raw, dict):
            return Settlement(None, None)
        return self._settle_usage(raw, price)[0]

    def _settle_usage(
        self, raw: dict[str, Any], price: ModelPrice | None
    ) -> tuple[Settlement, dict[str, Any]]:
        usage = Usage.from_dict(raw)
        cost = self._account(usage, price)
        normal = _normalized_usage(raw, usage)
        return Settlement(dict(normal), cost), normal

    def report(self, deployment: Deployment, settlement: Settlement) -> None:
        usage = settlement.usage
        if self._on_usage is not None and usage is not None:
            tokens = usage.get("total_tokens")
            if not isinstance(tokens, int):
                tokens = int(usage.get("input_tokens") or 0) + int(usage.get("output_tokens") or 0)
            self._on_usage(deployment, tokens)

    def estimate(self, input_chars: int, output_chars: int, price: ModelPrice | None) -> Settlement:
        """Usage for a response cut before the upstream reported any (cancelled, failed
        mid-stream): about four characters a token, the common estimate for English text
        without a tokenizer. The spend row marks it as estimated."""
        usage = Usage.from_dict(
            {
                "input_tokens": -(-input_chars // _CHARS_PER_TOKEN),
                "output_tokens": -(-output_chars // _CHARS_PER_TOKEN),
            }
        )
        cost = self._account(usage, price)
        return Settlement(_normalized_usage({}, usage), cost, estimated=True)

    def _account(self, usage: Usage, price: ModelPrice | None) -> float | None:
        cost = None
        if price is not None:
            cost = compute_cost(
                price,
                TokenUsage(
                    input_tokens=usage.input_tokens,
                    cached_tokens=usage.input_tokens_details.cached_tokens,
                    cache_write_tokens=usage.input_tokens_details.cache_write_tokens,
                    output_tokens=usage.output_tokens,
                    reasoning_tokens=usage.output_tokens_details.reasoning_tokens,
                ),
            )
            self._cost += cost
        else:
            self._unpriced += 1
        self._settled += 1
        self._input += usage.input_tokens
        self._output += usage.output_tokens
        return cost

    def statistics(self) -> AccountantStatistics:
        return AccountantStatistics(
            responses_settled=self._settled,
            input_tokens=self._input,
            output_tokens=self._output,
            cost=self._cost,
            unpriced=self._unpriced,
        )


_CHARS_PER_TOKEN = 4


def _normalized_usage(raw: dict[str, Any], usage: Usage) -> dict[str, Any]:
    """Every detail field present (0 when the upstream did not say), unknown ones kept.

    Older servers omit ``cache_write_tokens`` and sometimes whole detail objects; current SDK
    types require them (the Responses API reference, usage).
    """
    return {
        **raw,
        "input_tokens": usage.input_tokens,
        "input_tokens_details": {
            **(raw.get("input_tokens_details") or {}),
            "cached_tokens": usage.input_tokens_details.cached_tokens,
            "cache_write_tokens": usage.input_tokens_details.cache_write_tokens,
        },
        "output_tokens": usage.output_tokens,
        "output_tokens_details": {
            **(raw.get("output_tokens_details") or {}),
            "reasoning_tokens": usage.output_tokens_details.reasoning_tokens,
        },
        "total_tokens": usage.total_tokens or usage.input_tokens + usage.output_tokens,
    }


async def run_accountant(
    accountant: Accountant,
    *,
    inbox: trio.MemoryReceiveChannel[EventItem],
    outbox: trio.MemorySendChannel[EventItem],
) -> None:
    """The accountant in a task of its own (the unfused layout)."""
    with inbox, outbox:
        async for item in inbox:
            await outbox.send(accountant.price(item))
