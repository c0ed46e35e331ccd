"""Bad input is refused with a clear ValueError/TypeError before anything is sent."""

from __future__ import annotations

import array

import numpy as np
import pytest

import ringcomm
from runners import run_threads


@pytest.fixture
def comm():
    c = ringcomm.init(rank=0, size=1, transport="local", master_port=65000, timeout=5)
    yield c
    c.close()


def test_world_of_one_without_any_environment(monkeypatch) -> None:
    for var in ("RANK", "WORLD_SIZE", "RINGCOMM_RANK", "RINGCOMM_SIZE", "MASTER_PORT"):
        monkeypatch.delenv(var, raising=False)
    with ringcomm.init() as c:
        assert (c.rank, c.size) == (0, 1)
        buf = np.arange(5.0)
        c.all_reduce(buf, ringcomm.AVG)
        np.testing.assert_array_equal(buf, np.arange(5.0))


def test_non_contiguous_refused(comm) -> None:
    with pytest.raises(ValueError, match="not C-contiguous"):
        comm.all_reduce(np.zeros((4, 4), np.float32)[:, 1])


def test_read_only_output_refused(comm) -> None:
    buf = np.zeros(4)
    buf.flags.writeable = False
    with pytest.raises(ValueError, match="read-only"):
        comm.all_reduce(buf)
    with pytest.raises(ValueError, match="read-only"):
        comm.all_reduce(b"abcd")


def test_unsupported_dtypes_refused(comm) -> None:
    for bad in (np.zeros(3, np.complex64), np.zeros(3, ">f4"), np.array(["a"]), [1.0, 2.0]):
        with pytest.raises(TypeError):
            comm.all_reduce(bad)


def test_errors_name_the_argument(comm) -> None:
    # (the two-part names are put together only when an error is raised: see as_buffer)
    with pytest.raises(TypeError, match=r"^all_gather input: unsupported dtype complex64"):
        comm.all_gather(np.zeros(3, np.float32), np.zeros(3, np.complex64))
    with pytest.raises(TypeError, match=r"^reduce_scatter output: expected a numpy array"):
        comm.reduce_scatter([1.0], np.zeros(1))
    with pytest.raises(ValueError, match=r"^all_reduce buf: array is not C-contiguous"):
        comm.all_reduce(np.zeros((4, 4), np.float32)[:, 1])


def test_op_dtype_rules(comm) -> None:
    with pytest.raises(TypeError, match="AVG"):
        comm.all_reduce(np.zeros(3, np.int32), ringcomm.AVG)
    with pytest.raises(TypeError, match="BXOR"):
        comm.all_reduce(np.zeros(3, np.float32), ringcomm.BXOR)
    with pytest.raises(TypeError, match="ReduceOp"):
        comm.all_reduce(np.zeros(3), op=42)
    comm.all_reduce(np.zeros(3, bool), ringcomm.BXOR)  # bitwise on bool is fine


def test_size_mismatches_refused(comm) -> None:
    with pytest.raises(ValueError, match="size \\* input"):
        comm.all_gather(np.zeros(5), np.zeros(3))
    with pytest.raises(ValueError, match="size \\* output"):
        comm.reduce_scatter(np.zeros(2), np.zeros(3))
    with pytest.raises(TypeError, match="float32"):
        comm.all_gather(np.zeros(3, np.float32), np.zeros(3, np.float64))
    with pytest.raises(ValueError, match="overlap"):
        x = np.zeros(6)
        comm.all_to_all(x, x)


def test_bad_ranks_tags_algorithms(comm) -> None:
    with pytest.raises(ValueError, match="root"):
        comm.broadcast(np.zeros(3), root=1)
    with pytest.raises(ValueError, match="tag"):
        comm.send(np.zeros(3), 0, tag=-1)
    with pytest.raises(ValueError, match="algorithm"):
        comm.all_reduce(np.zeros(3), algorithm="butterfly")
    with pytest.raises(ValueError, match="timeout"):
        comm.barrier(timeout=0)


def test_buffer_protocol_objects(comm) -> None:
    a = array.array("f", [1, 2, 3])
    comm.all_reduce(a)
    assert list(a) == [1, 2, 3]
    ba = bytearray(b"\x01\x02")
    comm.all_reduce(ba, ringcomm.BOR)
    assert ba == bytearray(b"\x01\x02")


def test_closed_communicator_refuses_work() -> None:
    c = ringcomm.init(rank=0, size=1, transport="local", master_port=65001)
    c.close()
    c.close()  # idempotent
    with pytest.raises(ringcomm.CommClosedError):
        c.barrier()


