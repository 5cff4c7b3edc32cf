"""Money and token amounts as integers: a ledger that adds floats drifts, so dollars live here as micro-dollars
(1 USD = 1,000,000) and only become floats when written into a status or a response."""

from __future__ import annotations

from dataclasses import dataclass
from decimal import ROUND_HALF_UP, Decimal

__all__ = ["MICRO_PER_USD", "Amount", "usd_to_micro", "micro_to_usd"]

MICRO_PER_USD = 1_000_000


def usd_to_micro(usd: float) -> int:
    """Dollars as whole micro-dollars, through the decimal text so 0.15 is 150000, not 149999."""
    return int((Decimal(str(usd)) * MICRO_PER_USD).to_integral_value(rounding=ROUND_HALF_UP))


def micro_to_usd(micro_usd: int) -> float:
    return round(micro_usd / MICRO_PER_USD, 6)


@dataclass(frozen=True)
class Amount:
    """Tokens and micro-dollars, the two things a Budget limits."""

    tokens: int = 0
    micro_usd: int = 0

    def __add__(self, other: Amount) -> Amount:
        return Amount(self.tokens + other.tokens, self.micro_usd + other.micro_usd)

    def __sub__(self, other: Amount) -> Amount:
        return Amount(self.tokens - other.tokens, self.micro_usd - other.micro_usd)

    def floor0(self) -> Amount:
        """Each part clamped at zero."""
        return Amount(max(self.tokens, 0), max(self.micro_usd, 0))

    def fits_in(self, room: Amount) -> bool:
        return self.tokens <= room.tokens and self.micro_usd <= room.micro_usd

    def share(self, fraction: float) -> Amount:
        """`fraction` of each part, rounded down so shares never add up to more than the whole."""
        f = Decimal(str(fraction))
        return Amount(int(Decimal(self.tokens) * f), int(Decimal(self.micro_usd) * f))

    @property
    def usd(self) -> float:
        return micro_to_usd(self.micro_usd)

    def wire(self) -> list[int]:
        return [self.tokens, self.micro_usd]

    @classmethod
    def from_wire(cls, value: list[int]) -> Amount:
        return cls(int(value[0]), int(value[1]))
