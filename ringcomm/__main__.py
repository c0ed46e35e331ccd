"""``python -m ringcomm COMMAND``: tools that come with the package.

- ``configuration``: print ``docs/configuration.md``, the table of every setting, generated
  from the declarations in :mod:`ringcomm.config`.
- ``info [-n N]``: what ringcomm finds on this host (see :mod:`ringcomm.info`).
"""

from __future__ import annotations

import argparse

from ringcomm import config


def main(argv: list[str] | None = None) -> int:
    """Run one command; return the exit status."""
    parser = argparse.ArgumentParser(prog="python -m ringcomm", description=__doc__.split("\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("configuration", help="print docs/configuration.md (every setting)")
    info_parser = commands.add_parser("info", help="what ringcomm finds on this host")
    info_parser.add_argument("-n", "--nprocs", type=int, default=0, help="check N local ranks")
    args = parser.parse_args(argv)
    if args.command == "info":
        from ringcomm import info

        return info.main(["-n", str(args.nprocs)])
    print(config.markdown(), end="")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
