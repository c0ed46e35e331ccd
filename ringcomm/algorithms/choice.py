"""The choice of algorithm by operation, size, world size and transport.

Order: the caller's ``algorithm=``, else ``RINGCOMM_<OP>_ALGORITHM`` for this size (one
name, or one per size range), else the tune file's measured choice for this transport and
world size (:mod:`ringcomm.algorithms.tuning`, written by ``bench/tune.py``), else the
defaults below. ``direct`` (the shared-memory board) applies only where every rank of the
communicator shares this host over shared memory; ``hierarchical`` only across hosts.

Defaults on the board (:data:`BOARD_DEFAULTS`), 2026-11-30 on this 2-core machine, float32,
median of the slowest rank. Two sources: ``ringcomm-run -n N python bench/tune.py --dry-run``
(the candidates take turns within one launch: the fairer comparison on a machine whose
speed drifts) and ``bench/collectives.py`` before and after the board, in alternating
launches (docs/benchmarks.md). Microseconds, board vs the best point-to-point algorithm:

- n=2: all_reduce 4 KiB 14.5 vs 16.2 (recursive doubling), 64 KiB 27 vs 24, 1 MiB 122 vs
  88: the board only below 64 KiB, since recursive doubling at n=2 is one exchange read by
  address. all_gather: the board up to 4 MiB (1.08 vs 1.23 ms), the ring from 16 MiB (3.4
  vs 4.1 ms). reduce_scatter: bench/tune.py finds the board faster below 1 MiB (97 vs 105 us
  at 256 KiB; 296 vs 123 us at 1 MiB), but alternating launches found it 7-25% slower from
  16 KiB to 256 KiB (and 1.21x faster at 4 KiB): the board below 16 KiB. broadcast: the
  board below 64 KiB (11 vs 12-13 us at 4 KiB in turns; 11.8 vs 11.0 in alternating
  launches), then within 5% of binomial and chain. reduce: the binomial tree from 64 KiB
  (one exchange by address).
- n=2 again after the native pieces (ringcomm.native.board) and the by-address all_gather,
  2026-11-30, ``bench/tune.py --dry-run``, two launches each, board vs ring:
  reduce_scatter 16 KiB 14.7-15.2 vs 28.4-29.0, 128 KiB 30.5-30.8 vs 35.6-36.1, 256 KiB
  46.7-47.7 vs 46.9-49.0, 512 KiB 75.8-78.1 vs 77.9-78.7, 1 MiB 138 vs 112-124: the board
  below 512 KiB. all_gather (the whole output): 64 KiB 19 vs 25, 256 KiB 46-48 vs 34-40
  (128 KiB a rank, through the area), from 1 MiB by address 83 vs 108, 4 MiB 258 vs 305,
  16 MiB 1.75 vs 2.03 ms, 64 MiB 9.0 vs 9.4 ms: the board except 128-512 KiB.
  all_reduce above 64 KiB stays with recursive doubling (one exchange by address): a
  one-step native piece up to 1 MiB measured 65 vs 35 us at 256 KiB.
- n=4 broadcast after the native pieces, one launch each, the slowest rank's median of 500
  calls, back to back | with a barrier before each: 4 KiB board 35-52 | 12-49 us, binomial
  18-27 | 99-150; 64 KiB board 53-107 | 48-57, binomial 29-35 | 96-138; 256 KiB board 185 |
  140, binomial 45 | 118. A tree lets the root run ahead of back-to-back broadcasts, but
  ranks that enter together (as between phases of compute) wait for one hop on the board
  and log2(n) on the tree, each a rank to be scheduled where ranks outnumber cores: the
  board below 256 KiB.
- n=4 (ranks outnumber cores), before -> after in alternating launches: all_reduce 4 KiB
  146 -> 96, 256 KiB 462 -> 228, 4 MiB 4.0 -> 2.6 ms, but 16 MiB 9.1 -> 10.3 and 64 MiB 37
  -> 66 ms: the board below 16 MiB. all_gather 1.2-1.8x faster up to 4 MiB, 0.83x at 16
  MiB: below 16 MiB. reduce_scatter 1.04-2.1x at every size: always. broadcast 0.36-0.85x
  up to 1 MiB (the tree lets the root run further ahead), 1.34-2.08x from 4 MiB: from 4
  MiB. reduce (bench/tune.py): binomial below 256 KiB (30 vs 59 us at 4 KiB), the board
  above (1 MiB 295 vs 658 us).
- After the native by-address reads (``RINGCOMM_SHM_BOARD_BY_ADDRESS_BYTES``, 16 KiB a
  rank, and up read where they lie, in the native call), 2026-11-30, ``bench/collectives.py``
  with the board forced and not, in turns, in-place times in us.

  all_gather (whole output), n=2, by address vs through the areas: 32 KiB 12.7 vs 17.3,
  64 KiB 14.0 vs 26-39, 256 KiB 25 vs 75, 2 MiB 117 vs 508; the ring lost to both. n=4,
  both on the board: 256 KiB 120-135 vs 167-218, 4 MiB 1.2 vs 1.6-2.6 ms; the board's
  16 MiB 5.5 vs the ring's 5.9 ms. The board at every size.

  broadcast, n=2, board vs the binomial tree (the default from 64 KiB before): 64 KiB
  13.7 vs 17.2, 1 MiB 92 vs 38 (cache shared) or 430 (not shared), 4 MiB 191 vs 1,714
  (not shared), 64 MiB 5.2 vs 4.4-24.6 ms. n=4: 256 KiB 117-122 vs 138-146, 1 MiB 367 vs
  460-605. The board at every size. The trade: a root that writes its buffer just before
  the broadcast (out of place, copied in first) makes the reader fetch those lines from
  the root's cache in the system call; through the areas below 64 KiB that was up to 5 us
  faster, by address in place up to 10 us faster.

  reduce_scatter by address (each rank reads its chunk of every peer's input where it
  lies, through a 256 KiB scratch) vs through the areas, n=2: 64 KiB 15 vs 28, 256 KiB 27
  vs 80, and vs the ring (the default from 512 KiB before) 1 MiB 84 vs 110, 4 MiB 306-317
  vs 355, 16 MiB 1.32 vs 1.40-1.51 ms; n=4: 1 MiB 276-281 vs 670-768, 4 MiB 0.88-0.99 vs
  2.6 ms. The board at every size.

  all_reduce from 64 KiB by address in two steps (each rank reduces its slice of every
  buffer where it lies, then reads the others' reduced slices), n=2, vs recursive doubling
  and the ring: 256 KiB 59 vs 30 (cache shared) or 124, 1 MiB 146-149 vs 75 or 510, 4 MiB
  352-366 vs 396 or 1,687, 16 MiB 2.3-2.5 vs 1.9 or 3.9 ms, 64 MiB 10.7-11.6 vs 10.4-10.5
  ms. The board's figures hold in both of the machine's states (MPICH's 1 MiB: 141 us in
  both); the point-to-point ones swing 2-7x: the board below 32 MiB. n=4, through the
  areas -> by address: 256 KiB 328-407 -> 188-392, 1 MiB 1.0 -> 0.44-1.2 ms, 4 MiB 3.9-4.4
  -> 1.3-4.1 ms.
- all_reduce from 64 KiB through the areas in 512 KiB pieces (where the cores share a
  cache), 2026-12-06, ``bench/collectives.py all_reduce``, board forced
  (``RINGCOMM_ALL_REDUCE_ALGORITHM=direct``) vs the default, two alternating launches
  each, in-place us: n=2 16 MiB 1047-1140 vs 1126-1228 (the board already), 32 MiB
  3498-3580 vs the ring's 3718-4116, 64 MiB 7276-7346 vs 7441-9625: the board at every
  size. n=4 16 MiB 6643-8009 vs the ring's 6254-7130, 32 MiB 12558-13133 vs 15370-15877,
  64 MiB 29430-33150 vs 30273-30309: left below 16 MiB.
- all_reduce on more than two ranks from 16 MiB, 2026-12-07, after its pieces went in one
  native call (``Board.native_piece``), ``bench/collectives.py all_reduce -b 4M -e 64M
  -f 4``, ``--algorithm direct`` vs the default (the ring), two alternating launches each,
  in-place us: n=3 16 MiB 2741-2782 vs 4708-4932, 64 MiB 11.9 vs 25.7-26.5 ms; n=4 16 MiB
  3305-3442 vs 5988-6417, 64 MiB 12.7-13.7 vs 22.0-26.5 ms; n=8 16 MiB 7.7-9.5 vs
  14.5-15.7 ms, 64 MiB 29.2-30.9 vs 54.0-76.8 ms: the board at every size.
- This machine's two vCPUs sometimes share a last-level cache and sometimes not (it
  changes from launch to launch): a 1 MiB broadcast then takes 38 us or 400 us, every
  algorithm alike, because a rank writing lines its peer just read pays a cross-chiplet
  invalidation per line. Compare algorithms side by side, in turns.

Point-to-point defaults, float32:

- all_reduce on two ranks: recursive doubling below ``Config.small_message_bytes`` (2 MiB),
  the ring from there. At n=2 both move the buffer once; recursive doubling in one
  exchange. Measured over ZeroMQ ipc://, RD vs ring: 16 KiB 179 vs 441 us, 1 MiB 826 vs
  1926 us, 4 MiB 2.30 vs 2.38 ms, 16 MiB 11.7 vs 9.8 ms.
- On more than two ranks, 2026-11-30, across "hosts" made of network namespaces, one rank
  each (``sudo python bench/hosts.py --hosts H --ranks-per-host 1 --placements block
  --algorithms ...``), links rate-limited to 400 Mbit/s (the network is the bottleneck from
  64 KiB) or to 10 Gbit/s (the two CPUs are), busbw in MB/s, median of 10-20:

  all_reduce, recursive doubling / Rabenseifner / ring:

  - n=4, 400M: 4 KiB 12.9 / 5.7 / 4.7, 16 KiB 45 / 19 / 18, 64 KiB 36 / 47 / 53, 256 KiB 36 / 48 /
    48, 1 MiB 36 / 48 / 48, 4 MiB 28 / 47 / 48, 16 MiB 35 / 43 / 48;
  - n=4, 10G: 4 KiB 11 / 6.3 / 4.8, 16 KiB 35 / 24 / 15, 64 KiB 106 / 86 / 59, 256 KiB 241 / 180 /
    129, 1 MiB 264 / 320 / 288, 4 MiB 305 / 415 / 404, 16 MiB 329 / 494 / 469;
  - n=8, 400M: 4 KiB 5.4 / 2.3 / 1.4, 16 KiB 18 / 8.9 / 5.2, 64 KiB 28 / 34 / 21, 256 KiB 28 / 47
    / 47, 1 MiB 17 / 47 / 48, 4 MiB 17 / 40 / 48;
  - n=3, 400M: 4 KiB 19 / 11 / 9.1, 16 KiB 65 / 37 / 35, 64 KiB 32 / 32 / 48, 256 KiB 32 / 32 /
    48, 1 MiB 24 / 25 / 48, 4 MiB 22 / 22 / 48;
  - n=3, 10G: 4 KiB 14 / 10 / 8.2, 16 KiB 59 / 23 / 38, 64 KiB 182 / 134 / 86, 256 KiB 430 / 400 /
    291, 1 MiB 465 / 449 / 477, 4 MiB 448 / 451 / 590;
  - n=6, 400M: 4 KiB 7.7 / 5.3 / 2.4, 16 KiB 24 / 20 / 10, 64 KiB 27 / 32 / 31, 256 KiB 26 / 32 /
    47, 1 MiB 22 / 26 / 48, 4 MiB 19 / 22 / 48;

  Recursive doubling takes log2 n steps but sends the whole buffer at each (and a world that
  is not a power of two folds whole buffers in and out); Rabenseifner's takes 2 log2 n steps
  with the ring's bytes; the ring 2(n-1) steps. So recursive doubling below 256 KiB (the
  crossover lies at 16-64 KiB on the slow links, 256 KiB-1 MiB where the CPUs bound it),
  then Rabenseifner on a power of two of ranks (1.3-2.8x recursive doubling at 256 KiB-1 MiB
  on the slow links; at 1 MiB on the fast ones 1.1x the ring and 1.2x recursive doubling,
  but 0.75x recursive doubling at 256 KiB) and the ring on others (1.5-2x either from 256
  KiB on the slow links, where the folds cost whole buffers; 0.68x recursive doubling at 256
  KiB on the fast ones), and the ring from 2 MiB (up to 1.2x Rabenseifner at 4-16 MiB on the
  slow links: it keeps the link busy between steps).

  all_gather, Bruck / ring, by the whole output: n=4, 400M 5.2 / 4.0 at 4 KiB, 73 / 56 at
  64 KiB, 48 / 48 at 256 KiB, 45 / 48 at 1 MiB, 38 / 48 at 4 MiB; n=4, 10G 4.9 / 3.8, 71
  / 56, 156 / 161, 350 / 335, 443 / 411; n=8, 400M 1.9 / 1.2, 34 / 15 at 64 KiB, 48 / 48
  at 1 MiB, 34 / 48 at 4 MiB: Bruck below 1 MiB.

  reduce_scatter, recursive halving / ring, by the whole input: n=4, 400M 4.5 / 3.4 at
  4 KiB, 73 / 41 at 64 KiB, 48 / 48 from 256 KiB to 4 MiB, 40 / 48 at 16 MiB; n=4, 10G
  4.4 / 3.1, 71 / 50, 179 / 145, 444 / 369 at 1 MiB, 407 / 379 at 4 MiB, 477 / 417 at 16
  MiB; n=8, 400M 2.3 / 1.1, 30 / 17 at 64 KiB, 48 / 48 at 1 MiB, 38 / 48 at 4 MiB:
  recursive halving below 4 MiB on a power of two of ranks.

  Both end as the ring does at large sizes; at n=2 they are the ring. Where the network
  differs, ``bench/tune.py`` measures them all.
- broadcast below 64 KiB uses the binomial tree (log2 n rounds), above it the pipelined
  chain (link speed once the pipeline is full). Measured at n=4, binomial vs chain: 64 KiB
  701 vs 485 us, 1 MiB 1.20 vs 0.96 ms, 16 MiB 18.5 vs 16.4 ms.
- star is never chosen automatically; it is there to be compared.
"""

