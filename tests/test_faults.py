"""Faults, disagreement and observability: abort and rebuilding among survivors, the stall
warning and flight recorder, RINGCOMM_DEBUG's agreement check, malformed messages on a
ringcomm socket, the timeline, and a soak run.

Process tests start every rank with a hard timeout and name the ranks that did not pass.
"""

from __future__ import annotations

import json
import logging
import re
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import zmq
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import ringcomm
from ringcomm.run import free_port
from ringcomm.transport.base import HEADER, KIND_COLLECTIVE, MAGIC, VERSION
from runners import assert_passed, run_script_ranks, run_threads

SCRIPT = str(Path(__file__).resolve().parent / "ranks" / "faults.py")


def run_ranks(mode: str, n: int, **kwargs) -> tuple[dict, dict, str]:
    """Ranks of fault_ranks.py (see :func:`runners.run_script_ranks`)."""
    return run_script_ranks(SCRIPT, mode, n, **kwargs)


# -- abort and rebuild ---------------------------------------------------------------------
def test_abort_fails_the_running_and_the_queued_operations_at_once() -> None:
    def body(comm: ringcomm.Communicator) -> dict:
        if comm.rank == 1:
            time.sleep(1.5)  # never joins: rank 0's operations wait for it
            return {}
        works = [comm.all_reduce(np.ones(100, np.float32), async_op=True) for _ in range(3)]
        time.sleep(0.3)
        t0 = time.monotonic()
        comm.abort("test")
        errors = []
        for w in works:
            errors.append(type(w.get_future().exception(timeout=5)).__name__)
        took = time.monotonic() - t0
        with pytest.raises(ringcomm.CommClosedError):
            comm.all_reduce(np.ones(4, np.float32))
        return {"errors": errors, "seconds": took}

    results = run_threads(2, body, op_timeout=30, timeout=30)
    assert results[0]["errors"] == ["CommClosedError"] * 3, results
    assert results[0]["seconds"] < 1.0, results


@pytest.mark.parametrize("transport", ["auto", "zmq"])
def test_survivors_abort_and_build_a_new_communicator(transport: str) -> None:
    n = 3
    env = {"RINGCOMM_TRANSPORT": transport, "REBUILD_PORT": str(free_port())}
    results, _, text = run_ranks("rebuild", n, env=env)
    assert_passed("rebuild", n, results, text, ranks=range(n - 1))
    for r in range(n - 1):
        assert f"rank {n - 1}" in results[r]["lost"], results[r]
        assert "aborted" in results[r]["refused"], results[r]
        assert results[r]["rebuilt_seconds"] < 10, results[r]


# -- stalls --------------------------------------------------------------------------------
@pytest.mark.parametrize("transport", ["auto", "zmq"])
def test_a_stalled_rank_is_warned_about_then_named_at_the_timeout(transport: str) -> None:
    n = 3
    env = {"RINGCOMM_STALL_WARNING_SECONDS": "1", "RINGCOMM_TRANSPORT": transport}
    results, _, text = run_ranks("stall", n, env=env)
    assert_passed("stall", n, results, text)
    for r in range(n - 1):
        assert 2.9 < results[r]["seconds"] < 6.0, results[r]
        assert "Ranks [2] did not join all_reduce #2 (ranks [0, 1] did)" in results[r]["error"]
    # Rank 0 waits for rank 2 (its left neighbour in the ring) and says so, in the warning,
    # the error and its flight recorder.
    assert "all_reduce #2" in results[0]["error"] and "rank 2" in results[0]["error"], results
    # The watchdog looks once a second: the warning comes 1-2 s in, before the 3 s timeout.
    warning = r"rank 0: all_reduce #2 \(4000 B\) has run for [12] s, waiting for rank 2"
    assert re.search(warning, text), text
    assert "ringcomm flight recorder, rank 0 of 3" in text, text
    assert "all_reduce #1 4000 B: done in" in text, text
    assert "all_reduce #2 4000 B: failed after" in text, text


