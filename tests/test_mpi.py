"""Under mpiexec: the collective suite on 1-4 ranks over both transports (the MPI transport
by default, ZeroMQ bootstrapped through MPI), messages over 2 GiB, the abort of a job whose
rank raised, and the benchmark's MPI peer. Every mpiexec has a hard timeout and a failure
names the ranks that did not pass."""

from __future__ import annotations

import contextlib
import glob
import logging
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from ringcomm.config import world_from
from ringcomm.transport.mpi import _mask_below

pytest.importorskip("mpi4py", reason="MPI is an optional extra: pip install 'ringcomm[mpi]'")
MPIEXEC = shutil.which("mpiexec")
if MPIEXEC is None:
    pytest.skip("no mpiexec on PATH (ringcomm[mpi] brings one)", allow_module_level=True)

ROOT = Path(__file__).resolve().parents[1]
RANKS_SCRIPT = ROOT / "tests" / "ranks" / "mpi.py"
MPICH_SEGMENTS = "/dev/shm/mpich_shm_*"


def mpiexec(n: int, args: list[str], env: dict[str, str], timeout: float) -> tuple[int, str]:
    """Run ``mpiexec -l -n N python ARGS``; kill the whole job after ``timeout`` seconds."""
    full_env = {**os.environ, **env}
    for var in ("RINGCOMM_TRANSPORT", "RANK", "WORLD_SIZE", "RINGCOMM_RANK", "RINGCOMM_SIZE"):
        if var not in env:
            full_env.pop(var, None)
    proc = subprocess.Popen(
        [MPIEXEC, "-l", "-n", str(n), sys.executable, *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=full_env,
        start_new_session=True,
    )
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, _ = proc.communicate()
        return -9, out + f"\n[mpiexec killed after {timeout:.0f}s]"
    return proc.returncode, out


def run_check(check: str, n: int, transport: str, timeout: float) -> str:
    """``transport``: mpi (the default under mpiexec), zmq, or shm (RINGCOMM_TRANSPORT=auto:
    shared memory, bootstrapped through MPI; a world of one has no peer and uses zmq)."""
    # ringcomm's own timeout (120 s) fires first; a rank hung elsewhere prints its stacks
    expect = "zmq" if transport == "shm" and n == 1 else transport
    env = {"EXPECT_TRANSPORT": expect, "DUMP_AFTER": str(timeout - 30)}
    if transport != "mpi":  # the MPI transport must be the default under mpiexec
        env["RINGCOMM_TRANSPORT"] = "auto" if transport == "shm" else transport
    rc, out = mpiexec(n, [str(RANKS_SCRIPT), check], env, timeout)
    passed = {int(r) for r in re.findall(rf"PASS rank (\d+) {check}", out)}
    missing = sorted(set(range(n)) - passed)
    assert rc == 0 and not missing, (
        f"mpiexec -n {n} {check} over {transport}: exit {rc}, ranks {missing} did not pass\n"
        + "\n".join(out.splitlines()[-60:])
    )
    return out


# The MPI transport runs only here: every world size. Sockets and shared memory run the same
# suite on every size in test_collectives_processes.py; under mpiexec what is theirs is the
# bootstrap through MPI (and a world of one falling back to sockets), which two ranks cover,
# three on shared memory (the 3- and 4-rank launches of both took 45 s of the tests' run).
@pytest.mark.parametrize(
    ("n", "transport"),
    [(n, "mpi") for n in (1, 2, 3, 4)] + [(2, "zmq"), (1, "shm"), (2, "shm"), (3, "shm")],
)
def test_collective_suite_under_mpiexec(n: int, transport: str) -> None:
    run_check("suite", n, transport, timeout=240)


@pytest.mark.parametrize("transport", ["mpi", "zmq", "shm"])
def test_messages_over_2_gib(transport: str) -> None:
    """2**31 + 77 int8 elements: over every 32-bit count, in all_reduce, broadcast, send."""
    run_check("huge", 2, transport, timeout=240)


@pytest.mark.parametrize("transport", ["mpi", "zmq"])
def test_uncaught_exception_aborts_the_job(transport: str) -> None:
    env = {"EXPECT_TRANSPORT": transport, "RINGCOMM_TRANSPORT": transport}
    before = set(glob.glob(MPICH_SEGMENTS))
    t0 = time.monotonic()
    try:
        rc, out = mpiexec(3, [str(RANKS_SCRIPT), "uncaught"], env, timeout=60)
    finally:
        # MPICH leaves its shared-memory segment behind when MPI_Abort ends the job
        for path in set(glob.glob(MPICH_SEGMENTS)) - before:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)
    took = time.monotonic() - t0
    assert rc not in (0, -9), out
    text = re.sub(r"\[\d+\] ?", "", out)  # mpiexec -l labels pieces of lines too
    assert "uncaught exception on rank 2, MPI_Abort follows" in text, out
    assert "RuntimeError: boom on purpose" in text, out
    # the waiting ranks' timeout is 120 s: only the abort ends the job this fast
    assert took < 30, f"the job took {took:.0f}s to end"


