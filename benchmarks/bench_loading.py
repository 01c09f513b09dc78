"""Loading speed of the prepared sample: GeoTIFF tiles vs the memory-mapped .npy cache.

Prints pairs/s for ONE worker (num_workers=0, one process) on a pre-training task
(``pretrain_rotterdam``: pan + 4-band MS pairs). Two window sizes, honestly labelled:

* the tile size (64 px): whole tiles through :class:`mssdf.data.sample.SampleTiles`
  with ``backend="tif"`` and ``backend="npy"``;
* 320 px windows cut at random from the 600 x 600 px Rotterdam scenes: rasterio
  windowed reads of the scene GeoTIFFs vs slices of a scene .npy built once (memory-mapped).

Usage: python benchmarks/bench_loading.py [--root data/prepared] [--seconds 2]
(if ``root`` has no index, a fresh preparation is written to scratch/bench_prepare first).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repo, when not installed


def _rate(fn, seconds: float) -> float:
    """Calls of ``fn`` per second over about ``seconds`` (after one warm-up call)."""
    fn()
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        fn()
        n += 1
    return n / (time.perf_counter() - t0)


def main(argv: list[str] | None = None) -> int:
    from mssdf.data.io import read_raster
    from mssdf.data.prepare import PrepareConfig, prepare
    from mssdf.data.sample import SampleTiles
    from mssdf.data.sources import SourceSettings
    from mssdf.paths import resolve

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--root", default="data/prepared")
    ap.add_argument("--seconds", type=float, default=2.0)
    args = ap.parse_args(argv)
    root = resolve(args.root)
    if not (root / "index.csv").is_file():
        root = resolve("scratch/bench_prepare")
        print(f"no prepared data at {args.root}; preparing Rotterdam into {root} ...")
        prepare(PrepareConfig(out_dir=str(root), sources={"rotterdam": SourceSettings()}), log=None)

    task = "pretrain_rotterdam"
    rows = []
    for backend in ("tif", "npy"):
        ds = SampleTiles(root, task, "train", backend=backend)
        i = iter(range(10**9))
        rate = _rate(lambda: ds[next(i) % len(ds)], args.seconds)
        rows.append((f"{ds[0]['pan'].shape[-1]} px tiles (pan+MS)", backend, rate))

    # 320 px windows from whole scenes
    rng = np.random.default_rng(0)
    scenes = sorted((root / "scenes" / "rotterdam").iterdir())
    size = 320
    from rasterio.windows import Window

    def read_tif() -> None:
        sc = scenes[rng.integers(len(scenes))]
        r, c = (int(v) for v in rng.integers(0, 600 - size + 1, 2))
        w = Window(c, r, size, size)
        read_raster(sc / "pan.tif", window=w)
        read_raster(sc / "ms.tif", window=w)

    with tempfile.TemporaryDirectory() as tmp:
        mm = []
        for sc in scenes:  # the one-off cache: one .npy per scene and modality
            for key in ("pan", "ms"):
                np.save(Path(tmp) / f"{sc.name}_{key}.npy", read_raster(sc / f"{key}.tif"))
            mm.append({k: np.load(Path(tmp) / f"{sc.name}_{k}.npy", mmap_mode="r") for k in ("pan", "ms")})

        def read_npy() -> None:
            s = mm[rng.integers(len(mm))]
            r, c = (int(v) for v in rng.integers(0, 600 - size + 1, 2))
            np.array(s["pan"][:, r : r + size, c : c + size])
            np.array(s["ms"][:, r : r + size, c : c + size])

        rows.append((f"{size} px windows from scenes (pan+MS)", "tif", _rate(read_tif, args.seconds)))
        rows.append((f"{size} px windows from scenes (pan+MS)", "npy", _rate(read_npy, args.seconds)))

    print(f"prepared data: {root}")
    print(f"{'what':42s} {'GeoTIFF pairs/s':>16s} {'npy memmap pairs/s':>19s} {'speed-up':>9s}   (1 worker)")
    for what in dict.fromkeys(r[0] for r in rows):
        tif = next(r[2] for r in rows if r[0] == what and r[1] == "tif")
        npy = next(r[2] for r in rows if r[0] == what and r[1] == "npy")
        print(f"{what:42s} {tif:16.0f} {npy:19.0f} {npy / tif:8.1f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
