"""``ringcomm-info`` (also ``python -m ringcomm info``): what ringcomm finds on this host.

It prints the versions of ringcomm and the libraries it uses; the MPI library; which
transports this host can use and why not (/dev/shm, reading a peer's memory with
``process_vm_readv``, ipc:// and CurveZMQ in this libzmq); the interfaces and the one
sockets would bind to; CUDA and NCCL; and every ``RINGCOMM_*`` setting in effect, with
where it came from. With ``-n N`` it also launches N local ranks and runs a small
correctness and latency check over each transport.

The exit status is 1 when something the settings ask for cannot work here (a setting out of
bounds, ``RINGCOMM_TRANSPORT=shm`` without a usable /dev/shm, an interface that matches
nothing, encryption without CurveZMQ, NCCL forced without it, a failed check), else 0.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import platform
import subprocess
import sys
import time

from ringcomm import config, hosts
from ringcomm.transport.shm.board import stream_bytes_for

CHECKED_TRANSPORTS = ("auto", "zmq")
_CHECK_MARK = "RINGCOMM-INFO-CHECK "


class Report:
    """Lines to print, grouped in sections, and the problems found on the way."""

    def __init__(self) -> None:
        self.lines: list[str] = []
        self.problems: list[str] = []

    def section(self, title: str) -> None:
        self.lines.append(f"\n## {title}")

    def item(self, name: str, value: object) -> None:
        self.lines.append(f"{name:<34} {value}")

    def problem(self, text: str) -> None:
        self.problems.append(text)
        self.lines.append(f"{'PROBLEM':<34} {text}")


def _version(module: str, attribute: str = "__version__") -> str:
    try:
        return str(getattr(importlib.import_module(module), attribute))
    except ImportError as e:
        return f"not installed ({e.msg})" if hasattr(e, "msg") else "not installed"
    except Exception as e:  # a broken install says so instead of stopping the report
        return f"unusable ({type(e).__name__}: {e})"


def _versions(report: Report) -> None:
    import numpy
    import zmq

    import ringcomm

    report.section("versions")
    report.item("ringcomm", ringcomm.__version__)
    report.item("python", platform.python_version())
    report.item("numpy", numpy.__version__)
    report.item("numba", _version("numba"))
    report.item("pyzmq / libzmq", f"{zmq.__version__} / {zmq.zmq_version()}")
    report.item("mpi4py", _version("mpi4py"))
    report.item("torch", _version("torch"))
    report.item("cupy", _version("cupy"))


def _mpi(report: Report) -> None:
    report.section("MPI")
    try:
        import mpi4py
    except ImportError:
        report.item("mpi4py", "not installed: pip install 'ringcomm[mpi]'")
        return
    mpi4py.rc.initialize = False  # only look: do not start MPI here
    from mpi4py import MPI

    report.item("library", MPI.Get_library_version().splitlines()[0].strip())
    major, minor = MPI.Get_version()
    report.item("standard", f"MPI {major}.{minor}")
    launched = config.mpi_launch()
    report.item("this process", "started by an MPI launcher" if launched else "not under mpiexec")


def _read_peer_memory() -> str:
    """Whether a child process may read this one's memory (``process_vm_readv``), which
    the shared-memory transport uses for large messages; a short reason where not."""
    import numpy as np

    probe = np.array([0x5249_4E47_434F_4D4D], np.uint64)
    code = (
        "import sys, numpy as np\n"
        "from ringcomm.transport.shm import syscalls\n"
        "out = np.zeros(1, np.uint64)\n"
        "try:\n"
        "    syscalls.read_remote(int(sys.argv[1]), int(sys.argv[2]), out.view(np.uint8))\n"
        "except OSError as e:\n"
        "    print('no:', e.strerror); sys.exit(0)\n"
        "print('yes' if int(out[0]) == int(sys.argv[3]) else 'no: read other bytes')\n"
    )
    address = probe.__array_interface__["data"][0]
    try:
        res = subprocess.run(
            [sys.executable, "-c", code, str(os.getpid()), str(address), str(int(probe[0]))],
            capture_output=True,
            text=True,
            timeout=60,
        )
    except (OSError, subprocess.TimeoutExpired) as e:
        return f"no: {e}"
    if res.stdout.strip():
        return res.stdout.strip()
    last = res.stderr.strip().splitlines()[-1:] or ["no answer"]
    return f"no: {last[0]}"


def _transports(report: Report, cfg: config.Config | None) -> None:
    import zmq

    report.section("transports on this host")
    identity = hosts.shm_identity()
    if identity is None:
        why = f"{hosts.SHM_DIR} is missing or not writable"
        report.item("shared memory", f"no: {why}")
    else:
        st = os.statvfs(hosts.SHM_DIR)
        free, total = st.f_bavail * st.f_frsize >> 20, st.f_blocks * st.f_frsize >> 20
        report.item("shared memory", f"yes: {hosts.SHM_DIR}, {free} MiB free of {total} MiB")
        if cfg is not None:
            need = cfg.shm_slots * cfg.shm_slot_bytes >> 20
            report.item("  per peer on this host", f"{need} MiB (slots x slot bytes)")
        cache = hosts.last_level_cache_bytes()
        setting = cfg.shm_board_stream_bytes if cfg is not None else None
        streams = stream_bytes_for(setting)
        said = "not said by the OS" if cache is None else f"{cache >> 20} MiB"
        if streams:
            said += f"; all_gather streams from {streams >> 20} MiB on the host"
            said += " where ranks do not outnumber cores" if setting is None else ""
        report.item("  last-level cache", said)
    readable = _read_peer_memory()
    report.item("  read a peer's memory", f"{readable} (one copy for large messages)")
    scope = "/proc/sys/kernel/yama/ptrace_scope"
    if os.path.exists(scope):
        with open(scope) as f:
            report.item("  ptrace scope", f.read().strip())
    report.item("ZeroMQ ipc:// (same host)", "yes" if zmq.has("ipc") else "no")
    report.item("ZeroMQ tcp:// (across hosts)", "yes")
    report.item("CurveZMQ (RINGCOMM_ENCRYPT)", "yes" if zmq.has("curve") else "no")
    report.item("MPI", "yes" if _version("mpi4py")[0].isdigit() else "no: mpi4py not installed")
    if cfg is None:
        return
    wanted = config.env_value("RINGCOMM_TRANSPORT")
    if wanted == "shm" and identity is None:
        report.problem(f"RINGCOMM_TRANSPORT=shm, but {hosts.SHM_DIR} is not usable here")
    if wanted == "mpi" and not _version("mpi4py")[0].isdigit():
        report.problem("RINGCOMM_TRANSPORT=mpi, but mpi4py is not installed")
    if cfg.encrypt and not zmq.has("curve"):
        report.problem("RINGCOMM_ENCRYPT=1, but this libzmq has no CurveZMQ")


def _interfaces(report: Report, cfg: config.Config | None) -> None:
    report.section("interfaces")
    for name, address in hosts.interface_addresses():
        report.item(name, address)
    master = config.env_value("RINGCOMM_MASTER_ADDR") or os.environ.get("MASTER_ADDR")
    master = master or "127.0.0.1"
    ifname = cfg.socket_ifname if cfg is not None else config.env_value("RINGCOMM_SOCKET_IFNAME")
    try:
        chosen = hosts.bind_address(master, ifname)
    except Exception as e:
        report.problem(f"no interface to bind sockets to: {e}")
        return
    how = f"RINGCOMM_SOCKET_IFNAME={ifname}" if ifname else f"the route to {master}"
    report.item("sockets bind to", f"{chosen} ({how})")


def _gpu(report: Report, cfg: config.Config | None) -> None:
    report.section("GPU")
    nccl = False
    try:
        import cupy

        count = cupy.cuda.runtime.getDeviceCount()
        from cupy.cuda import nccl as cupy_nccl

        nccl = bool(getattr(cupy_nccl, "available", False))
        report.item("CUDA devices (CuPy)", count)
        report.item("NCCL", cupy_nccl.get_version() if nccl else "not available")
    except ImportError:
        report.item("CuPy", "not installed (GPU buffers need it: pip install cupy-cudaXXx)")
    except Exception as e:
        report.item("CUDA", f"not usable ({type(e).__name__}: {e})")
    if cfg is not None and cfg.gpu_path == "nccl" and not nccl:
        report.problem("RINGCOMM_GPU_PATH=nccl, but NCCL is not available here")


def _settings(report: Report) -> config.Config | None:
    report.section("settings (RINGCOMM_*)")
    cfg = None
    try:
        cfg = config.Config.from_env()
    except ValueError as e:
        report.problem(f"the settings are refused: {e}")
    for decl in (*config.WORLD_SETTINGS, *config.settings()):
        raw = config.env_value(decl.variable)
        if decl.name == "secret":
            value = "set (not shown)" if raw else "unset: no job secret"
        elif raw is not None:
            value = raw
        else:
            value = decl.shown_default
        source = "environment" if raw is not None else "default"
        report.item(decl.variable, f"{value}  ({source})")
    return cfg


def _checks(report: Report, nprocs: int) -> None:
    report.section(f"check: {nprocs} local ranks")
    for transport in CHECKED_TRANSPORTS:
        env = {**os.environ, "RINGCOMM_TRANSPORT": transport}
        command = [sys.executable, "-m", "ringcomm.run", "-n", str(nprocs)]
        command += [sys.executable, "-m", "ringcomm.info", "--rank-check"]
        try:
            res = subprocess.run(command, capture_output=True, text=True, timeout=120, env=env)
        except subprocess.TimeoutExpired:
            report.problem(f"check over {transport}: no answer within 120 s")
            continue
        found = [line for line in res.stdout.splitlines() if _CHECK_MARK in line]
        if res.returncode != 0 or not found:
            tail = " / ".join((res.stdout + res.stderr).strip().splitlines()[-3:])
            report.problem(f"check over {transport} failed (exit {res.returncode}): {tail}")
            continue
        got = json.loads(found[0].split(_CHECK_MARK, 1)[1])
        report.item(
            f"{transport}",
            f"ok: transport {got['transport']}, 4 KiB all_reduce {got['us']:.1f} us "
            f"(median of {got['iters']}, slowest rank)",
        )


def _rank_check() -> int:
    """Run on every rank by ``-n``: collectives checked against their expected results,
    then the latency of a 4 KiB all_reduce."""
    import numpy as np

    import ringcomm

    with ringcomm.init(timeout=60) as comm:
        n, r = comm.size, comm.rank
        x = np.full(1000, r + 1.0, np.float32)
        comm.all_reduce(x)
        assert (x == n * (n + 1) / 2).all(), x[:4]
        out = np.empty(n * 4, np.int64)
        comm.all_gather(out, np.full(4, r, np.int64))
        assert (out == np.repeat(np.arange(n), 4)).all(), out
        b = np.arange(10.0) if r == 0 else np.zeros(10)
        comm.broadcast(b, 0)
        assert (b == np.arange(10.0)).all(), b
        small = np.ones(1024, np.float32)
        times = []
        for _ in range(100):
            comm.barrier()
            t0 = time.perf_counter()
            comm.all_reduce(small)
            times.append(time.perf_counter() - t0)
        worst = np.array([np.median(times[10:])])
        comm.all_reduce(worst, ringcomm.MAX)
        if r == 0:
            row = {"transport": comm.transport, "us": float(worst[0]) * 1e6, "iters": 90}
            print(_CHECK_MARK + json.dumps(row), flush=True)
    return 0


def build(nprocs: int = 0) -> Report:
    """The report of this host (and, with ``nprocs``, of a local check)."""
    report = Report()
    _versions(report)
    _mpi(report)
    cfg = _settings(report)
    _transports(report, cfg)
    _interfaces(report, cfg)
    _gpu(report, cfg)
    if nprocs:
        _checks(report, nprocs)
    return report


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``ringcomm-info`` and ``python -m ringcomm info``."""
    parser = argparse.ArgumentParser(prog="ringcomm-info", description=__doc__.split("\n")[0])
    parser.add_argument("-n", "--nprocs", type=int, default=0, help="also check N local ranks")
    parser.add_argument("--rank-check", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.rank_check:
        return _rank_check()
    report = build(args.nprocs)
    print("# ringcomm info" + "\n".join(report.lines))
    if report.problems:
        print(f"\n{len(report.problems)} problem(s): " + "; ".join(report.problems))
        return 1
    print("\nno problems found")
    return 0


if __name__ == "__main__":
    sys.exit(main())
