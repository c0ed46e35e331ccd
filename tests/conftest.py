"""Fixtures: process rank pools over ZeroMQ, one per world size, shared by the session."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from helpers import RankPool

_pools: dict[int, RankPool] = {}


def get_pool(size: int) -> RankPool:
    """The session's pool of ``size`` ranks; a pool broken by a failed test is replaced."""
    pool = _pools.get(size)
    if pool is None or not pool.alive:
        pool = _pools[size] = RankPool(size)
    return pool


@pytest.fixture(scope="session", autouse=True)
def _close_pools() -> Iterator[None]:
    yield
    for pool in _pools.values():
        pool.close()
