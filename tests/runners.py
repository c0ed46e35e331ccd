"""Rank runners: every way the tests start ranks, each with a hard timeout that names the rank
that failed or hung.

Two ways to run a function on every rank:
- :func:`run_threads`: ranks as threads over the local transport (fast; algorithm logic);
- :class:`RankPool`: ranks as processes over ZeroMQ, started once and reused across tests.

And :func:`run_script_ranks`: one of the scripts in ``tests/ranks/`` on every rank.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import multiprocessing
import os
import re
import signal
import subprocess
import sys
import threading
import time
import traceback
import uuid
from collections.abc import Callable, Iterator
from multiprocessing.connection import Connection, wait
from typing import Any

import ringcomm
import ringcomm.hosts
from ringcomm.run import free_port


def rank_failure(
    size: int, what: str, errors: dict[int, str], hung: list[int], timeout: float
) -> AssertionError:
    """The error a multi-rank test raises: each failed rank with its traceback, the hung ones."""
    lines = [f"rank {r} of {size} failed in {what}:\n{tb}" for r, tb in sorted(errors.items())]
    if hung:
        lines.append(f"ranks {hung} of {size} did not finish {what} within {timeout:.0f}s")
    return AssertionError("\n".join(lines))


# -- ranks as threads ------------------------------------------------------------------------
_ports = itertools.count(1)


def run_threads(
    size: int,
    fn: Callable[[ringcomm.Communicator], Any],
    *,
    timeout: float = 60.0,
    config: ringcomm.Config | None = None,
    op_timeout: float = 20.0,
    transport: str = "local",
    hosts: list[str] | None = None,
) -> list[Any]:
    """Run ``fn(comm)`` on ``size`` thread ranks (by default over the local transport;
    ``transport="zmq"`` for real sockets); return results by rank. ``hosts``: the host each
    rank says it is on (the topology sees several hosts; the transport is still one process).

    Raises AssertionError naming each rank that raised (with its traceback) or hung.
    """
    for attempt in range(3):
        try:
            if hosts is None:
                return _run_threads_once(size, fn, timeout, config, op_timeout, transport)
            with _pretend_hosts():
                return _run_threads_once(size, fn, timeout, config, op_timeout, transport, hosts)
        except AssertionError as e:
            # Over sockets, the free port we picked can be taken before rank 0 binds it
            # (another test's connection): start over on another port.
            if attempt == 2 or "Address already in use" not in str(e):
                raise
    raise AssertionError("unreachable")


_thread_host = threading.local()  # the host a thread rank says it is on (hosts=...)


@contextlib.contextmanager
def _pretend_hosts() -> Iterator[None]:
    """Make ringcomm's host identity the calling thread's ``_thread_host.name``."""
    real = ringcomm.hosts.host_identity
    ringcomm.hosts.host_identity = lambda: getattr(_thread_host, "name", None) or real()
    try:
        yield
    finally:
        ringcomm.hosts.host_identity = real


def _run_threads_once(
    size: int,
    fn: Callable[[ringcomm.Communicator], Any],
    timeout: float,
    config: ringcomm.Config | None,
    op_timeout: float,
    transport: str,
    hosts: list[str] | None = None,
) -> list[Any]:
    port = next(_ports) if transport == "local" else free_port()
    results: list[Any] = [None] * size
    errors: dict[int, str] = {}

    def body(rank: int) -> None:
        _thread_host.name = hosts[rank] if hosts is not None else None
        try:
            comm = ringcomm.init(
                rank=rank,
                size=size,
                transport=transport,
                master_port=port,
                timeout=op_timeout,
                config=config,
            )
            try:
                results[rank] = fn(comm)
            finally:
                comm.close()
        except BaseException:
            errors[rank] = traceback.format_exc()

    threads = [threading.Thread(target=body, args=(r,), daemon=True) for r in range(size)]
    for t in threads:
        t.start()
    deadline = time.monotonic() + timeout
    for t in threads:
        t.join(max(0.0, deadline - time.monotonic()))
    hung = [r for r, t in enumerate(threads) if t.is_alive()]
    if errors or hung:
        raise rank_failure(size, "the test body", errors, hung, timeout)
    return results


# -- ranks as processes ----------------------------------------------------------------------
def _worker(
    rank: int, size: int, port: int, conn: Connection, env: dict[str, str], transport: str
) -> None:
    os.environ.update(env)
    try:
        comm = ringcomm.init(
            rank=rank,
            size=size,
            master_addr="127.0.0.1",
            master_port=port,
            transport=transport,
            timeout=30,
        )
    except BaseException:
        conn.send(("err", traceback.format_exc()))
        return
    conn.send(("ok", None))
    while True:
        try:
            job = conn.recv()
        except EOFError:
            break
        if job is None:
            break
        fn, args = job
        try:
            conn.send(("ok", fn(comm, *args)))
        except BaseException:
            conn.send(("err", traceback.format_exc()))
    comm.close()


class RankPool:
    """``size`` rank processes on ``transport`` (``auto``: shared memory, all on this host;
    ``zmq``: sockets), reused across tests (they start in seconds)."""

    def __init__(
        self,
        size: int,
        env: dict[str, str] | None = None,
        start_timeout: float = 120,
        transport: str = "auto",
    ):
        ctx = multiprocessing.get_context("spawn")
        self.size = size
        port = free_port()
        self._conns: list[Connection] = []
        self._procs = []
        for rank in range(size):
            parent, child = ctx.Pipe()
            p = ctx.Process(
                target=_worker,
                args=(rank, size, port, child, env or {}, transport),
                daemon=True,
                name=f"rank{rank}",
            )
            p.start()
            child.close()
            self._conns.append(parent)
            self._procs.append(p)
        self._collect("init", start_timeout)

    def _collect(self, what: str, timeout: float) -> list[Any]:
        deadline = time.monotonic() + timeout
        replies: dict[int, tuple[str, Any]] = {}
        waiting = {c: r for r, c in enumerate(self._conns)}
        while waiting:
            ready = wait(list(waiting), max(0.0, deadline - time.monotonic()))
            if not ready:
                break
            for c in ready:
                rank = waiting.pop(c)
                try:
                    replies[rank] = c.recv()
                except EOFError:
                    replies[rank] = (
                        "err",
                        f"process died (exit code {self._procs[rank].exitcode})",
                    )
        failed = {r: v for r, (k, v) in replies.items() if k == "err"}
        hung = sorted(waiting.values())
        if failed or hung:
            self.close(force=True)
            raise rank_failure(self.size, what, failed, hung, timeout)
        return [replies[r][1] for r in range(self.size)]

    @property
    def alive(self) -> bool:
        return all(p.is_alive() for p in self._procs)

    def run(self, fn: Callable[..., Any], *args: Any, timeout: float = 60.0) -> list[Any]:
        """Run ``fn(comm, *args)`` on every rank; return the results by rank."""
        for c in self._conns:
            c.send((fn, args))
        return self._collect(getattr(fn, "__name__", "job"), timeout)

    def close(self, force: bool = False) -> None:
        for c in self._conns:
            try:
                if not force:
                    c.send(None)
            except (BrokenPipeError, OSError):
                pass
        for p in self._procs:
            p.join(timeout=0 if force else 10)
            if p.is_alive():
                p.kill()
                p.join(5)


# -- ranks as separate scripts -----------------------------------------------------------
def run_script_ranks(
    script: str,
    mode: str,
    n: int,
    *,
    env: dict[str, str] | None = None,
    wrap: dict[int, list[str]] | None = None,
    timeout: float = 120,
    master_addr: str = "127.0.0.1",
) -> tuple[dict[int, dict], dict[int, int | None], str]:
    """Start ``n`` ranks of ``python script mode`` directly (no launcher: survivors of a
    killed rank keep running), each with a hard ``timeout``; return their results, exit
    codes (None: hung) and output. ``wrap[r]`` prefixes rank r's command (e.g. a mount
    namespace).

    A rank passed when it printed ``PASS rank <r> <mode>`` *and* exited 0: one that crashes
    or hangs after printing (in close, at exit) did not. Only ranks that passed are in the
    results (their ``RESULT <json>`` line, or ``{}``)."""
    port = free_port()
    job = uuid.uuid4().hex[:12]
    procs = []
    for r in range(n):
        rank_env = dict(os.environ)
        rank_env.update(env or {})
        rank_env.update(
            RINGCOMM_RANK=str(r),
            RINGCOMM_SIZE=str(n),
            RINGCOMM_MASTER_ADDR=master_addr,
            RINGCOMM_MASTER_PORT=str(port),
            RINGCOMM_JOB_ID=job,
            PYTHONUNBUFFERED="1",
        )
        cmd = [*(wrap or {}).get(r, []), sys.executable, script, mode]
        procs.append(
            subprocess.Popen(
                cmd,
                env=rank_env,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
                start_new_session=True,
            )
        )
    deadline = time.monotonic() + timeout
    outs, codes = {}, {}
    for r, p in enumerate(procs):
        try:
            outs[r], _ = p.communicate(timeout=max(0.1, deadline - time.monotonic()))
            codes[r] = p.returncode
        except subprocess.TimeoutExpired:
            os.killpg(p.pid, signal.SIGKILL)
            outs[r], _ = p.communicate()
            codes[r] = None  # hung
    results = {}
    for r, out in outs.items():
        if f"PASS rank {r} {mode}" not in out or codes[r] != 0:
            continue
        found = re.search(r"RESULT (\{.*\})", out)
        results[r] = json.loads(found.group(1)) if found else {}
    text = "\n".join(f"--- rank {r} (exit {codes[r]}):\n{outs[r][-3000:]}" for r in outs)
    return results, codes, text


def assert_passed(mode: str, n: int, results: dict, text: str, ranks=None) -> None:
    """Every rank of ``ranks`` (default: all ``n``) passed: printed PASS and exited 0."""
    want = set(range(n) if ranks is None else ranks)
    missing = sorted(want - set(results))
    assert not missing, f"{mode}: ranks {missing} did not pass (PASS and exit 0)\n{text}"
