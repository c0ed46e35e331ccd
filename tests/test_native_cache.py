"""numba's on-disk cache under many processes (native/cache.py): a process never runs a
data file that another process has named in the index but not yet written."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("numba")

# The writer saves the index, says so through a file, and writes the data file only seconds
# later: numba's order, slowed down.
WRITER = """
import time
from numba.core import caching
write_data = caching.IndexDataCacheFile._save_data
def slow(self, name, data):
    open("index-saved", "w").close()
    time.sleep(3)
    write_data(self, name, data)
caching.IndexDataCacheFile._save_data = slow
import cached_module
print(cached_module.f(0))
"""
# The reader loads the function the moment the index names it.
READER = """
import os, time
import cached_module
deadline = time.monotonic() + 120
while not os.path.exists("index-saved"):
    assert time.monotonic() < deadline, "the writer never saved its index"
    time.sleep(0.001)
print(cached_module.f(0))
"""


def _source(value: int) -> str:
    head = "from ringcomm.native.cache import cached\n\n@cached()\n"
    return head + f"def f(x):\n    return x + {value}\n"


def test_a_reader_waits_for_the_data_file_the_index_names(tmp_path: Path) -> None:
    """The source changed since the cache was written, so numba numbers the new data file 1
    again, over the old one: a reader that loaded it between the writer's index and data
    ran the old code (returned 1, not 22)."""
    env = dict(os.environ, PYTHONPATH=str(tmp_path), NUMBA_CACHE_DIR=str(tmp_path / "cache"))

    def run(code: str) -> subprocess.Popen[str]:
        return subprocess.Popen(
            [sys.executable, "-c", code], cwd=tmp_path, env=env, text=True,
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        )  # fmt: skip

    module = tmp_path / "cached_module.py"
    module.write_text(_source(1))
    old = run("import cached_module; print(cached_module.f(0))")
    assert old.communicate(timeout=120)[0].strip().endswith("1")
    module.write_text(_source(22))
    reader = run(READER)
    writer = run(WRITER)
    outs = {}
    for name, proc in (("writer", writer), ("reader", reader)):
        try:
            outs[name] = proc.communicate(timeout=120)[0]
        except subprocess.TimeoutExpired:
            writer.kill()
            reader.kill()
            pytest.fail(f"the {name} hung")
        assert proc.returncode == 0, f"{name}: {outs[name]}"
    assert outs["writer"].split()[-1] == "22", outs["writer"]
    assert outs["reader"].split()[-1] == "22", f"the reader ran the old code: {outs['reader']}"