def test_validation_happens_before_sending_on_every_rank() -> None:
    """One rank passes a bad buffer: it raises at once, and the others' next op still works
    with that rank once it passes a good one (nothing was sent or numbered)."""

    def body(comm):
        if comm.rank == 1:
            with pytest.raises(ValueError):
                comm.all_reduce(np.zeros((2, 2))[:, 0])
        buf = np.ones(3)
        comm.all_reduce(buf)
        return buf

    for buf in run_threads(2, body):
        np.testing.assert_array_equal(buf, [2, 2, 2])


def test_errors_form_one_family() -> None:
    assert issubclass(ringcomm.CommTimeoutError, TimeoutError)
    assert issubclass(ringcomm.CommTimeoutError, ringcomm.RingcommError)
    assert issubclass(ringcomm.PeerLostError, ringcomm.TransportError)
    assert issubclass(ringcomm.RendezvousError, ConnectionError)


def test_config_from_env_rejects_nonsense() -> None:
    cfg = ringcomm.Config.from_env(
        {"RINGCOMM_SEGMENT_BYTES": "4096", "RINGCOMM_ALLREDUCE_ALGORITHM": "star"}
    )
    assert cfg.segment_bytes == 4096 and cfg.allreduce_algorithm == "star"
    with pytest.raises(ValueError, match="RINGCOMM_TIMEOUT_SECONDS"):
        ringcomm.Config.from_env({"RINGCOMM_TIMEOUT_SECONDS": "soon"})
    with pytest.raises(ValueError, match="expected one of"):
        ringcomm.Config.from_env({"RINGCOMM_ALLREDUCE_ALGORITHM": "magic"})


def test_torch_is_not_imported_unless_a_tensor_is_given() -> None:
    import subprocess
    import sys

    code = (
        "import sys, numpy as np, ringcomm\n"
        "c = ringcomm.init(rank=0, size=1, transport='local', master_port=1)\n"
        "c.all_reduce(np.ones(3)); c.all_reduce(bytearray(4), ringcomm.BOR); c.close()\n"
        "assert 'torch' not in sys.modules, 'torch was imported'\n"
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stderr


def test_close_from_a_completion_callback_does_not_deadlock() -> None:
    import threading

    c = ringcomm.init(rank=0, size=1, transport="local", master_port=65002)
    done = threading.Event()
    work = c.all_reduce(np.ones(4), async_op=True)
    work.get_future().add_done_callback(lambda _f: (c.close(), done.set()))
    assert done.wait(10), "close() inside a done-callback hung"
    with pytest.raises(ringcomm.CommClosedError):
        c.barrier()


def test_vector_collectives_check_their_counts() -> None:
    def body(c: ringcomm.Communicator) -> list[str]:
        errors = []
        calls = [
            lambda: c.all_gatherv(np.zeros(3), np.zeros(1), [1, 2, 0]),  # one count per rank
            lambda: c.all_gatherv(np.zeros(3), np.zeros(1), [1, -2]),  # negative
            lambda: c.all_gatherv(np.zeros(3), np.zeros(1), [1.5, 1]),  # not integers
            lambda: c.all_gatherv(np.zeros(4), np.zeros(1), [1, 2]),  # output != sum
            lambda: c.reduce_scatter_v(np.zeros(5), np.zeros(3), [1, 2]),  # output != counts[r]
            lambda: c.all_to_allv(np.zeros(3), np.zeros(3), [1, 2], [2, 2]),  # recv sum
            lambda: c.all_to_allv(np.zeros(3), np.zeros(3), [2, 1], [1, 2]),  # self mismatch
            lambda: c.gatherv(None, np.zeros(1), [1, 2], root=0),  # root without output
            lambda: c.scatterv(np.zeros(5), None, [1, 2], root=1),  # piece != counts[r]
            lambda: c.all_gatherv(np.zeros(3, np.float32), np.zeros(1), [1, 2]),  # dtypes
        ]
        for call in calls:
            try:
                call()
            except (ValueError, TypeError) as e:
                errors.append(f"{type(e).__name__}: {e}")
            else:
                errors.append("accepted")
        return errors

    for errors in run_threads(2, body):
        assert "accepted" not in errors, errors
        assert "hold 2 non-negative counts" in errors[0], errors
        assert "sequence of integers" in errors[2], errors
        assert "sum(counts) = 3" in errors[3], errors
        assert "sends itself" in errors[6], errors


def test_group_refuses_nesting_and_runs_nothing_after_an_error(comm) -> None:
    buf = np.ones(4)
    with comm.group(), pytest.raises(ringcomm.RingcommError, match="do not nest"), comm.group():
        pass
    with pytest.raises(KeyError), comm.group():
        w = comm.all_reduce(buf, async_op=True)
        raise KeyError("user code")
    with pytest.raises(ringcomm.RingcommError, match="none ran"):
        w.wait()
