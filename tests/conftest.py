"""Fixtures: process rank pools, one per (world size, transport), shared by the session."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from runners import RankPool

_pools: dict[tuple[int, str], RankPool] = {}


def get_pool(size: int, transport: str = "auto") -> RankPool:
    """The session's pool of ``size`` ranks on ``transport``; a pool broken by a failed test
    is replaced."""
    pool = _pools.get((size, transport))
    if pool is None or not pool.alive:
        pool = _pools[(size, transport)] = RankPool(size, transport=transport)
    return pool


@pytest.fixture(scope="session", autouse=True)
def _warm_native() -> None:
    """Compile the numba kernels once before any rank starts (1-2 s from numba's cache): on
    a fresh clone every rank would otherwise compile what it calls first, for seconds to
    minutes, while its peers wait inside operations with 30 s timeouts."""
    import ringcomm.native

    ringcomm.native.warm_cache()


@pytest.fixture(scope="session", autouse=True)
def _close_pools() -> Iterator[None]:
    yield
    for pool in _pools.values():
        pool.close()
