"""``python -m msifusion``: the ``msifusion`` command."""

from msifusion.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
