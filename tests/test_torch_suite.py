"""torch's own distributed test suite against the ringcomm backend, with gloo's test list
(bench/torch_suite.py), on a fixed subset that covers what the backend serves beyond single
tensors: coalesced operations, gather and scatter, object scatter, batched sends and
receives in any order, receives from any source, sparse all_reduce, group destruction,
a group's timeout. The ranks are forked from the harness (``SUITE_START=fork``): spawned,
each imports torch and the suite again, which took 80 s of the tests' run instead of 30.
(gloo's list skips torch's all-to-all tests; tests/ranks/pytorch.py covers unequal
splits.) The whole suite, both backends side by side: ``python bench/torch_suite.py``."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("torch", reason="torch is an optional extra: pip install 'ringcomm[torch]'")
pytest.importorskip("expecttest", reason="torch's test suite needs expecttest ([test] extra)")

HARNESS = Path(__file__).resolve().parents[1] / "bench" / "torch_suite.py"
SUBSET = [
    "test_all_reduce_coalesced_sum",
    "test_all_reduce_coalesced_max",
    "test_all_gather_coalesced_simple",
    "test_all_gather_coalesced_with_empty",
    "test_gather_checks",
    "test_gather_full_group",
    "test_scatter_checks",
    "test_scatter_full_group",
    "test_scatter_object_list",
    "test_batch_isend_irecv_gloo",
    "test_batch_isend_irecv_gloo_tags",
    "test_destroy_group",
    "test_send_recv_any_source",
    "test_sparse_all_reduce_sum",
    "test_barrier_timeout_full_group",
]


@pytest.mark.slow
def test_torch_suite_subset_passes_on_ringcomm(tmp_path: Path) -> None:
    env = dict(os.environ, SUITE_BACKEND="ringcomm", WORLD_SIZE="2", SUITE_START="fork")
    env.pop("TEMP_DIR", None)
    report = tmp_path / "report.xml"
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--timeout=120"]
    cmd += [f"{HARNESS}::TestDistBackendWithSpawn::{name}" for name in SUBSET]
    cmd += [f"--junitxml={report}"]
    res = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900)
    tail = (res.stdout + res.stderr)[-6000:]
    sys.path.insert(0, str(HARNESS.parent))
    from torch_suite import _outcomes

    outcomes = _outcomes(str(report)) if report.exists() else {}
    ran = {name for name in outcomes if name in SUBSET}
    assert ran == set(SUBSET), f"tests not found in torch's suite: {set(SUBSET) - ran}\n{tail}"
    bad = {name: o for name, o in outcomes.items() if o != "passed"}
    assert not bad and res.returncode == 0, f"{bad}\n{tail}"
