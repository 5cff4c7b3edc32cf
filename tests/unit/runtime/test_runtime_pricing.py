"""Pricing and reservation estimates (pure)."""

from __future__ import annotations

import pytest

from agentfleet.api.budget import Price
from agentfleet.api.runtime_config import ModelEndpoint
from agentfleet.ledger import Amount
from agentfleet.runtime.pricing import (
    TEMPLATE_TOKENS_PER_MESSAGE, TEMPLATE_TOKENS_PER_PROMPT, ModelPrice, call_cost, call_estimate, next_prompt_bound,
    price_for, prompt_token_bound,
)

LARGE = ModelEndpoint(role="large", fleet="large", url="http://large/v1", model="gemma-large",
                      input_per_m_tokens_usd=0.5, output_per_m_tokens_usd=1.5)
BARE = ModelEndpoint(role="small", fleet="small", url="http://small/v1", model="gemma-small")


@pytest.mark.parametrize("endpoint, table, want", [
    (LARGE, [], ModelPrice(500_000, 1_500_000)),
    (LARGE, [Price(model="large", input_per_m_tokens_usd=0.15, output_per_m_tokens_usd=0.6)],
     ModelPrice(150_000, 600_000)),
    (LARGE, [Price(model="gemma-large", input_per_m_tokens_usd=1, output_per_m_tokens_usd=2)],
     ModelPrice(1_000_000, 2_000_000)),
    (LARGE, [Price(model="gemma-large", input_per_m_tokens_usd=1, output_per_m_tokens_usd=2),
             Price(model="large", input_per_m_tokens_usd=3, output_per_m_tokens_usd=4)],
     ModelPrice(3_000_000, 4_000_000)),
    (BARE, [Price(model="large", input_per_m_tokens_usd=3, output_per_m_tokens_usd=4)], ModelPrice(0, 0)),
], ids=["endpoint-prices", "budget-by-fleet", "budget-by-served-name", "fleet-name-wins", "unpriced-is-free"])
def test_price_for(endpoint: ModelEndpoint, table: list[Price], want: ModelPrice) -> None:
    assert price_for(endpoint, table) == want


@pytest.mark.parametrize("price, prompt, completion, want", [
    (ModelPrice(500_000, 1_500_000), 1_000_000, 0, Amount(1_000_000, 500_000)),
    (ModelPrice(500_000, 1_500_000), 1000, 200, Amount(1200, 500 + 300)),
    (ModelPrice(150_000, 600_000), 7, 0, Amount(7, 2)),  # 1.05 micro-dollars rounds up
    (ModelPrice(150_000, 600_000), 0, 0, Amount(0, 0)),
    (ModelPrice(0, 0), 5000, 5000, Amount(10_000, 0)),
], ids=["a-million-input", "typical", "rounds-up", "empty", "free-model"])
def test_call_cost(price: ModelPrice, prompt: int, completion: int, want: Amount) -> None:
    assert call_cost(price, prompt_tokens=prompt, completion_tokens=completion) == want


def test_call_cost_sums_without_drift() -> None:
    price = ModelPrice.per_m_usd(0.1, 0.2)
    total = Amount()
    for _ in range(10_000):
        total += call_cost(price, prompt_tokens=10, completion_tokens=10)
    assert total == Amount(200_000, 30_000)  # 10 * 0.1 + 10 * 0.2 = 3 micro-dollars per call, exactly


def test_estimate_bounds_the_prompt_and_reserves_max_tokens() -> None:
    texts = ["You are helpful.", "¿Qué tal? 日本"]
    bound = prompt_token_bound(texts)
    assert bound == 16 + len("¿Qué tal? 日本".encode()) + 2 * TEMPLATE_TOKENS_PER_MESSAGE + TEMPLATE_TOKENS_PER_PROMPT
    est = call_estimate(ModelPrice(1_000_000, 2_000_000), prompt_tokens=bound, max_tokens=256)
    assert est == Amount(bound + 256, bound + 512)
    with pytest.raises(ValueError):
        call_estimate(ModelPrice(), prompt_tokens=1, max_tokens=0)


def test_append_only_prompt_bound_grows_by_the_appended_text() -> None:
    assert next_prompt_bound(1200, 80, ["tool result: 42"]) == 1200 + 80 + 15 + 2 * TEMPLATE_TOKENS_PER_MESSAGE