def test_stall_limit_defaults_to_a_fifth_of_the_timeout_at_most_a_minute() -> None:
    assert ringcomm.Config().stall_limit(300) == 60
    assert ringcomm.Config().stall_limit(10) == 2
    assert ringcomm.Config(stall_warning_seconds=0).stall_limit(10) == float("inf")
    with pytest.raises(ValueError):
        ringcomm.Config(stall_warning_seconds=-1)


# -- disagreement ----------------------------------------------------------------------------
DEBUG = ringcomm.Config(debug=True, timeout_seconds=20)


def test_debug_names_ranks_that_call_different_operations() -> None:
    def body(comm: ringcomm.Communicator) -> str:
        buf = np.ones(1000, np.float32)
        try:
            if comm.rank == 0:
                comm.all_reduce(buf)
            else:
                comm.broadcast(buf, root=0)
        except ValueError as e:
            return str(e)
        return "no error"

    errors = run_threads(2, body, config=DEBUG)
    for e in errors:
        assert "ranks disagree on operation #1" in e, errors
        assert "ranks [0]: all_reduce(1000 x float32, SUM)" in e, errors
        assert "ranks [1]: broadcast(1000 x float32, root 0)" in e, errors


def test_debug_names_ranks_that_disagree_on_count_dtype_op_or_root() -> None:
    cases = [
        (lambda c: c.all_reduce(np.ones(1000 + c.rank, np.float32)), "1001 x float32"),
        (lambda c: c.all_reduce(np.ones(8, np.float64 if c.rank else np.float32)), "float64"),
        (lambda c: c.all_reduce(np.ones(8), ringcomm.MAX if c.rank else ringcomm.SUM), "MAX"),
        (lambda c: c.broadcast(np.ones(8), root=c.rank), "root 1"),
        (
            lambda c: c.all_gatherv(np.ones(3 + c.rank), np.ones(1 + 2 * c.rank), [1, 2 + c.rank]),
            "counts [1, 3]",
        ),
    ]
    for call, detail in cases:

        def body(comm: ringcomm.Communicator, call=call) -> str:
            try:
                call(comm)
            except ValueError as error:
                return str(error)
            return "no error"

        errors = run_threads(2, body, config=DEBUG)
        for e in errors:
            assert "ranks disagree" in e and detail in e, (detail, errors)


def test_without_debug_different_operations_are_named_at_the_timeout() -> None:
    def body(comm: ringcomm.Communicator) -> str:
        buf = np.ones(1000, np.float32)
        try:
            if comm.rank == 0:
                comm.all_reduce(buf, timeout=2)
            else:
                comm.broadcast(buf, root=0, timeout=2)
        except ringcomm.CommTimeoutError as e:
            return str(e)
        return "no error"

    for e in run_threads(2, body):
        assert "Ranks disagree on operation #1: ranks [0]: all_reduce(1000 x float32, SUM); " in e
        assert "ranks [1]: broadcast(1000 x float32, root 0)" in e


def test_debug_lets_agreeing_ranks_through() -> None:
    def body(comm: ringcomm.Communicator) -> None:
        x = np.full(100, comm.rank + 1.0)
        comm.all_reduce(x)
        assert (x == comm.size * (comm.size + 1) / 2).all()
        comm.broadcast(x, root=1)
        # buffers whose sizes differ by rank, as these operations have them
        n, r = comm.size, comm.rank
        counts = [q + 1 for q in range(n)]
        whole = np.zeros(sum(counts))
        comm.gather(np.zeros(n * 100) if r == 0 else None, x, root=0)
        comm.scatter(x, np.zeros(n * 100) if r == 1 else None, root=1)
        comm.all_gatherv(whole, np.ones(r + 1), counts)
        comm.reduce_scatter_v(np.zeros(r + 1), whole, counts)
        comm.gatherv(whole if r == 2 else None, np.ones(r + 1), counts, root=2)
        comm.scatterv(np.zeros(r + 1), whole if r == 0 else None, counts, root=0)
        comm.all_to_allv(np.zeros(n * (r + 1)), np.zeros(sum(counts)), counts, [r + 1] * n)
        comm.barrier()

    run_threads(3, body, config=DEBUG)


