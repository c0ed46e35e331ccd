"""``python -m ringcomm COMMAND``: tools that come with the package.

- ``configuration``: print ``docs/configuration.md``, the table of every setting, generated
  from the declarations in :mod:`ringcomm.config`.
"""

from __future__ import annotations

import argparse

from ringcomm import config


def main(argv: list[str] | None = None) -> int:
    """Run one command; return the exit status."""
    parser = argparse.ArgumentParser(prog="python -m ringcomm", description=__doc__.split("\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("configuration", help="print docs/configuration.md (every setting)")
    args = parser.parse_args(argv)
    if args.command == "configuration":
        print(config.markdown(), end="")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
