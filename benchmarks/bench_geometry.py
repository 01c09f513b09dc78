"""Tile and patch size of the CPU default, by measurement: step time per modality set and
(``--probe``) the frozen-feature health check after the same number of epochs.

    python benchmarks/bench_geometry.py                       # step times, 64 px with patch 16 and 8
    python benchmarks/bench_geometry.py --probe --epochs 10   # + pre-train each geometry, probe it
    python benchmarks/bench_geometry.py --patches 16 8 4 --out scratch/bench/geometry.json

Reads the ``pretrain`` section of params.yaml (the mixture over every source) and the
prepared sample (``dvc repro prepare`` first), overrides ``model.patch_size`` (and
``model.img_size``/``data.crop`` with ``--size``), and for each geometry:

* times ``--repeats`` optimisation steps of every batch group (after ``--warmup`` untimed
  ones) on this machine's threads, all geometries in one run so they compare side by side;
* with ``--probe``: pre-trains ``--epochs`` epochs into ``scratch/bench_geometry/<geometry>``
  and runs :func:`mssdf.reports.health.health_check` for the result and random
  initialisation on every labelled task (the seeds of ``params.yaml``'s ``pretrain_probe``).

Prints one table per measurement; ``--out`` writes the figures as JSON.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import save_figures, time_cpu  # noqa: E402

from mssdf.config import deep_merge, yaml_load  # noqa: E402
from mssdf.engine.distributed import init_distributed  # noqa: E402
from mssdf.pretrain import build_config  # noqa: E402
from mssdf.pretrain.engine import pretrain_step, setup  # noqa: E402


def geometry_config(section: dict, size: int, patch: int, out_dir: str, **extra) -> "object":
    """The params.yaml run with ``size`` px images cut in ``patch`` px patches."""
    over = {"model": {"img_size": size, "patch_size": patch}, "data": {"crop": size}, "out_dir": out_dir, **extra}
    comps = section.get("data", {}).get("components", {})
    over["data"]["components"] = {n: {"crop": min(c.get("crop") or size, size)} for n, c in comps.items()}
    return build_config(deep_merge(section, over), "pretrain")


def time_groups(cfg, repeats: int, warmup: int) -> dict[str, dict[str, float]]:
    """Median seconds per step and images/s of each batch group."""
    run = setup(cfg, init_distributed("cpu"), Path(cfg.out_dir))
    step = pretrain_step(run)
    batches: dict[str, dict] = {}
    run.sampler.set_position(0, 0)
    for batch in run.loader:
        name = f"{'+'.join(batch)}@{next(iter(batch.values())).shape[-1]}"
        batches.setdefault(name, batch)
        if len(batches) == len(run.dataset.groups):
            break
    out = {}
    for name, batch in batches.items():
        k = iter(range(10**6))
        secs = time_cpu(lambda: step(batch, next(k) + run.warmup_steps), repeats, warmup)  # past warm-up: lr > 0
        med = statistics.median(secs)
        out[name] = {"s_per_step": med, "images_per_s": cfg.batch_size / med,
                     "tokens_per_image": (int(name.rsplit("@", 1)[1]) // cfg.model_config().patch_size) ** 2}
    per_epoch = {g.name: n for g, n in zip(run.dataset.groups, run.sampler.batches_per_group)}
    out["epoch_s"] = {"s": sum(out[g]["s_per_step"] * n for g, n in per_epoch.items() if g in out),
                      "steps": run.sampler.batches_per_epoch}
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--patches", type=int, nargs="+", default=[16, 8])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--probe", action="store_true", help="pre-train each geometry and run the health check")
    ap.add_argument("--epochs", type=int, default=10)
    ap.add_argument("--out", default="")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    params = yaml_load(Path(args.params).read_text())
    section = params["pretrain"]
    figures: dict = {"size": args.size, "threads": args.threads, "speed": {}, "probe": {}}
    print(f"{args.size} px images, {args.threads} threads, batch {section.get('batch_size')}; median of {args.repeats} steps")
    for patch in args.patches:
        name = f"{args.size}px/p{patch}"
        cfg = geometry_config(section, args.size, patch, f"scratch/bench_geometry/{args.size}_{patch}")
        figures["speed"][name] = res = time_groups(cfg, args.repeats, args.warmup)
        print(f"\n{name}: one epoch = {res['epoch_s']['steps']} steps ≈ {res['epoch_s']['s']:.1f} s")
        for g, r in res.items():
            if g != "epoch_s":
                print(f"  {g:16s} {r['tokens_per_image']:4d} tokens/img  {1e3 * r['s_per_step']:7.1f} ms/step  {r['images_per_s']:6.1f} img/s")
    if args.probe:
        from mssdf.config import from_dict
        from mssdf.pretrain import pretrain
        from mssdf.reports.health import ProbeStageConfig, health_check, summarise, with_random_init
        from mssdf.weights.native import load_pretrained

        hcfg = from_dict(ProbeStageConfig, params.get("pretrain_probe", {}), "pretrain_probe").health
        for patch in args.patches:
            name = f"{args.size}px/p{patch}"
            out_dir = f"scratch/bench_geometry/{args.size}_{patch}"
            cfg = geometry_config(section, args.size, patch, out_dir, epochs=args.epochs)
            t0 = time.perf_counter()
            pretrain(cfg, live=False, progress=False, log=None)
            train_s = time.perf_counter() - t0
            encoder = load_pretrained(Path(out_dir) / "final").encoder.eval()
            rows = health_check(with_random_init({"pretrained": encoder}), cfg.data.root, hcfg)
            table = summarise(rows)
            print(f"\n{name}: pre-trained {args.epochs} epochs in {train_s:.0f} s\n{table['mean ± std'].to_string()}")
            figures["probe"][name] = {"train_s": train_s, "epochs": args.epochs,
                                      "rows": [{k: (v if not isinstance(v, float) else round(v, 6)) for k, v in r.items()} for r in rows]}
    save_figures(figures, args.out)


if __name__ == "__main__":
    main()
