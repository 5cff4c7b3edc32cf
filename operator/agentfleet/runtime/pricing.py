"""What a model call costs, in the ledger's integer units, and what to reserve before making it. Prices are per
million tokens (the Budget's table, else the ModelEndpoint's); cost rounds up to the next micro-dollar per call so
the ledger never undercounts. The estimate is a bound, not a guess: a byte-level BPE or SentencePiece tokenizer
with byte fallback never makes more tokens than the text has UTF-8 bytes, chat templates add a few per message,
and the completion cannot exceed max_tokens; with append-only prompts the previous step's reported prompt and
completion tokens bound all but the newly appended text."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Sequence

from ..api.budget import Price
from ..api.runtime_config import ModelEndpoint
from ..ledger.money import Amount, usd_to_micro

__all__ = ["ModelPrice", "price_for", "call_cost", "prompt_token_bound", "next_prompt_bound", "call_estimate",
           "TEMPLATE_TOKENS_PER_MESSAGE", "TEMPLATE_TOKENS_PER_PROMPT"]

# Role markers and separators a chat template wraps around each message (Gemma: `<start_of_turn>user\n` ...
# `<end_of_turn>\n` is 5-6 tokens; OpenAI documents 3-4 per message). Kept generous: an overestimate only holds
# a little more budget until the call settles.
TEMPLATE_TOKENS_PER_MESSAGE = 8
TEMPLATE_TOKENS_PER_PROMPT = 8


@dataclass(frozen=True)
class ModelPrice:
    """Micro-dollars per million tokens, so a call's cost is integer arithmetic."""

    input_micro_per_m: int = 0
    output_micro_per_m: int = 0

    @classmethod
    def per_m_usd(cls, input_usd: float | None, output_usd: float | None) -> ModelPrice:
        return cls(usd_to_micro(input_usd or 0.0), usd_to_micro(output_usd or 0.0))


def price_for(endpoint: ModelEndpoint, table: Sequence[Price] = ()) -> ModelPrice:
    """The Budget's row for this model (matched by fleet name, then served model name), else the endpoint's own
    prices, else free."""
    for key in (endpoint.fleet, endpoint.model):
        row = next((p for p in table if p.model == key), None)
        if row is not None:
            return ModelPrice.per_m_usd(row.input_per_m_tokens_usd, row.output_per_m_tokens_usd)
    return ModelPrice.per_m_usd(endpoint.input_per_m_tokens_usd, endpoint.output_per_m_tokens_usd)


def _micro(tokens: int, micro_per_m: int) -> int:
    # tokens * (micro-dollars per 1e6 tokens) / 1e6, rounded up.
    return -(-tokens * micro_per_m // 1_000_000)


def call_cost(price: ModelPrice, *, prompt_tokens: int, completion_tokens: int) -> Amount:
    if prompt_tokens < 0 or completion_tokens < 0:
        raise ValueError("token counts are never negative")
    micro = _micro(prompt_tokens, price.input_micro_per_m) + _micro(completion_tokens, price.output_micro_per_m)
    return Amount(prompt_tokens + completion_tokens, micro)


def prompt_token_bound(texts: Iterable[str], *, messages: int | None = None) -> int:
    """An upper bound on the prompt tokens of these message texts (tool schemas count as text)."""
    items = list(texts)
    n = len(items) if messages is None else messages
    return (sum(len(t.encode("utf-8", errors="surrogatepass")) for t in items)
            + n * TEMPLATE_TOKENS_PER_MESSAGE + TEMPLATE_TOKENS_PER_PROMPT)


def next_prompt_bound(previous_prompt_tokens: int, previous_completion_tokens: int,
                      appended: Iterable[str]) -> int:
    """The bound for the next step of an append-only prompt: what the server counted last time, plus the reply,
    plus the messages appended since (tool results, the assistant turn's template)."""
    items = list(appended)
    return (previous_prompt_tokens + previous_completion_tokens
            + sum(len(t.encode("utf-8", errors="surrogatepass")) for t in items)
            + (len(items) + 1) * TEMPLATE_TOKENS_PER_MESSAGE)


def call_estimate(price: ModelPrice, *, prompt_tokens: int, max_tokens: int) -> Amount:
    """What to reserve for a call: the prompt bound plus every completion token it may produce."""
    if max_tokens < 1:
        raise ValueError("max_tokens must be at least 1")
    return call_cost(price, prompt_tokens=prompt_tokens, completion_tokens=max_tokens)