from __future__ import annotations

import functools

from ringcomm.config import ALGORITHM_FIELDS, ALGORITHMS, Config, parse_algorithms
from ringcomm.topology import Topology

BINOMIAL_BROADCAST_BELOW_BYTES = 64 << 10
# Point to point on more than two ranks (measured across hosts: see the module docstring)
RECURSIVE_DOUBLING_BELOW_BYTES = 256 << 10  # all_reduce; above: Rabenseifner or the ring
BRUCK_ALLGATHER_BELOW_BYTES = 1 << 20  # the whole output
HALVING_REDUCE_SCATTER_BELOW_BYTES = 4 << 20  # the whole input
# Where the ranks can have a board, the sizes each operation runs on it by default, for two
# ranks and for more (measured with bench/tune.py, see the module docstring); other sizes
# take the point-to-point choice below.
BOARD_DEFAULTS: dict[tuple[str, bool], str | None] = {
    ("all_reduce", False): "direct",
    ("all_reduce", True): "direct",
    ("all_gather", False): "direct",
    ("all_gather", True): "direct",
    ("reduce_scatter", False): "direct",
    ("reduce_scatter", True): "direct",
    ("broadcast", False): "direct",
    ("broadcast", True): "direct",
    ("reduce", False): "direct:0-64K",
    ("reduce", True): "direct:256K-",
    ("all_to_all", False): "direct",
    ("all_to_all", True): "direct",
}


