"""GPU buffers (ringcomm.gpu): what can be checked without a GPU, and the GPU check itself
where one exists.

Without CUDA: the device kernels compile with nvcc (where nvcc exists); host buffers never
import CuPy; a GPU buffer without CuPy is a clear error; and the staging path's logic
(intake, which buffers are copied which way, chunking, in-place and overlap checks) runs
through real collectives on thread ranks, with ``fake_cupy`` standing in for CuPy on host
memory. On a machine with a GPU, CuPy and torch, ``bench/gpu_check.sh`` runs for real.
"""

from __future__ import annotations

import collections
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import fake_cupy
import numpy as np
import pytest

import ringcomm
from runners import run_threads

ROOT = Path(__file__).resolve().parent.parent
SOURCE = ROOT / "native" / "cuda_kernels.cu"


@pytest.mark.skipif(shutil.which("nvcc") is None, reason="nvcc is not installed")
def test_cuda_sources_compile_with_nvcc(tmp_path: Path) -> None:
    out = subprocess.run(
        ["nvcc", "-c", str(SOURCE), "-o", str(tmp_path / "k.o")],
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert out.returncode == 0, out.stderr


def test_every_kernel_the_loader_names_is_in_the_source() -> None:
    from ringcomm.native import cuda

    text = SOURCE.read_text()
    assert "reduce_##OP##_##NAME" in text
    for name in ("scale_float32", "narrow_bfloat16", "widen_float16"):
        assert f"void {name}(" in text
    assert Path(cuda.__file__).with_name("cuda_kernels.cu") == cuda.SOURCE


def _python(code: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=ROOT
    )


def test_host_buffers_never_import_cuda_libraries() -> None:
    out = _python(
        "import sys, numpy as np, torch, ringcomm\n"
        "comm = ringcomm.init()\n"
        "comm.all_reduce(np.ones(8, np.float32)); comm.all_reduce(torch.ones(8))\n"
        "comm.close()\n"
        "print(sorted(m for m in ('cupy', 'cupy_backends') if m in sys.modules))\n"
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


def test_gpu_buffer_without_cupy_says_how_to_get_it() -> None:
    out = _python(
        "import sys, numpy as np, ringcomm\n"
        "sys.modules['cupy'] = None  # not installed\n"
        "class Dev:\n"
        "    __cuda_array_interface__ = {'shape': (4,), 'typestr': '<f4', 'data': (0, False),"
        " 'version': 3}\n"
        "comm = ringcomm.init()\n"
        "try:\n"
        "    comm.all_reduce(Dev())\n"
        "except ImportError as e:\n"
        "    print('ImportError:', e)\n"
    )
    assert out.returncode == 0, out.stderr
    assert (
        "ImportError: ringcomm needs CuPy for GPU buffers: pip install cupy-cuda12x" in out.stdout
    )


def test_gpu_path_is_checked() -> None:
    with pytest.raises(ValueError, match="gpu_path"):
        ringcomm.Config(gpu_path="fast")
    with pytest.raises(ValueError, match="RINGCOMM_GPU_PATH"):
        ringcomm.Config.from_env({"RINGCOMM_GPU_PATH": "nvlink"})
    assert ringcomm.Config.from_env({"RINGCOMM_GPU_PATH": "staging"}).gpu_path == "staging"


# -- the staging path, with fake_cupy -------------------------------------------------------
class CopyCounter:
    """Counts the bytes fake_cupy copies each way."""

    def __init__(self) -> None:
        self.bytes: collections.Counter[str] = collections.Counter()
        self.calls: collections.Counter[str] = collections.Counter()

    def __call__(self, dst: int, src: int, nbytes: int, kind: int, stream: int) -> None:
        way = "to_host" if kind == fake_cupy.cuda.runtime.memcpyDeviceToHost else "to_device"
        self.bytes[way] += nbytes
        self.calls[way] += 1
        fake_cupy._memcpy(dst, src, nbytes, kind, stream)


@pytest.fixture
def stand_in(monkeypatch: pytest.MonkeyPatch) -> CopyCounter:
    counter = CopyCounter()
    monkeypatch.setitem(sys.modules, "cupy", fake_cupy)
    monkeypatch.setattr(fake_cupy.cuda.runtime, "memcpyAsync", counter)
    return counter


def _dev(a: np.ndarray) -> Any:
    return fake_cupy.asarray(a.copy())


def _host(d: Any) -> np.ndarray:
    return fake_cupy.asnumpy(d)


def _every_collective(comm: ringcomm.Communicator) -> str | None:
    r, n = comm.rank, comm.size
    count = 1001
    mine = np.arange(count, dtype=np.float32) + r
    everyone = [np.arange(count, dtype=np.float32) + q for q in range(n)]
    total = np.sum(everyone, axis=0)

    d = _dev(mine)
    comm.all_reduce(d)
    np.testing.assert_array_equal(_host(d), total)
    d = _dev(mine)
    comm.all_reduce(d, ringcomm.AVG, async_op=True).wait()
    np.testing.assert_allclose(_host(d), total / n, rtol=1e-6)

    d = _dev(mine)
    comm.broadcast(d, root=n - 1)
    np.testing.assert_array_equal(_host(d), everyone[n - 1])

    d = _dev(mine)
    comm.reduce(d, root=0, op=ringcomm.MAX)
    np.testing.assert_array_equal(_host(d), everyone[-1] if r == 0 else mine)

    out = _dev(np.zeros(count * n, np.float32))
    comm.all_gather(out, _dev(mine))
    np.testing.assert_array_equal(_host(out), np.concatenate(everyone))
    # In place: the input is this rank's slot of the output.
    out = _dev(np.zeros(count * n, np.float32))
    out._host[r * count : (r + 1) * count] = mine
    comm.all_gather(out, out[r * count : (r + 1) * count])
    np.testing.assert_array_equal(_host(out), np.concatenate(everyone))

    big = [np.arange(count * n, dtype=np.float32) * (q + 1) for q in range(n)]
    out = _dev(np.zeros(count, np.float32))
    comm.reduce_scatter(out, _dev(big[r]))
    np.testing.assert_array_equal(_host(out), np.sum(big, axis=0)[r * count : (r + 1) * count])

    out = _dev(np.zeros(count * n, np.float32)) if r == 0 else None
    comm.gather(out, _dev(mine), root=0)
    if r == 0:
        np.testing.assert_array_equal(_host(out), np.concatenate(everyone))
    piece = _dev(np.zeros(count, np.float32))
    comm.scatter(piece, _dev(np.concatenate(everyone)) if r == 0 else None, root=0)
    np.testing.assert_array_equal(_host(piece), everyone[r])

    per = 10 * n
    out = _dev(np.zeros(per, np.int64))
    comm.all_to_all(out, _dev(np.arange(per, dtype=np.int64) + 1000 * r))
    want = np.concatenate([np.arange(per)[r * 10 : (r + 1) * 10] + 1000 * q for q in range(n)])
    np.testing.assert_array_equal(_host(out), want)

    got = _dev(np.zeros(count, np.float32))
    w = comm.send(_dev(mine), (r + 1) % n, tag=5, async_op=True)
    comm.recv(got, (r - 1) % n, tag=5)
    w.wait()
    np.testing.assert_array_equal(_host(got), everyone[(r - 1) % n])
    return comm.gpu_path


@pytest.mark.parametrize("size", [1, 2, 3, 4])
def test_staging_runs_every_collective(stand_in: CopyCounter, size: int) -> None:
    # 64-byte chunks: a 1001-element all_reduce goes in 63 chunks.
    config = ringcomm.Config(gpu_chunk_bytes=64, timeout_seconds=20)
    paths = run_threads(size, _every_collective, config=config, timeout=120)
    assert paths == ["staging"] * size


def test_staging_copies_only_what_the_operation_reads_and_writes(stand_in: CopyCounter) -> None:
    nbytes = 4096 * 4
    config = ringcomm.Config(gpu_chunk_bytes=1024, timeout_seconds=20)

    def body(comm: ringcomm.Communicator) -> None:
        d = _dev(np.ones(4096, np.float32))
        if comm.rank == 0:
            comm.all_reduce(d)  # the first operation also chooses the path
            comm.broadcast(d, root=0)
        else:
            comm.all_reduce(d)
            comm.broadcast(d, root=0)

    # Rank threads share the counter: two ranks' copies add up.
    run_threads(2, body, config=config)
    # all_reduce: everything both ways on both ranks; broadcast: the root only reads, the
    # other rank only writes.
    assert stand_in.bytes["to_host"] == 2 * nbytes + nbytes
    assert stand_in.bytes["to_device"] == 2 * nbytes + nbytes
    assert stand_in.calls["to_host"] == 3 * nbytes // 1024  # in 1 KiB chunks


def test_device_buffer_mistakes_are_clear_errors(stand_in: CopyCounter) -> None:
    comm = ringcomm.init()
    try:
        with pytest.raises(TypeError, match="on the host or both on a GPU"):
            comm.all_gather(np.zeros(4, np.float32), _dev(np.zeros(4, np.float32)))
        whole = _dev(np.zeros(8, np.float32))
        with pytest.raises(ValueError, match="overlap"):
            comm.all_to_all(whole[0:4], whole[2:6])
        strided = fake_cupy.ndarray(np.zeros(8, np.float32)[::2])
        with pytest.raises(ValueError, match="not C-contiguous"):
            comm.all_reduce(strided)
        with pytest.raises(TypeError, match="unsupported dtype complex64"):
            comm.all_reduce(_dev(np.zeros(4, np.complex64)))
        with pytest.raises(TypeError, match="AVG on int32"):
            comm.all_reduce(_dev(np.zeros(4, np.int32)), ringcomm.AVG)
    finally:
        comm.close()


# -- on a GPU -------------------------------------------------------------------------------
def _gpu_missing() -> str | None:
    if os.environ.get("CUDA_VISIBLE_DEVICES") == "":
        return "CUDA_VISIBLE_DEVICES is empty"
    try:
        import cupy
    except ImportError:
        return "CuPy is not installed (no GPU stack here)"
    try:
        if cupy.cuda.runtime.getDeviceCount() < 1:
            return "no GPU"
    except Exception as e:  # no driver
        return f"no GPU ({type(e).__name__})"
    return None


@pytest.mark.slow
@pytest.mark.skipif(_gpu_missing() is not None, reason=str(_gpu_missing()))
def test_gpu_check_script(tmp_path: Path) -> None:
    out, table = _run_gpu_check(tmp_path, 900)
    assert "FAIL" not in table and out.returncode == 0, out.stdout[-4000:] + table


def _run_gpu_check(tmp_path: Path, timeout: float) -> tuple[Any, str]:
    """``bash bench/gpu_check.sh tmp_path``: its completed process and its table."""
    out = subprocess.run(
        ["bash", str(ROOT / "bench" / "gpu_check.sh"), str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=ROOT,
    )
    return out, (tmp_path / "gpu_check_table.md").read_text()


def _gpu_check_module() -> Any:
    sys.path.insert(0, str(ROOT / "bench"))
    try:
        import gpu_check
    finally:
        sys.path.remove(str(ROOT / "bench"))
    return gpu_check


def _table(tmp_path: Path, log_lines: list[str]) -> tuple[int, str]:
    gpu_check = _gpu_check_module()
    log = tmp_path / "gpu_check.log"
    log.write_text("\n".join(log_lines) + "\n")
    import contextlib
    import io

    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        rc = gpu_check.table(str(log))
    return rc, out.getvalue()


def _passing_log(tmp_path: Path) -> list[str]:
    """A log in which every step ran and printed its rows, all ok."""
    gpu_check = _gpu_check_module()
    lines = []
    for label, rows in gpu_check.EXPECTED.items():
        for name in rows:
            check, forced = (name[:-10], "staging") if name.endswith(" [staging]") else (name, "")
            row = {"check": check, "ok": True}
            if forced:
                row["path_forced"] = forced
            lines.append("GPUCHECK " + json.dumps(row))
        steplog = tmp_path / f"{len(lines)}.log"
        steplog.write_text("fine\n")
        lines.append(
            "GPUSTEP " + json.dumps({"label": label, "rc": 0, "seconds": 1, "log": str(steplog)})
        )
    return lines


def test_gpu_check_table_passes_a_complete_run(tmp_path: Path) -> None:
    rc, text = _table(tmp_path, _passing_log(tmp_path))
    assert rc == 0 and "FAIL" not in text, text
    assert text.count("PASS") == sum(len(r) for r in _gpu_check_module().EXPECTED.values())


def test_gpu_check_table_fails_a_row_its_step_never_printed(tmp_path: Path) -> None:
    """A step that crashed before printing: its row is still in the table, FAIL, with the
    step's exit status and last lines (it used to be simply absent, and the table passed)."""
    crashed = tmp_path / "ddp.log"
    crashed.write_text("Traceback (most recent call last):\nRuntimeError: CUDA error\n")
    step = {"label": "DDP, n=2", "rc": 1, "seconds": 3, "log": str(crashed)}
    lines = [
        line
        for line in _passing_log(tmp_path)
        if "DDP on CUDA" not in line and '"DDP, n=2"' not in line
    ]
    lines.append("GPUSTEP " + json.dumps(step))
    rc, text = _table(tmp_path, lines)
    assert rc == 1, text
    row = next(line for line in text.splitlines() if line.startswith("| DDP on CUDA, n=2"))
    assert "FAIL" in row and "exited 1" in row and "CUDA error" in row, row


def test_gpu_check_table_fails_a_step_that_died_after_its_rows(tmp_path: Path) -> None:
    lines = [
        line.replace('"rc": 0', '"rc": 124') if '"label": "kernels"' in line else line
        for line in _passing_log(tmp_path)
    ]
    rc, text = _table(tmp_path, lines)
    assert rc == 1 and "timed out" in text, text


@pytest.mark.skipif(_gpu_missing() is None, reason="a GPU is here: test_gpu_check_script runs")
def test_gpu_check_script_fails_without_a_gpu(tmp_path: Path) -> None:
    """On a machine without a GPU every step fails: the script must say FAIL for every
    expected row and exit non-zero (it exited 0 with an empty table)."""
    out, table = _run_gpu_check(tmp_path, 600)
    assert out.returncode != 0, out.stdout[-2000:]
    for rows in _gpu_check_module().EXPECTED.values():
        for name in rows:
            assert f"| {name} | FAIL |" in table, (name, table)


def test_abort_reaches_a_device_wait(stand_in: Any) -> None:
    """abort() (or a bounded close) fails an operation waiting on a GPU stream within a
    moment; the wait used to go on until the operation's deadline."""
    import threading
    import time
    import types

    from ringcomm.gpu.engine import DeviceEngine

    engine = DeviceEngine(0, 1, ringcomm.Config())
    transport = types.SimpleNamespace(
        aborted=False, closed_error=lambda: ringcomm.CommClosedError("the communicator was aborted")
    )
    ctx = types.SimpleNamespace(transport=transport, deadline=time.monotonic() + 5)
    never = types.SimpleNamespace(done=False)  # a stream whose work never finishes
    threading.Timer(0.3, lambda: setattr(transport, "aborted", True)).start()
    t0 = time.monotonic()
    with pytest.raises(ringcomm.CommClosedError, match="aborted"):
        engine._wait(never, ctx, "staged all_reduce")
    assert time.monotonic() - t0 < 2


def test_forcing_nccl_without_it_is_a_ringcomm_error(stand_in: CopyCounter) -> None:
    """RINGCOMM_GPU_PATH=nccl where a rank has no NCCL: a RingcommError naming the ranks (it
    was a bare RuntimeError, outside ringcomm's family)."""
    config = ringcomm.Config(gpu_path="nccl", timeout_seconds=20)

    def body(comm: ringcomm.Communicator) -> str:
        with pytest.raises(ringcomm.RingcommError, match=r"ranks \[0\] have no NCCL") as e:
            comm.all_reduce(_dev(np.ones(4, np.float32)))
        return type(e.value).__name__

    assert run_threads(1, body, config=config) == ["RingcommError"]
