"""``python -m mssdf.pretrain`` (see :mod:`mssdf.pretrain.cli`)."""

from mssdf.pretrain.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