# -- malformed messages ----------------------------------------------------------------------
def _header(comm_id: int, seq: int, nbytes: int, src: int = 1, magic: int = MAGIC) -> bytes:
    return HEADER.pack(magic, VERSION, KIND_COLLECTIVE, comm_id, seq, 0, 0, nbytes, src)


MALFORMED = [
    [b"hello"],  # one frame, shorter than a header
    [b"\x00" * 7, b"x"],  # a truncated header
    [b"GET / HTTP/1.1\r\n\r\n" * 4],  # the wrong protocol
    [b"a", b"b", b"c"],  # three frames
]


@settings(max_examples=25, deadline=None, suppress_health_check=list(HealthCheck))
@given(frames=st.lists(st.binary(max_size=200), min_size=1, max_size=4))
def test_random_frames_on_a_ringcomm_socket_are_dropped(frames: list[bytes]) -> None:
    _inject_and_check([frames])


def test_malformed_and_foreign_messages_are_dropped_and_logged(caplog) -> None:
    def crafted(comm_id: int) -> list[list[bytes]]:
        return [
            *MALFORMED,
            [_header(comm_id, 1, 16, magic=MAGIC ^ 1), b"x" * 16],  # wrong magic
            [_header(comm_id ^ 1, 1, 16), b"x" * 16],  # another communicator
            [_header(comm_id, 1, 4096), b"x" * 16],  # a length the payload does not have
            [_header(comm_id, 1, 16, src=77), b"x" * 16],  # a rank that does not exist
            [_header(comm_id, 0, 4000), b"\xff" * 4000],  # a replayed old operation
        ]

    with caplog.at_level(logging.WARNING, logger="ringcomm"):
        _inject_and_check(None, crafted)
    dropped = [r.getMessage() for r in caplog.records if "dropped" in r.getMessage()]
    assert len(dropped) >= 8, dropped


def _inject_and_check(batches, make=None) -> None:
    """Send each message in ``batches`` (or ``make(comm_id)``) into rank 0's data socket
    from a foreign process-like socket, then check that an all_reduce still gives the right
    result on every rank."""

    def body(comm: ringcomm.Communicator) -> bool:
        x = np.full(1000, comm.rank + 1.0, np.float32)
        comm.all_reduce(x)  # operation #1, so a replayed #0 is old
        if comm.rank == 0:
            endpoint = comm._transport._pull.getsockopt(zmq.LAST_ENDPOINT).decode()
            messages = batches if batches is not None else make(comm._transport.comm_id)
            ctx = zmq.Context.instance()
            intruder = ctx.socket(zmq.PUSH)
            intruder.setsockopt(zmq.LINGER, 1000)
            intruder.setsockopt(zmq.SNDTIMEO, 5000)  # never block the rank for good
            intruder.connect(endpoint)
            for frames in messages:
                intruder.send_multipart(frames)
            intruder.close()
            time.sleep(0.1)
        # ZeroMQ takes turns between connections: each barrier also reads a queued
        # intruder message, so all of them are looked at by the end.
        for _ in range(20):
            comm.barrier()
        x = np.full(1000, comm.rank + 1.0, np.float32)
        comm.all_reduce(x)
        return bool((x == comm.size * (comm.size + 1) / 2).all())

    assert run_threads(2, body, transport="zmq") == [True, True]


# -- the timeline ----------------------------------------------------------------------------
def test_timeline_writes_a_chrome_trace_per_rank(tmp_path: Path) -> None:
    prefix = tmp_path / "trace"
    results, _, text = run_ranks("timeline", 2, env={"RINGCOMM_TIMELINE": str(prefix)})
    assert_passed("timeline", 2, results, text)
    for r in range(2):
        trace = json.loads((tmp_path / f"trace.rank{r}.json").read_text())
        events = trace["traceEvents"]
        ops = [e for e in events if e["name"] in ("all_reduce", "broadcast", "barrier")]
        assert [e["name"] for e in ops] == ["all_reduce", "broadcast", "all_reduce", "barrier"]
        assert ops[0]["args"] == {"seq": 1, "bytes": 4 << 20}
        steps = {e["name"] for e in events} - {o["name"] for o in ops}
        assert {"send", "wait+reduce", "wait", "flush"} <= steps, steps
        assert all(e["ph"] in ("X", "M") and e.get("dur", 0) >= 0 for e in events)