@functools.lru_cache(maxsize=64)
def _ranges(text: str, op: str) -> tuple[tuple[str, int, int], ...]:
    return parse_algorithms(text, ALGORITHMS[op])


def _forced(requested: str | None, configured: str | None, op: str, nbytes: int) -> str | None:
    """The algorithm the caller (``requested``) or the configuration forces for ``nbytes``."""
    if requested is not None:
        if requested not in ALGORITHMS[op]:
            raise ValueError(
                f"unknown {op} algorithm {requested!r}: expected one of {', '.join(ALGORITHMS[op])}"
            )
        return requested
    if configured is not None:
        for name, lo, hi in _ranges(configured, op):
            if lo <= nbytes < hi:
                return name
    return None


def _direct(op: str, nbytes: int, size: int, forced: str | None, board: bool) -> bool:
    """Whether ``op`` on ``nbytes`` runs on the board (``board``: the ranks can have one)."""
    if not board or forced not in (None, "direct"):
        return False
    if forced == "direct":
        return True
    default = BOARD_DEFAULTS[op, size > 2]
    return default is not None and any(lo <= nbytes < hi for _, lo, hi in _ranges(default, op))


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
    board: bool = False,
) -> str:
    """Name of the all_reduce algorithm: ``requested``, else the config's for this size,
    else ``hierarchical`` where :func:`use_hierarchy`, else ``direct`` where ``board``
    (every rank on this host over shared memory) and the size is below its threshold, else
    by size: the ring from ``Config.small_message_bytes``; below it recursive doubling,
    on more than two ranks only below :data:`RECURSIVE_DOUBLING_BELOW_BYTES`, then
    Rabenseifner's on a power of two of ranks and the ring on others. A forced
    ``hierarchical`` or ``direct`` where it cannot run is the default."""
    forced = _forced(requested, config.allreduce_algorithm, "all_reduce", nbytes)
    if _direct("all_reduce", nbytes, size, forced, board and host_buffer):
        return "direct"
    if forced == "direct":
        forced = None
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
    if nbytes >= config.small_message_bytes:
        return "ring"
    if size <= 2 or nbytes < RECURSIVE_DOUBLING_BELOW_BYTES:
        return "recursive_doubling"
    return "rabenseifner" if size & (size - 1) == 0 else "ring"


