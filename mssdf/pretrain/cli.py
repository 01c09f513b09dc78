"""Command line: ``python -m mssdf.pretrain --config FILE [--section NAME] [--set key=value ...]``.

The whole configuration and the data folder are validated before training starts (and
before a ``torchrun`` process group is joined); a bad parameter or a missing file exits
with status 2 and one ``error:`` line naming the key or path.

Examples::

    python -m mssdf.pretrain --config params.yaml --section pretrain
    python -m mssdf.pretrain --set profile=smoke --set data.kind=synthetic --set out_dir=scratch/pt
    OMP_NUM_THREADS=1 torchrun --standalone --nproc_per_node=2 -m mssdf.pretrain --config run.yaml
"""

from __future__ import annotations

import argparse
import sys

from mssdf.config import ConfigError
from mssdf.data.io import DataError


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="python -m mssdf.pretrain", description="MSSDF pre-training")
    ap.add_argument("--config", "--params", dest="config", help="YAML file (a run config, or params.yaml with --section)")
    ap.add_argument("--section", help="section of the YAML file holding the run config (e.g. pretrain)")
    ap.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE",
                    help="override a key (dotted path, YAML value); repeatable")
    ap.add_argument("--no-live", action="store_true", help="no dvclive logging")
    ap.add_argument("--live-dir", help="dvclive folder (default <out_dir>/live)")
    ap.add_argument("--no-progress", action="store_true", help="no progress bar")
    ap.add_argument("--check", action="store_true", help="validate the config and data, then exit")
    return ap.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    from mssdf.pretrain.config import load_config
    from mssdf.pretrain.data import check_data

    try:
        cfg = load_config(args.config, args.section, args.sets)
        check_data(cfg)
    except (ConfigError, DataError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if args.check:
        print("config and data OK")
        return 0
    from mssdf.pretrain.engine import pretrain

    pretrain(cfg, live=not args.no_live, live_dir=args.live_dir, progress=not args.no_progress)
    return 0


__all__ = ["main", "parse_args"]
