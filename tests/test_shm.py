"""The shared-memory path: nothing left in /dev/shm (closed, crashed, killed while
connecting), a killed peer is named (over sockets too), disagreeing ranks fail, sends
never wait for their receiver, mixed worlds (shared memory within a /dev/shm, sockets
across), a full /dev/shm.

Every rank is a process with a hard timeout; a failure names the ranks that did not pass.
"Another host" is a rank with its own /dev/shm (a mount namespace), which needs root and
``unshare``: those tests skip where that cannot be made.
"""

from __future__ import annotations

import itertools
import os
import re
import shutil
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from ringcomm.hosts import SHM_DIR
from ringcomm.transport.shm import board as shm_board
from ringcomm.transport.shm import syscalls
from ringcomm.transport.shm.segment import NAME_PREFIX
from runners import assert_passed, run_script_ranks

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = str(ROOT / "tests" / "ranks" / "shm.py")
PRIVATE_SHM = 'mount -t tmpfs -o size={size} ringcomm-test /dev/shm && exec "$@"'
# Another "host": ranks wrapped in this see the directory {dir} as their /dev/shm.
OTHER_SHM = 'mount --bind {dir} /dev/shm && exec "$@"'


def _ours() -> set[str]:
    return {n for n in os.listdir(SHM_DIR) if n.startswith(NAME_PREFIX)}


@pytest.fixture(autouse=True)
def no_segment_left_behind():
    """Whatever a test does, it leaves no ringcomm segment in /dev/shm."""
    before = _ours()
    yield
    left = _ours() - before
    assert not left, f"left in {SHM_DIR}: {sorted(left)}"


def _private_shm_works() -> bool:
    if shutil.which("unshare") is None:
        return False
    cmd = ["unshare", "-m", "sh", "-c", PRIVATE_SHM.format(size="1m"), "sh", "true"]
    return subprocess.run(cmd, capture_output=True).returncode == 0


needs_private_shm = pytest.mark.skipif(
    not _private_shm_works(),
    reason="needs root and unshare to give a rank its own /dev/shm (a mount namespace)",
)


def run_ranks(
    mode: str, n: int, **kwargs: Any
) -> tuple[dict[int, dict], dict[int, int | None], str]:
    return run_script_ranks(SCRIPT, mode, n, **kwargs)


@pytest.mark.parametrize("n", [2, 4])
def test_segments_are_unlinked_once_connected(n: int) -> None:
    results, _, text = run_ranks("clean", n)
    assert_passed("clean", n, results, text)


def test_collectives_through_the_slots_when_reading_by_address_is_off() -> None:
    results, _, text = run_ranks("clean", 3, env={"RINGCOMM_SHM_BY_ADDRESS_BYTES": "0"})
    assert_passed("clean", 3, results, text)


def test_oversubscribed_ranks_finish() -> None:
    """6 ranks on this machine's 2 cores: spinning gives way, nothing collapses."""
    results, _, text = run_ranks("clean", 6, timeout=240)
    assert_passed("clean", 6, results, text)


@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="needs 2 cores to pin ranks apart")
@pytest.mark.parametrize(("mode", "spins"), [("pinned_apart", True), ("pinned_together", False)])
def test_ranks_pinned_to_cores_of_their_own_poll_before_yielding(mode: str, spins: bool) -> None:
    """A launcher that binds each rank to a core of its own leaves each process one core:
    that is no oversubscription, so waits poll first; two ranks bound to one core yield at
    once."""
    results, _, text = run_ranks(mode, 2)
    assert_passed(mode, 2, results, text)
    assert all((res["polls"] > 0) == spins for res in results.values()), results


@pytest.mark.parametrize(
    ("transport", "mode"),
    [("auto", "peer_killed"), ("auto", "peer_killed_on_board"), ("zmq", "peer_killed")],
)
def test_killed_peer_is_named_within_seconds(transport: str, mode: str) -> None:
    """On shared memory the waiters watch their peers' processes (on the board too); over
    sockets the dropped connection (a process's sockets close when it dies) gives it away."""
    n = 3
    results, codes, text = run_ranks(mode, n, env={"RINGCOMM_TRANSPORT": transport})
    assert codes[n - 1] == -signal.SIGKILL, text
    assert_passed(mode, n, results, text, ranks=range(n - 1))
    for r in range(n - 1):
        assert f"rank {n - 1}" in results[r]["error"], results[r]
        assert results[r]["seconds"] < 5, results[r]


