"""The system calls the shared-memory transport makes through ctypes: futex sleep and wake,
``process_vm_readv`` and ``process_vm_writev`` (read or write another process's memory in
one copy), and whether a process still lives (pidfd)."""

from __future__ import annotations

import ctypes
import os
import platform
import select
import time
from typing import Any

import numpy as np


def address_of(arr: np.ndarray) -> int:
    """Where ``arr``'s data starts in this process's memory."""
    return int(arr.__array_interface__["data"][0])


# -- futex: sleep until a peer wakes us -------------------------------------------------------
class _Timespec(ctypes.Structure):
    _fields_ = [("tv_sec", ctypes.c_long), ("tv_nsec", ctypes.c_long)]


_SYS_FUTEX = {"x86_64": 202, "aarch64": 98, "ppc64le": 221, "s390x": 238}.get(platform.machine())
_FUTEX_WAIT, _FUTEX_WAKE = 0, 1  # shared (not _PRIVATE): the word is in another process too
_libc = ctypes.CDLL(None, use_errno=True)


def futex_wait(address: int, expected: int, seconds: float) -> None:
    """Sleep while the 32-bit word at ``address`` equals ``expected`` (at most ``seconds``)."""
    if _SYS_FUTEX is None:
        time.sleep(min(seconds, 0.001))
        return
    ts = _Timespec(int(seconds), int((seconds % 1) * 1e9))
    _libc.syscall(
        _SYS_FUTEX,
        ctypes.c_void_p(address),
        _FUTEX_WAIT,
        ctypes.c_uint32(expected),
        ctypes.byref(ts),
        None,
        0,
    )


def futex_wake(address: int) -> None:
    """Wake every process sleeping on the 32-bit word at ``address``."""
    if _SYS_FUTEX is not None:
        _libc.syscall(_SYS_FUTEX, ctypes.c_void_p(address), _FUTEX_WAKE, 0x7FFFFFFF, None, None, 0)


# -- cross-memory attach: read another process's memory in one copy ---------------------------
class _IoVec(ctypes.Structure):
    _fields_ = [("base", ctypes.c_void_p), ("len", ctypes.c_size_t)]


PROCESS_VM_READV = getattr(_libc, "process_vm_readv", None)
PROCESS_VM_WRITEV = getattr(_libc, "process_vm_writev", None)
for _function in (PROCESS_VM_READV, PROCESS_VM_WRITEV):
    if _function is not None:
        _function.argtypes = [
            ctypes.c_int,
            ctypes.POINTER(_IoVec),
            ctypes.c_ulong,
            ctypes.POINTER(_IoVec),
            ctypes.c_ulong,
            ctypes.c_ulong,
        ]
        _function.restype = ctypes.c_ssize_t


def libc_address(name: str) -> int:
    """Where libc's function ``name`` lies in this process (0: it has none), for native
    code to call it (the board's ``process_vm_readv``, ``sched_yield``, ``clock_gettime``)."""
    function = getattr(_libc, name, None)
    return 0 if function is None else ctypes.cast(function, ctypes.c_void_p).value or 0


def read_remote(pid: int, address: int, out: np.ndarray) -> None:
    """Copy ``out.nbytes`` bytes at ``address`` in process ``pid`` into ``out`` (GIL free).

    Raises OSError (ESRCH: the process is gone; EPERM/ENOSYS: not allowed here)."""
    assert PROCESS_VM_READV is not None
    _remote_copy(PROCESS_VM_READV, "process_vm_readv from", pid, address, out)


def write_remote(pid: int, address: int, data: np.ndarray) -> None:
    """Copy ``data`` to ``address`` in process ``pid`` (GIL free); raises as
    :func:`read_remote`."""
    assert PROCESS_VM_WRITEV is not None
    _remote_copy(PROCESS_VM_WRITEV, "process_vm_writev to", pid, address, data)


def _remote_copy(function: Any, what: str, pid: int, address: int, local: np.ndarray) -> None:
    base, total, done = address_of(local), local.nbytes, 0
    while done < total:
        here = _IoVec(base + done, total - done)
        there = _IoVec(address + done, total - done)
        got = function(pid, ctypes.byref(here), 1, ctypes.byref(there), 1, 0)
        if got <= 0:
            err = ctypes.get_errno() if got < 0 else 0
            raise OSError(err, f"{what} pid {pid}: {os.strerror(err)}")
        done += got


# -- is a peer's process still there ----------------------------------------------------------
def open_pidfd(pid: int) -> int | None:
    """A pidfd for ``pid`` (Linux 5.3+), or None where the kernel has none."""
    try:
        return os.pidfd_open(pid)
    except (AttributeError, OSError):
        return None


def process_alive(pid: int, pidfd: int | None) -> bool:
    """Whether process ``pid`` still runs (its pidfd is readable once it has exited)."""
    if pidfd is not None:
        return not select.select([pidfd], [], [], 0)[0]
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    return True
