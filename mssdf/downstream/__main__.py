"""``python -m mssdf.downstream`` (see :mod:`mssdf.downstream.cli`)."""

from mssdf.downstream.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
