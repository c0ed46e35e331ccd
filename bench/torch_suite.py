"""torch's own distributed test suite (``DistributedTest._DistTestBase``, shipped in the torch
wheel) against the ringcomm backend, with gloo's test list.

The suite gates many tests on the literal backend name "gloo" or on torch's sets of known
backends, decided when the module is imported. This harness imports it as gloo (so the gates
select exactly the tests gloo runs) and then points the suite's ``BACKEND`` at the backend
under test, which ``init_process_group`` and the tests' bodies read at run time.

Run a part of it with pytest (``SUITE_BACKEND`` is ringcomm or gloo, ``WORLD_SIZE`` 2 or 3,
``SUITE_START`` spawn, the default, or fork)::

    SUITE_BACKEND=ringcomm WORLD_SIZE=2 python -m pytest bench/torch_suite.py -k all_reduce

or the whole suite for both backends, printing the comparison::

    python bench/torch_suite.py --world-size 2 [-k EXPR] [--out DIR [--reuse]]
"""

from __future__ import annotations

import os
import sys
import tempfile

if __name__ != "__main__":
    # The suite reads these when it is imported (in pytest and in every spawned rank).
    SUITE_BACKEND = os.environ.setdefault("SUITE_BACKEND", "ringcomm")
    os.environ.setdefault("WORLD_SIZE", "2")
    if "TEMP_DIR" not in os.environ:
        os.environ["TEMP_DIR"] = tempfile.mkdtemp(prefix="torch-suite-")
        for sub in ("barrier", "test_dir", "init_dir"):
            os.makedirs(os.path.join(os.environ["TEMP_DIR"], sub), exist_ok=True)
    os.environ["BACKEND"] = "gloo"  # import-time gates: gloo's test list

    import torch
    import torch.testing._internal.distributed.distributed_test as suite
    from torch.testing._internal.common_distributed import DistTestCases

    import ringcomm.torch  # noqa: F401  (registers the "ringcomm" backend)

    suite.BACKEND = SUITE_BACKEND  # run-time: init_process_group(backend=BACKEND), ...
    for feature in ("gpu", "cuda", "ddp", "subgroup"):
        DistTestCases.backend_feature[feature].add("ringcomm")

    # How each test starts its ranks: "spawn" as torch's test_distributed_spawn.py, or "fork",
    # which spares every rank the import of torch and the suite (about 5 s a test on 2 cores).
    START = os.environ.get("SUITE_START", "spawn")
    if START not in ("spawn", "fork"):
        raise ValueError(f"SUITE_START must be spawn or fork, not {START!r}")

    class TestDistBackendWithSpawn(suite.TestDistBackend, suite.DistributedTest._DistTestBase):
        """torch's ``test_distributed_spawn.py`` harness (ranks forked with SUITE_START=fork)."""

        def setUp(self) -> None:
            super().setUp()
            if START == "spawn":
                self._spawn_processes()
            else:
                self._start_processes(torch.multiprocessing.get_context("fork").Process)
            torch.backends.cudnn.flags(enabled=True, allow_tf32=False).__enter__()


def _run_suite(backend: str, world_size: int, expr: str | None, report: str) -> None:
    import subprocess

    env = dict(os.environ, SUITE_BACKEND=backend, WORLD_SIZE=str(world_size))
    env.pop("TEMP_DIR", None)
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", __file__]
    cmd += [f"--junitxml={report}"] + (["-k", expr] if expr else [])
    subprocess.run(cmd, env=env, check=False)


def _outcomes(report: str) -> dict[str, str]:
    import xml.etree.ElementTree as ET

    out = {}
    for case in ET.parse(report).iter("testcase"):
        kinds = {child.tag for child in case}
        outcome = (
            "failed"
            if kinds & {"failure", "error"}
            else "skipped"
            if "skipped" in kinds
            else "passed"
        )
        out[case.get("name", "?")] = outcome
    return out


def main() -> None:
    import argparse

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--world-size", type=int, default=2)
    p.add_argument("-k", dest="expr", help="pytest -k expression (default: the whole suite)")
    p.add_argument("--backends", default="gloo,ringcomm")
    p.add_argument("--out", default=".", help="folder for the junit reports")
    p.add_argument(
        "--reuse", action="store_true", help="take a backend's report from --out where one is"
    )
    args = p.parse_args()
    results = {}
    for backend in args.backends.split(","):
        report = os.path.join(args.out, f"torch-suite-{backend}-{args.world_size}.xml")
        if not (args.reuse and os.path.exists(report)):
            _run_suite(backend, args.world_size, args.expr, report)
        results[backend] = _outcomes(report)
    names = sorted(set().union(*results.values()))
    print(f"\n# torch distributed suite, WORLD_SIZE={args.world_size}")
    for backend, res in results.items():
        counts = {k: sum(v == k for v in res.values()) for k in ("passed", "failed", "skipped")}
        print(f"{backend:>9}: {counts}")
    if {"gloo", "ringcomm"} <= results.keys():
        gloo, ours = results["gloo"], results["ringcomm"]
        missing = [n for n in names if gloo.get(n) == "passed" and ours.get(n) != "passed"]
        print(f"passed on gloo, not on ringcomm: {len(missing)}")
        for n in missing:
            print(f"  {n}: {ours.get(n, 'absent')}")
        extra = [n for n in names if ours.get(n) == "passed" and gloo.get(n) != "passed"]
        print(f"passed on ringcomm, not on gloo: {len(extra)}")
        for n in extra:
            print(f"  {n}: gloo {gloo.get(n, 'absent')}")


if __name__ == "__main__":
    main()
