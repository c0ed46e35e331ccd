"""The choice of algorithm by size.

Choice by size, measured on this 2-core machine over ZeroMQ ipc:// with float32 (median of
20-50 iterations, ``bench/collectives.py --algorithm ...``):

- all_reduce below ``Config.small_message_bytes`` (2 MiB) uses recursive doubling, above it
  the ring. Recursive doubling pays log2(n) message latencies where the ring pays 2(n-1),
  and moves log2(n) whole buffers where the ring moves 2(n-1)/n of one. Measured, RD vs ring:
  n=2: 16 KiB 179 vs 441 us, 1 MiB 826 vs 1926 us, 4 MiB 2.30 vs 2.38 ms, 16 MiB 11.7 vs
  9.8 ms; n=4: 1 MiB 3.7 vs 4.9 ms, 4 MiB 10.1 vs 8.0 ms. The crossover lies between 1 and
  4 MiB for n=2..4; larger worlds were not measured (RD's cost grows with log2 n).
- broadcast below 64 KiB uses the binomial tree (log2 n rounds), above it the pipelined
  chain (link speed once the pipeline is full). Measured at n=4, binomial vs chain: 64 KiB
  701 vs 485 us, 1 MiB 1.20 vs 0.96 ms, 16 MiB 18.5 vs 16.4 ms.
- star is never chosen automatically; it is there to be compared.
"""

from __future__ import annotations

from ringcomm.config import ALLREDUCE_ALGORITHMS, BROADCAST_ALGORITHMS, Config
from ringcomm.topology import Topology

BINOMIAL_BROADCAST_BELOW_BYTES = 64 << 10


def _forced(
    requested: str | None, configured: str | None, choices: tuple[str, ...], op: str
) -> str | None:
    name = requested or configured
    if name is not None and name not in choices:
        raise ValueError(f"unknown {op} algorithm {name!r}: expected one of {', '.join(choices)}")
    return name


def hierarchy_applies(topology: Topology) -> bool:
    """Whether the hierarchical algorithms can run: several hosts, as many ranks on each,
    and more than one (with one rank per host the hierarchy is the flat algorithm)."""
    return topology.num_nodes > 1 and topology.uniform and topology.local_size > 1


def use_hierarchy(topology: Topology, config: Config, host_buffer: bool) -> bool:
    """Whether all_gather and reduce_scatter (and all_reduce, unless an algorithm is forced)
    run hierarchically: ``RINGCOMM_HIERARCHY=auto``, host buffers, and
    :func:`hierarchy_applies`. Measured across namespace hosts with rate-limited links, the
    hierarchy wins at every size from 4 KiB (docs/benchmarks.md), so there is no size
    threshold."""
    return config.hierarchy == "auto" and host_buffer and hierarchy_applies(topology)


def choose_allreduce(
    nbytes: int,
    size: int,
    config: Config,
    requested: str | None,
    topology: Topology | None = None,
    host_buffer: bool = True,
) -> str:
    """Name of the all_reduce algorithm: ``requested``, else the config's, else
    ``hierarchical`` where :func:`use_hierarchy`, else by size. A forced ``hierarchical``
    where it cannot run is the choice by size."""
    forced = _forced(requested, config.allreduce_algorithm, ALLREDUCE_ALGORITHMS, "all_reduce")
    if topology is None or topology.num_nodes == 1:  # the usual call: one host
        hierarchical = False
    elif forced is None:
        hierarchical = use_hierarchy(topology, config, host_buffer)
    else:
        hierarchical = host_buffer and hierarchy_applies(topology)
    if forced is not None and (forced != "hierarchical" or hierarchical):
        return forced
    if forced is None and hierarchical:
        return "hierarchical"
    return "recursive_doubling" if nbytes < config.small_message_bytes else "ring"


def choose_broadcast(nbytes: int, size: int, config: Config, requested: str | None) -> str:
    """Name of the broadcast algorithm: ``requested``, else the config's, else by size."""
    forced = _forced(requested, config.broadcast_algorithm, BROADCAST_ALGORITHMS, "broadcast")
    if forced is not None:
        return forced
    return "binomial" if nbytes < BINOMIAL_BROADCAST_BELOW_BYTES or size <= 2 else "chain"
