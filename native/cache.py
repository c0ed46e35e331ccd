"""numba's on-disk cache, made safe for many processes at once.

numba saves a compiled function by rewriting its index (signature -> data file name) and
then writing the data file, without a lock (numba/numba#4807). Ranks started together on a
fresh or stale cache compile together, so a rank could read an index entry whose data file
was not yet written, or was still the file of an earlier version of the source (numba numbers
data files from 1 again when the source changes): it then ran the old code. Two processes
saving different signatures at once could also give both the same file. ``cached`` puts
every save of ringcomm's cached functions under an exclusive ``flock`` and every load under
a shared one, on one lock file in the cache's folder.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from collections.abc import Callable, Iterator
from typing import Any

from numba import njit
from numba.core.caching import IndexDataCacheFile

LOCK_NAME = "ringcomm-numba.lock"


@contextlib.contextmanager
def _flocked(folder: str, mode: int) -> Iterator[None]:
    try:
        fd = os.open(os.path.join(folder, LOCK_NAME), os.O_RDWR | os.O_CREAT, 0o666)
    except OSError:  # a folder we cannot write to: numba does not save there either
        yield
        return
    try:
        fcntl.flock(fd, mode)
        yield
    finally:
        os.close(fd)  # (closing releases the lock)


class LockedIndexDataCacheFile(IndexDataCacheFile):
    """numba's index and data files, saved under an exclusive lock and read under a shared
    one, so a reader sees an index entry only with its data written."""

    def save(self, key: Any, data: Any) -> None:
        with _flocked(self._cache_path, fcntl.LOCK_EX):
            super().save(key, data)

    def load(self, key: Any) -> Any:
        with _flocked(self._cache_path, fcntl.LOCK_SH):
            return super().load(key)


def serialize_cache(dispatcher: Any) -> Any:
    """Make a numba dispatcher's cache take the lock; a numba whose cache is laid out
    otherwise (no ``_cache._cache_file``) keeps its own."""
    cache_file = getattr(getattr(dispatcher, "_cache", None), "_cache_file", None)
    if type(cache_file) is IndexDataCacheFile:
        cache_file.__class__ = LockedIndexDataCacheFile
    return dispatcher


def cached(**options: Any) -> Callable[[Callable[..., Any]], Any]:
    """``njit(cache=True, **options)`` whose cache takes the lock."""

    def wrap(fn: Callable[..., Any]) -> Any:
        return serialize_cache(njit(cache=True, **options)(fn))

    return wrap