def test_ranks_that_disagree_on_the_count_fail_on_every_rank() -> None:
    results, _, text = run_ranks("mismatch", 2)
    assert_passed("mismatch", 2, results, text)
    assert any("expected 4000 bytes" in res["error"] for res in results.values()), results


def test_compressed_against_plain_fails_on_every_rank() -> None:
    results, _, text = run_ranks("compressed_mismatch", 2)
    assert_passed("compressed_mismatch", 2, results, text)
    assert any("4000 bytes as float16" in res["error"] for res in results.values()), results


def test_sends_never_wait_for_their_receiver() -> None:
    results, _, text = run_ranks("p2p_waits_for_nobody", 2)
    assert_passed("p2p_waits_for_nobody", 2, results, text)
    assert results[0]["send_seconds"] < 0.9, results  # the receiver sleeps 1 s first
    assert results[1]["recv_seconds"] < 2, results


def test_a_send_the_ticker_fails_to_push_fails_the_next_operation() -> None:
    results, _, text = run_ranks("ticker_error_reaches_the_next_operation", 2)
    assert_passed("ticker_error_reaches_the_next_operation", 2, results, text)
    assert "injected" in results[0]["raised"], results


def test_launcher_removes_what_a_rank_killed_while_connecting_left(tmp_path: Path) -> None:
    cmd = [sys.executable, "-m", "ringcomm.run", "-n", "2", sys.executable, SCRIPT]
    res = subprocess.run(
        [*cmd, "killed_while_connecting"], capture_output=True, text=True, timeout=120
    )
    assert res.returncode != 0
    assert "rank 1 failed (killed by SIGKILL)" in res.stderr, res.stderr[-2000:]
    assert "removed" in res.stderr and "shared-memory segment" in res.stderr, res.stderr[-2000:]


def test_launcher_removes_the_board_of_a_rank_killed_while_making_it() -> None:
    """Rank 1 dies with its board file made and not yet unlinked (that happens once every
    rank has mapped every board): rank 0 names it, the launcher removes the file."""
    cmd = [sys.executable, "-m", "ringcomm.run", "-n", "2", sys.executable, SCRIPT]
    res = subprocess.run([*cmd, "killed_on_board"], capture_output=True, text=True, timeout=120)
    assert res.returncode != 0
    assert "rank 1 failed (killed by SIGKILL)" in res.stderr, res.stderr[-2000:]
    assert "removed" in res.stderr and "shared-memory segment" in res.stderr, res.stderr[-2000:]


def _other_host(tmp_path: Path) -> list[str]:
    return ["unshare", "-m", "sh", "-c", OTHER_SHM.format(dir=tmp_path), "sh"]


@needs_private_shm
def test_mixed_world_shared_memory_within_sockets_across(tmp_path: Path) -> None:
    """Ranks 0-1 share this /dev/shm, ranks 2-3 another one: as two hosts would."""
    other = _other_host(tmp_path)
    results, _, text = run_ranks("mixed", 4, wrap={2: other, 3: other})
    assert_passed("mixed", 4, results, text)
    assert not list(tmp_path.iterdir()), "the other host's segments were left behind"


@needs_private_shm
def test_forcing_shm_across_separate_dev_shm_is_refused(tmp_path: Path) -> None:
    other = _other_host(tmp_path)
    results, _, text = run_ranks(
        "forced_across", 3, env={"RINGCOMM_TRANSPORT": "shm"}, wrap={2: other}
    )
    assert_passed("forced_across", 3, results, text)


def _in_small_dev_shm(size: str, mode: str) -> tuple[subprocess.CompletedProcess, str]:
    # Both ranks must see the same small /dev/shm: one namespace around a launcher.
    cmd = [
        "unshare", "-m", "sh", "-c", PRIVATE_SHM.format(size=size), "sh",
        sys.executable, "-m", "ringcomm.run", "-n", "2", sys.executable, SCRIPT, mode,
    ]  # fmt: skip
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    out = res.stdout + res.stderr
    passed = set(re.findall(rf"PASS rank (\d+) {mode}", out))
    assert res.returncode == 0 and passed == {"0", "1"}, out[-3000:]
    return res, out


