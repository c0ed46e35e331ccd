"""Measured algorithm choices: the file ``bench/tune.py`` writes and ``init`` reads.

The file (JSON) holds one entry per (transport, world size, operation): the algorithm per
size range that measured fastest on this machine, in the syntax of
``RINGCOMM_ALLREDUCE_ALGORITHM`` (``direct:0-1M;ring:1M-``). A communicator whose transport
and size have an entry uses it for every size the user did not force an algorithm for
(``RINGCOMM_<OP>_ALGORITHM`` and ``algorithm=`` still win); elsewhere the defaults in
:mod:`ringcomm.algorithms.choice` apply. ``RINGCOMM_TUNE_FILE`` names the file (default
``$XDG_CACHE_HOME/ringcomm/tune.json``, ``~/.cache`` without it; ``none``: read nothing).
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
from collections.abc import Mapping
from typing import Any

from ringcomm.config import ALGORITHM_FIELDS, ALGORITHMS, Config, parse_algorithms
from ringcomm.logs import get_logger

log = get_logger(__name__)

FORMAT = 1
_NO_END = 1 << 62


def default_path() -> str:
    """``$XDG_CACHE_HOME/ringcomm/tune.json`` (``~/.cache`` without it)."""
    cache = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(cache, "ringcomm", "tune.json")


def path_of(config: Config) -> str | None:
    """The tune file ``config`` names (None: ``none``)."""
    if config.tune_file == "none":
        return None
    return config.tune_file or default_path()


def size_text(nbytes: int) -> str:
    """``4096`` -> ``4K``, ``1048576`` -> ``1M`` (what :func:`ringcomm.config.parse_size`
    reads back)."""
    for unit, shift in (("G", 30), ("M", 20), ("K", 10)):
        if nbytes >= 1 << shift and nbytes % (1 << shift) == 0:
            return f"{nbytes >> shift}{unit}"
    return str(nbytes)


def ranges(fastest: Mapping[int, str]) -> str:
    """The ranges spec of measured winners ``{size: algorithm}``: each size's winner holds
    from it up to the next size measured (the first from 0, the last without end)."""
    sizes = sorted(fastest)
    parts: list[list[Any]] = []
    for i, size in enumerate(sizes):
        name = fastest[size]
        lo = 0 if i == 0 else size
        if parts and parts[-1][0] == name:
            continue
        if parts:
            parts[-1][2] = lo
        parts.append([name, lo, _NO_END])
    return ";".join(
        f"{name}:{size_text(lo) if lo else 0}-{size_text(hi) if hi != _NO_END else ''}"
        for name, lo, hi in parts
    )


def load(path: str) -> list[dict[str, Any]]:
    """The entries of ``path`` ([] where there is no file); a file that does not parse is
    reported and ignored, never fatal."""
    try:
        st = os.stat(path)
    except OSError:
        return []
    return list(_load(path, st.st_mtime_ns, st.st_size))


@functools.lru_cache(maxsize=8)
def _load(path: str, mtime_ns: int, nbytes: int) -> tuple[dict[str, Any], ...]:
    try:
        with open(path) as f:
            doc = json.load(f)
        if doc.get("format") != FORMAT:
            raise ValueError(f"format {doc.get('format')!r}, expected {FORMAT}")
        entries = []
        for e in doc["entries"]:
            parse_algorithms(e["algorithms"], _choices(e["op"]))
            entries.append(
                {"transport": str(e["transport"]), "size": int(e["size"]), "op": e["op"],
                 "algorithms": e["algorithms"]}
            )  # fmt: skip
        return tuple(entries)
    except (OSError, ValueError, KeyError, TypeError) as e:
        log.warning("ignoring the tune file %s: %s", path, e)
        return ()


def _choices(op: str) -> tuple[str, ...]:
    if op not in ALGORITHMS:
        raise ValueError(f"unknown operation {op!r}")
    return ALGORITHMS[op]


def apply(config: Config, transport: str, size: int) -> Config:
    """``config`` with every algorithm the user left unset filled from the tune file's
    entry for ``transport`` and ``size`` (``config`` itself where there is none)."""
    path = path_of(config)
    if path is None:
        return config
    tuned = {
        e["op"]: e["algorithms"]
        for e in load(path)
        if e["transport"] == transport and e["size"] == size and e["op"] in ALGORITHM_FIELDS
    }
    fill = {
        ALGORITHM_FIELDS[op]: spec
        for op, spec in tuned.items()
        if getattr(config, ALGORITHM_FIELDS[op]) is None
    }
    return dataclasses.replace(config, **fill) if fill else config


def save(path: str, machine: str, new: list[dict[str, Any]]) -> None:
    """Write ``new`` entries into ``path``, replacing the entries of the same transport,
    size and operation and keeping the others."""
    keys = {(e["transport"], e["size"], e["op"]) for e in new}
    old = [e for e in load(path) if (e["transport"], e["size"], e["op"]) not in keys]
    doc = {"format": FORMAT, "machine": machine, "entries": old + new}
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = f"{path}.{os.getpid()}.tmp"
    with open(tmp, "w") as f:
        json.dump(doc, f, indent=1)
    os.replace(tmp, path)
