"""The ledger for the behavioural suite: every test that takes `ledger` runs once on each state backend
(`store_factory` in tests/unit/conftest.py: SQLite and a real redis-server)."""

from __future__ import annotations

import datetime as dt
from typing import Any, Iterator

import pytest

from agentfleet.ledger import Ledger

T0 = dt.datetime(2025, 3, 10, 12, 0, tzinfo=dt.timezone.utc)  # a Monday, mid-month, mid-day


@pytest.fixture
def ledger(store_factory: Any) -> Iterator[Ledger]:
    led = Ledger(store_factory(), hold_ttl_s=600)
    yield led


@pytest.fixture
def t0() -> dt.datetime:
    return T0
