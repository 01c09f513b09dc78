"""``python -m mssdf.train`` (see :mod:`mssdf.train.cli`)."""

from mssdf.train.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
