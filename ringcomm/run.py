"""``ringcomm-run``: launch N local ranks, stream their output, stop the job if one fails.

Usage::

    ringcomm-run -n 4 train.py --epochs 3        # a script (run with this Python)
    ringcomm-run -n 4 -m my.module --flag        # a module
    ringcomm-run -n 4 python bench/collectives.py all_reduce   # any command

Each rank gets ``RANK``/``WORLD_SIZE``/``LOCAL_RANK``/``MASTER_ADDR``/``MASTER_PORT`` (as
torchrun sets them) and the ``RINGCOMM_*`` equivalents, a fresh ``RINGCOMM_JOB_ID`` and a
job secret ``RINGCOMM_SECRET`` (unless one is set: see :mod:`ringcomm.security`); its
lines come out prefixed with ``[rank]``. Fail-fast: when one rank exits non-zero or is
killed, the others are stopped, the failed rank's last error lines are repeated, and the
launcher exits with its code. When the job ends, shared-memory segments its ranks left in
/dev/shm (only a rank killed while connecting can leave one) are removed.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import os
import secrets
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from typing import IO

from ringcomm.config import env_value
from ringcomm.transport.shm.segment import remove_job_segments

_TAIL_LINES = 40
_GRACE_SECONDS = 3.0


_LOWEST_PORT = 10000
_EPHEMERAL_RANGE = "/proc/sys/net/ipv4/ip_local_port_range"


def _ephemeral_range() -> tuple[int, int]:
    """The ports the kernel hands out to outgoing connections (Linux; else a guess)."""
    try:
        with open(_EPHEMERAL_RANGE) as f:
            low, high = (int(x) for x in f.read().split())
        return low, high
    except (OSError, ValueError):
        return 32768, 60999


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that was free a moment ago on ``host``, chosen below the ephemeral range:
    a port the kernel picked for us (bind to 0) can be handed to some outgoing connection
    before our listener binds it ("Address already in use", seen in CI); one below the
    range can only be taken by another listener."""
    low, _ = _ephemeral_range()
    rng = secrets.SystemRandom()
    if low > _LOWEST_PORT:
        for _ in range(50):
            port = rng.randrange(_LOWEST_PORT, low)
            with socket.socket() as s:
                try:
                    s.bind((host, port))
                except OSError:
                    continue
                return port
    with socket.socket() as s:  # no range below: any port the kernel gives
        s.bind((host, 0))
        return s.getsockname()[1]


def _command(args: argparse.Namespace) -> list[str]:
    if args.module:
        return [sys.executable, "-u", "-m", args.module, *args.command]
    if not args.command:
        raise SystemExit("ringcomm-run: nothing to run (give a script, -m module, or a command)")
    first, rest = args.command[0], args.command[1:]
    if first.endswith(".py"):
        return [sys.executable, "-u", first, *rest]
    return [first, *rest]


def _pump(
    stream: IO[bytes],
    out: IO[str],
    prefix: str,
    tail: collections.deque[str],
    timestamps: bool = False,
) -> None:
    """Copy a rank's output line by line, each behind ``prefix`` (and with ``timestamps``,
    the wall-clock time the launcher read it: ``[1 12:34:56.789] ``)."""
    for raw in iter(stream.readline, b""):
        line = raw.decode(errors="replace")
        tail.append(line)
        if timestamps:
            now = time.time()
            stamp = time.strftime("%H:%M:%S", time.localtime(now)) + f".{int(now % 1 * 1000):03d}"
            out.write(f"{prefix[:-2]} {stamp}] {line}")
        else:
            out.write(prefix + line)
        out.flush()
    stream.close()


def _describe(code: int) -> str:
    if code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exit code {code}"


def _stop(procs: list[subprocess.Popen[bytes]]) -> None:
    for sig in (signal.SIGTERM, signal.SIGKILL):
        alive = [p for p in procs if p.poll() is None]
        for p in alive:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(p.pid, sig)
        deadline = time.monotonic() + _GRACE_SECONDS
        while time.monotonic() < deadline and any(p.poll() is None for p in alive):
            time.sleep(0.05)