# -- load -------------------------------------------------------------------------------------
@pytest.mark.slow
@pytest.mark.parametrize("transport", ["auto", "zmq"])
def test_soak_many_mixed_operations_leak_nothing(transport: str) -> None:
    n = 3
    results, _, text = run_ranks("soak", n, env={"RINGCOMM_TRANSPORT": transport}, timeout=240)
    assert_passed("soak", n, results, text)
    for r, res in results.items():
        assert res["checked"] > 3000, res
        assert res["fds"] <= 0, (r, res)
        assert res["rss_kib"] < 24 * 1024, (r, res)


@pytest.mark.parametrize("transport", ["zmq", "auto"])
def test_a_failed_sender_s_reused_buffer_never_reaches_its_peer(transport: str) -> None:
    """After a send's operation failed, its peer gets the bytes as they were when it
    started, or an error (the sender's unsent frames used to leave later with the new
    bytes, and a reader by address read them)."""
    results, _, text = run_ranks("retract", 2, env={"RINGCOMM_TRANSPORT": transport})
    assert_passed("retract", 2, results, text)
    assert results[1]["root"] in ("intact", "failed: PeerLostError", "failed: TransportError"), (
        results
    )


def test_flight_recorder_files_and_trace_name_the_rank_behind(tmp_path: Path) -> None:
    """With RINGCOMM_FLIGHT_RECORDER_DIR the ranks that time out write their recorders;
    ``python -m ringcomm.trace`` merges them and names the stalled rank."""
    n = 3
    env = {"RINGCOMM_FLIGHT_RECORDER_DIR": str(tmp_path)}
    results, _, text = run_ranks("stall", n, env=env)
    assert_passed("stall", n, results, text)
    assert sorted(p.name.rsplit("-", 1)[1] for p in tmp_path.iterdir()) == [
        "rank0.json",
        "rank1.json",
    ]
    res = subprocess.run(
        [sys.executable, "-m", "ringcomm.trace", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert res.returncode == 0, res.stderr
    assert "none from ranks [2]" in res.stdout, res.stdout
    # (on the shared-memory board every rank waits for the stalled one itself)
    assert re.search(r"rank 1: all_reduce #2 failed after [\d.]+ s, waiting for rank 2", res.stdout)
    assert "=> rank 2 is behind on all_reduce #2: it wrote no record" in res.stdout, res.stdout


def test_trace_names_disagreement_and_a_rank_that_never_started() -> None:
    from ringcomm import trace

    def record(rank: int, seq: int, op: str, waiting: int | None) -> dict:
        ops = [{"seq": seq, "op": op, "state": "failed", "seconds": 3.0, "error": "timeout"}]
        return {"rank": rank, "size": 3, "comm": "c", "waiting_for": waiting, "operations": ops}

    lines = trace.analyse(
        "c",
        {
            0: record(0, 7, "all_reduce", 2),
            1: record(1, 7, "broadcast", 0),
            2: record(2, 6, "all_reduce", None),
        },
    )
    said = "\n".join(lines)
    assert "=> ranks disagree on operation #7: ranks [0]: all_reduce; ranks [1]: broadcast" in said
    assert "=> rank 2 is behind on all_reduce #7: it never started #7, its last is #6" in said


def test_monitored_barrier_names_the_ranks_that_did_not_arrive() -> None:
    def body(comm: ringcomm.Communicator) -> str:
        comm.monitored_barrier(20)
        comm.monitored_barrier(20, wait_all_ranks=True)
        if comm.rank in (1, 2):
            return "not in it"
        try:
            comm.monitored_barrier(1, wait_all_ranks=comm.rank == 0)
        except ringcomm.CommTimeoutError as e:
            return str(e)
        return "passed"

    got = run_threads(4, body, config=ringcomm.Config(timeout_seconds=20))
    assert got[0] == "Ranks 1, 2 failed to pass monitoredBarrier in time", got
    assert got[3].startswith("Rank 3 successfully reached monitoredBarrier, but received errors"), (
        got
    )
