"""Names of shared-memory segments under /dev/shm: what the shared-memory transport creates
and what ``ringcomm-run`` removes after its job (kept apart so the launcher does not import
numpy or numba)."""

from __future__ import annotations

import contextlib
import os

SHM_DIR = "/dev/shm"
NAME_PREFIX = "ringcomm-"


def job_id() -> str:
    """The launcher's job id (``RINGCOMM_JOB_ID``) that prefixes this job's segment names."""
    raw = os.environ.get("RINGCOMM_JOB_ID", "")
    return "".join(c for c in raw if c.isalnum())[:32] or "0"


def segment_path(job: str, comm_id: int, rank: int) -> str:
    """Where rank ``rank`` of communicator ``comm_id`` keeps its inboxes."""
    return os.path.join(SHM_DIR, f"{NAME_PREFIX}{job}-{comm_id:016x}-{rank}")


def remove_job_segments(job: str) -> list[str]:
    """Unlink every segment name of ``job`` still in /dev/shm; return the names removed."""
    removed = []
    prefix = f"{NAME_PREFIX}{job}-"
    with contextlib.suppress(OSError):
        for name in sorted(os.listdir(SHM_DIR)):
            if name.startswith(prefix):
                with contextlib.suppress(OSError):
                    os.unlink(os.path.join(SHM_DIR, name))
                    removed.append(name)
    return removed