def launch(
    nprocs: int,
    command: list[str],
    master_addr: str = "127.0.0.1",
    master_port: int | None = None,
    extra_env: dict[str, str] | None = None,
    timestamps: bool = False,
) -> int:
    """Run ``command`` as ranks 0..nprocs-1 and return the job's exit code (0: all ranks
    succeeded; otherwise the first failed rank's code, or 1 if it was killed).
    ``timestamps``: put the time each line was read behind its rank tag."""
    port = master_port or free_port(master_addr)
    job = uuid.uuid4().hex[:12]
    try:
        return _run_job(nprocs, command, master_addr, port, job, extra_env, timestamps)
    finally:
        left = remove_job_segments(job)
        if left:
            sys.stderr.write(
                f"ringcomm-run: removed {len(left)} shared-memory segment(s) the ranks left "
                f"in /dev/shm: {', '.join(left)}\n"
            )


def _run_job(
    nprocs: int,
    command: list[str],
    master_addr: str,
    port: int,
    job: str,
    extra_env: dict[str, str] | None,
    timestamps: bool,
) -> int:
    procs: list[subprocess.Popen[bytes]] = []
    tails: list[collections.deque[str]] = []
    pumps: list[threading.Thread] = []
    # Only this job's ranks may connect to its sockets (ringcomm.security).
    secret = (
        env_value("RINGCOMM_SECRET", extra_env or {})
        or env_value("RINGCOMM_SECRET")
        or secrets.token_hex(16)
    )
    for rank in range(nprocs):
        env = dict(os.environ)
        env.update(extra_env or {})
        env.update(
            RANK=str(rank),
            WORLD_SIZE=str(nprocs),
            LOCAL_RANK=str(rank),
            LOCAL_WORLD_SIZE=str(nprocs),
            MASTER_ADDR=master_addr,
            MASTER_PORT=str(port),
            RINGCOMM_RANK=str(rank),
            RINGCOMM_SIZE=str(nprocs),
            RINGCOMM_MASTER_ADDR=master_addr,
            RINGCOMM_MASTER_PORT=str(port),
            RINGCOMM_JOB_ID=job,
            RINGCOMM_SECRET=secret,
            PYTHONUNBUFFERED="1",
        )
        proc = subprocess.Popen(
            command,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
        procs.append(proc)
        tail: collections.deque[str] = collections.deque(maxlen=_TAIL_LINES)
        tails.append(tail)
        for stream, out in ((proc.stdout, sys.stdout), (proc.stderr, sys.stderr)):
            t = threading.Thread(
                target=_pump, args=(stream, out, f"[{rank}] ", tail, timestamps), daemon=True
            )
            t.start()
            pumps.append(t)

    def on_signal(signum: int, _frame: object) -> None:
        _stop(procs)
        raise SystemExit(128 + signum)

    previous = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        failed: int | None = None
        while failed is None and any(p.poll() is None for p in procs):
            for rank, p in enumerate(procs):
                if p.poll() not in (None, 0):
                    failed = rank
                    break
            else:
                time.sleep(0.05)
        if failed is None:
            failed = next((r for r, p in enumerate(procs) if p.returncode != 0), None)
        if failed is not None:
            _stop(procs)
        for t in pumps:
            t.join(timeout=2)
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
    if failed is None:
        return 0
    code = procs[failed].returncode
    sys.stderr.write(
        f"ringcomm-run: rank {failed} failed ({_describe(code)}); stopped the other ranks.\n"
        f"ringcomm-run: last lines of rank {failed}:\n"
        + "".join(f"  {line}" for line in tails[failed])
    )
    sys.stderr.flush()
    return code if code > 0 else 1


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``ringcomm-run`` and ``python -m ringcomm.run``."""
    parser = argparse.ArgumentParser(
        prog="ringcomm-run", description="Launch N local ringcomm ranks (fail-fast)."
    )
    parser.add_argument("-n", "--nprocs", type=int, required=True, help="number of ranks")
    parser.add_argument("-m", "--module", help="run a module, as python -m does")
    parser.add_argument("--master-addr", default="127.0.0.1", help="rendezvous host")
    parser.add_argument("--master-port", type=int, default=None, help="default: a free port")
    parser.add_argument(
        "--timestamps", action="store_true", help="tag each line with the time it was read too"
    )
    parser.add_argument("command", nargs=argparse.REMAINDER, help="script.py [args] or a command")
    args = parser.parse_args(argv)
    if args.nprocs < 1:
        parser.error("-n must be at least 1")
    return launch(
        args.nprocs,
        _command(args),
        args.master_addr,
        args.master_port,
        timestamps=args.timestamps,
    )


if __name__ == "__main__":
    sys.exit(main())