def test_bench_puts_mpi_and_zmq_beside_the_mpi_transport(tmp_path: Path) -> None:
    args = [str(ROOT / "bench" / "collectives.py"), "all_reduce", "-b", "4K", "-e", "1M"]
    args += ["-f", "16", "-n", "3", "-w", "1", "--peer", "mpi,zmq"]
    rc, out = mpiexec(2, args, {}, timeout=180)
    assert rc == 0, out
    assert "transport mpi" in out
    rows = [line for line in out.splitlines() if "|" in line and "#" not in line]
    assert len(rows) == 3, out
    for row in rows:
        ours, mpi, zmq = (part.split() for part in re.sub(r"^\[\d+\] ?", "", row).split("|"))
        # #wrong: ringcomm out of place and in place, then each peer
        assert ours[8] == ours[12] == mpi[2] == zmq[2] == "0", row
    assert "# Out of bounds values : 0 OK" in out


def test_world_from_mpi_launcher_variables() -> None:
    hydra = {"PMI_RANK": "2", "PMI_SIZE": "4"}
    spec = world_from(None, None, None, None, None, hydra)
    assert (spec.rank, spec.size, spec.transport, spec.mpi_launch) == (2, 4, "mpi", True)
    ompi = {"OMPI_COMM_WORLD_RANK": "1", "OMPI_COMM_WORLD_SIZE": "3"}
    assert world_from(None, None, None, None, None, ompi).rank == 1
    both = {**hydra, "RINGCOMM_TRANSPORT": "zmq"}
    assert world_from(None, None, None, None, None, both).transport == "zmq"
    torchrun = {**hydra, "RANK": "0", "WORLD_SIZE": "2"}  # explicit variables win
    spec = world_from(None, None, None, None, None, torchrun)
    assert (spec.size, spec.transport, spec.mpi_launch) == (2, "auto", False)
    with pytest.raises(ValueError, match="PMI_RANK"):
        world_from(None, None, None, None, None, {"PMI_RANK": "x", "PMI_SIZE": "2"})


def test_mpi_tag_mask_stays_within_tag_ub() -> None:
    assert _mask_below(32767) == 32767
    assert _mask_below(2**31 - 1) == 2**31 - 1
    assert _mask_below(100_000) == 65535


class _Request:
    """A stand-in MPI request: cancellable or already under way."""

    def __init__(self, cancellable: bool) -> None:
        self.cancellable = cancellable
        self.cancelled = False

    def Cancel(self) -> None:
        self.cancelled = self.cancellable

    def Test(self) -> bool:
        return self.cancelled


def _fake_transport() -> Any:
    import types

    return types.SimpleNamespace(
        _mpi=types.SimpleNamespace(Exception=RuntimeError),
        rank=0,
        current_op="all_reduce #7",
        _orphans=[],
    )


def test_a_request_mpi_cannot_cancel_is_said_at_warning(caplog: pytest.LogCaptureFixture) -> None:
    """A failed operation's request already under way may still use the caller's buffer:
    that is logged at WARNING (it was DEBUG, while the docs said it never happens) and
    close() waits for it; a cancellable one leaves nothing behind and says nothing."""
    from ringcomm.transport.mpi import MpiTransport

    fake = _fake_transport()
    with caplog.at_level(logging.WARNING, logger="ringcomm"):
        MpiTransport._cancel(fake, _Request(cancellable=True), "a receive of 8 bytes from rank 1")
    assert not caplog.records and not fake._orphans
    stuck = _Request(cancellable=False)
    with caplog.at_level(logging.WARNING, logger="ringcomm"):
        MpiTransport._cancel(fake, stuck, "a receive of 8 bytes from rank 1")
    assert fake._orphans == [stuck]
    [record] = caplog.records
    assert record.levelno == logging.WARNING
    assert "all_reduce #7" in record.getMessage() and "may still write" in record.getMessage()
