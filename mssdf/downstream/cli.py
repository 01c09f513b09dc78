"""Command line: ``python -m mssdf.downstream --config FILE [--section NAME] [--set key=value ...]``.

Runs one fine-tuning run (:class:`~mssdf.downstream.config.FinetuneConfig`: one
initialisation, one dataset, one seed); the studies (initialisation × seed × dataset) are
the notebooks'. The configuration is validated before anything is read, and a missing file
or bad sample (labels out of range, NaN inputs) exits with status 2 and one ``error:`` line
naming the key or file, before training starts.

Examples::

    python -m mssdf.downstream --set profile=smoke --set data.task=seg_roads --set backbone.modalities=[pan]
    OMP_NUM_THREADS=1 torchrun --standalone --nproc_per_node=2 -m mssdf.downstream --config run.yaml --section finetune
"""

from __future__ import annotations

import argparse
import sys
from mssdf.config import ConfigError, load_mapping
from mssdf.data.io import DataError


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="python -m mssdf.downstream", description="fine-tune a backbone on a downstream task")
    ap.add_argument("--config", "--params", dest="config", help="YAML file (a run config, or a file with --section)")
    ap.add_argument("--section", help="section of the YAML file holding the run config")
    ap.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE",
                    help="override a key (dotted path, YAML value); repeatable")
    ap.add_argument("--live", action="store_true", help="log metrics with dvclive to <out_dir>/live")
    ap.add_argument("--no-progress", action="store_true", help="no progress bar")
    return ap.parse_args(argv)


def load_run(path: str | None, section: str | None, sets: list[str]) -> "object":
    """The validated run config of a YAML file (or one of its sections) with ``key=value`` overrides."""
    from mssdf.downstream.config import build_finetune_config

    return build_finetune_config(load_mapping(path, section, sets), section or "")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        cfg = load_run(args.config, args.section, args.sets)
        from mssdf.downstream.engine import finetune

        finetune(cfg, live=args.live, progress=not args.no_progress, log=print)
    except (ConfigError, DataError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


__all__ = ["main", "parse_args", "load_run"]