def choose_broadcast(
    nbytes: int, size: int, config: Config, requested: str | None, board: bool = False
) -> str:
    """Name of the broadcast algorithm: ``requested``, else the config's, else ``direct``
    where ``board`` and below its threshold, else by size."""
    forced = _forced(requested, config.broadcast_algorithm, "broadcast", nbytes)
    if _direct("broadcast", nbytes, size, forced, board):
        return "direct"
    if forced not in (None, "direct"):
        return forced  # type: ignore[return-value]
    return "binomial" if nbytes < BINOMIAL_BROADCAST_BELOW_BYTES or size <= 2 else "chain"


def choose_allgather(nbytes: int, size: int, config: Config, requested: str | None) -> str:
    """Name of the point-to-point all_gather (where it does not run on the board or
    hierarchically) for ``nbytes`` of output: ``requested``, else the config's for this
    size, else Bruck's (log2 n steps) below :data:`BRUCK_ALLGATHER_BELOW_BYTES` on more
    than two ranks, else the ring."""
    forced = _forced(requested, config.allgather_algorithm, "all_gather", nbytes)
    if forced not in (None, "direct"):
        return forced  # type: ignore[return-value]
    return "bruck" if size > 2 and nbytes < BRUCK_ALLGATHER_BELOW_BYTES else "ring"