@needs_private_shm
def test_full_dev_shm_is_a_clear_error_not_a_crash() -> None:
    """128 KiB of /dev/shm cannot hold even the smallest inboxes (4 x 64 KiB per peer)."""
    _in_small_dev_shm("128k", "full_shm")


@needs_private_shm
def test_short_dev_shm_gets_smaller_slots_and_works() -> None:
    """3 MiB cannot hold 4 x 1 MiB slots per rank: each rank shrinks its own and says so.
    Nor two boards of 2 MiB: the ranks agree to go without and still run everything."""
    _, out = _in_small_dev_shm("3m", "small_shm")
    assert "using 512 KiB" in out or "using 256 KiB" in out, out[-3000:]
    assert "no board for the direct collectives" in out, out[-3000:]


def test_cache_verdict_takes_medians_of_every_peer() -> None:
    """share_a_cache: every peer's median within APART_RATIO of this rank's own copy."""
    local = [1.0, 1.1, 0.9, 50.0]  # one slow round of its own does not move the median
    assert shm_board.share_a_cache({1: [1.2, 1.0, 30.0], 2: [2.0, 2.5, 2.9]}, local)
    assert not shm_board.share_a_cache({1: [1.0, 1.0, 1.0], 2: [4.0, 3.5, 100.0]}, local)
    assert not shm_board.share_a_cache({1: [3.2, 3.3, 0.1]}, [1.0])
    assert shm_board.share_a_cache({1: [3.0]}, [1.0])


@pytest.mark.parametrize("nbytes", [1, 4096, 65536, 65537])
def test_cache_probe_copies_between_page_aligned_buffers(nbytes: int) -> None:
    """The probe's own buffers start on a page, as the areas do: its copies then time the
    caches, not memcpy's slow way with a destination a few bytes past the source's page."""
    buffers = [shm_board._page_aligned(nbytes) for _ in range(3)]
    for b in buffers:
        assert b.ctypes.data % shm_board.PAGE == 0 and b.nbytes == nbytes and b.dtype == np.uint8
    assert not any(np.shares_memory(x, y) for x, y in itertools.pairwise(buffers))


@pytest.mark.skipif(
    syscalls.PROCESS_VM_READV is None or syscalls.PROCESS_VM_WRITEV is None,
    reason="no process_vm_readv/writev in this libc",
)
def test_remote_reads_and_writes_copy_or_say_why() -> None:
    """read_remote and write_remote copy between this process and another's memory (here:
    this one's); a process that is gone is an OSError naming the call and the pid."""
    data = np.arange(100_000, dtype=np.float32)  # several pages
    into = np.zeros_like(data)
    syscalls.write_remote(os.getpid(), syscalls.address_of(into), data[10:])
    np.testing.assert_array_equal(into[: data.size - 10], data[10:])
    back = np.zeros_like(data)
    syscalls.read_remote(os.getpid(), syscalls.address_of(data), back)
    np.testing.assert_array_equal(back, data)
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    with pytest.raises(OSError, match=rf"process_vm_writev to pid {gone.pid}"):
        syscalls.write_remote(gone.pid, syscalls.address_of(into), data)
    with pytest.raises(OSError, match=rf"process_vm_readv from pid {gone.pid}"):
        syscalls.read_remote(gone.pid, syscalls.address_of(data), back)


def test_all_gather_streams_by_the_cache_unless_ranks_outnumber_cores(monkeypatch) -> None:
    """RINGCOMM_SHM_BOARD_STREAM_BYTES wins where set; auto is 1.25 times the last-level
    cache (32 MiB where the OS does not say) up to 96 MiB, and never where ranks outnumber
    cores."""
    from ringcomm import hosts
    from ringcomm.transport.shm.board import stream_bytes_for

    monkeypatch.setattr(hosts, "last_level_cache_bytes", lambda: 8 << 20)
    assert stream_bytes_for(None) == 10 << 20
    assert stream_bytes_for(None, oversubscribed=True) == 0
    assert stream_bytes_for(3, oversubscribed=True) == 3
    assert stream_bytes_for(0) == 0
    monkeypatch.setattr(hosts, "last_level_cache_bytes", lambda: None)
    assert stream_bytes_for(None) == 40 << 20
    monkeypatch.setattr(hosts, "last_level_cache_bytes", lambda: 480 << 20)
    assert stream_bytes_for(None) == 96 << 20
    assert stream_bytes_for(1 << 30) == 1 << 30
