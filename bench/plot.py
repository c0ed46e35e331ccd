"""Charts from bench/collectives.py's ``--json`` rows: busbw and time against size.

    python bench/plot.py rows.json [more.json ...] -o docs/img

One PNG per operation found in the rows (``<op>.png``, or ``--prefix`` before it): on the
left busbw, on the right time, both against size on log scales; one line per library
(ringcomm and each peer) and world size, with the memory-copy bound the benchmark measured
drawn as a dashed line per world size. Rows of several runs may share a file (``--json``
appends); the same (library, ranks, size) seen twice keeps the later row.

Needs matplotlib: ``pip install 'ringcomm[bench]'``.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import defaultdict
from pathlib import Path
from typing import Any

Series = dict[tuple[str, int], dict[int, tuple[float, float]]]  # (lib, n) -> size -> (bw, us)
_STYLES = ("-", "--", ":", "-.")


def read_rows(paths: list[Path]) -> list[dict[str, Any]]:
    """Every JSON line of ``paths``, in order."""
    rows = []
    for path in paths:
        for number, line in enumerate(path.read_text().splitlines(), 1):
            if not line.strip():
                continue
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as e:
                raise SystemExit(f"plot.py: {path}:{number}: not a JSON row ({e})") from None
    return rows


def series(rows: list[dict[str, Any]], op: str) -> tuple[Series, dict[int, float]]:
    """The lines of ``op``'s chart, and the memory-copy bound per world size."""
    lines: Series = defaultdict(dict)
    bounds: dict[int, float] = {}
    for row in rows:
        if row["op"] != op:
            continue
        n, size = row["ranks"], row["size"]
        label = f"ringcomm ({row.get('transport', '?')})"
        lines[(label, n)][size] = (row["busbw"], row["time_us"])
        for peer, fig in row.get("peers", {}).items():
            if fig is not None:
                lines[(peer, n)][size] = (fig["busbw"], fig["time_us"])
        if "memcpy_gbs" in row:
            bounds[n] = row["memcpy_gbs"]
    return dict(lines), bounds


def _size_label(nbytes: float, _pos: Any = None) -> str:
    for unit, shift in (("G", 30), ("M", 20), ("K", 10)):
        if nbytes >= 1 << shift:
            return f"{nbytes / (1 << shift):g}{unit}"
    return f"{nbytes:g}"


def draw(op: str, lines: Series, bounds: dict[int, float], out: Path) -> None:
    """Write ``op``'s chart to ``out``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FuncFormatter

    fig, (bw_ax, time_ax) = plt.subplots(1, 2, figsize=(12, 4.5))
    # a colour per library, a line style per world size
    libraries = sorted({label for label, _n in lines}, key=lambda x: (not x.startswith("ring"), x))
    colour = {lib: f"C{i}" for i, lib in enumerate(libraries)}
    world_sizes = sorted({n for _label, n in lines} | set(bounds))
    style = {n: _STYLES[i % len(_STYLES)] for i, n in enumerate(world_sizes)}
    for (label, n), points in sorted(lines.items(), key=lambda kv: (kv[0][1], kv[0][0])):
        sizes = sorted(points)
        look = {"color": colour[label], "linestyle": style[n], "marker": "o", "ms": 3}
        name = f"{label}, n={n}"
        bw_ax.plot(sizes, [points[s][0] for s in sizes], label=name, **look)
        time_ax.plot(sizes, [points[s][1] for s in sizes], label=name, **look)
    for n, gbs in sorted(bounds.items()):
        bw_ax.axhline(
            gbs, color="grey", linestyle=style[n], linewidth=1, label=f"memcpy bound, n={n}"
        )
    for ax, ylabel in ((bw_ax, "busbw (GB/s)"), (time_ax, "time (us)")):
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.xaxis.set_major_formatter(FuncFormatter(_size_label))
        ax.set_xlabel("size (bytes)")
        ax.set_ylabel(ylabel)
        ax.grid(True, which="major", alpha=0.3)
    bw_ax.legend(fontsize=7)
    fig.suptitle(op)
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("json", nargs="+", type=Path, help="files of bench/collectives.py --json")
    parser.add_argument("-o", "--outdir", type=Path, default=Path("."), help="where PNGs go")
    parser.add_argument("--prefix", default="", help="put before each file name")
    args = parser.parse_args(argv)
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        print("plot.py needs matplotlib: pip install 'ringcomm[bench]'", file=sys.stderr)
        return 2
    rows = read_rows(args.json)
    ops = sorted({row["op"] for row in rows})
    if not ops:
        print("plot.py: no rows in " + ", ".join(map(str, args.json)), file=sys.stderr)
        return 1
    args.outdir.mkdir(parents=True, exist_ok=True)
    for op in ops:
        lines, bounds = series(rows, op)
        out = args.outdir / f"{args.prefix}{op}.png"
        draw(op, lines, bounds, out)
        print(f"{out}: {len(lines)} lines, {sum(len(p) for p in lines.values())} points")
    return 0


if __name__ == "__main__":
    sys.exit(main())