def choose_reduce_scatter(nbytes: int, size: int, config: Config, requested: str | None) -> str:
    """Name of the point-to-point reduce_scatter for ``nbytes`` of input: ``requested``,
    else the config's for this size, else recursive halving (log2 n steps) below
    :data:`HALVING_REDUCE_SCATTER_BELOW_BYTES` on a power of two of more than two ranks,
    else the ring. Recursive halving forced on a world that is not a power of two is the
    ring."""
    forced = _forced(requested, config.reduce_scatter_algorithm, "reduce_scatter", nbytes)
    power_of_two = size & (size - 1) == 0
    if forced == "recursive_halving" and not power_of_two:
        return "ring"
    if forced not in (None, "direct"):
        return forced  # type: ignore[return-value]
    if power_of_two and size > 2 and nbytes < HALVING_REDUCE_SCATTER_BELOW_BYTES:
        return "recursive_halving"
    return "ring"


def use_direct(
    op: str, nbytes: int, size: int, config: Config, requested: str | None, board: bool
) -> bool:
    """Whether all_gather, reduce_scatter, reduce or all_to_all on ``nbytes`` (the whole
    gathered, scattered or exchanged buffer) runs on the board rather than its
    point-to-point algorithm."""
    configured = getattr(config, ALGORITHM_FIELDS[op])
    return _direct(op, nbytes, size, _forced(requested, configured, op, nbytes), board)
