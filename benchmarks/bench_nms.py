"""Benchmark: pure-torch NMS against a brute-force reference, and detection inference speed.

What is measured (figures printed side by side, one run)
--------------------------------------------------------
(a) **NMS on ``--boxes`` boxes** (default 10,000), horizontal and oriented, random boxes in a
    1024 px image with 8 tied score levels and 3 classes:

    * ``ours``: :func:`mssdf.downstream.detection.nms.batched_nms` (block IoU matrix + one greedy
      pass) and :func:`~mssdf.downstream.detection.nms.batched_rotated_nms` (one vectorised
      polygon-IoU pass per kept box);
    * ``brute force``: the textbook loop — boxes by decreasing score, each compared with every
      box kept so far (its IoU row computed on the fly, one box against the kept list), kept if
      no IoU exceeds the threshold — per class.

    Both must return the same indices (checked, printed). Reported: median seconds per call
    and the speed-up.
(b) **Detection inference**, images/s of :func:`mssdf.downstream.engine.detect` (backbone +
    FCOS head + decoding + NMS) on ``--images`` random images: CPU defaults the tiny preset at
    64 px (the sample's tiles), ``--device cuda`` ViT-B at 800 px (DIOR) in bf16.

Run: ``python benchmarks/bench_nms.py [--boxes 10000] [--repeats 3] [--device cpu|cuda] [--json out.json]``.
"""

from __future__ import annotations

import argparse
import math
import os
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))


def parse() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--boxes", type=int, default=10_000)
    ap.add_argument("--iou", type=float, default=0.5)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--images", type=int, default=16)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--json", default="")
    return ap.parse_args()


def main() -> None:
    args = parse()
    os.environ.setdefault("OMP_NUM_THREADS", str(args.threads))
    import torch

    from _common import save_figures, time_cpu
    from mssdf.downstream.detection.boxes import box_iou, obb_to_poly, paired_poly_iou
    from mssdf.downstream.detection.nms import batched_nms, batched_rotated_nms

    torch.set_num_threads(args.threads)
    g = torch.Generator().manual_seed(0)
    n = args.boxes
    xy = torch.rand(n, 2, generator=g) * 1024
    wh = 8 + torch.rand(n, 2, generator=g) * 56
    hbb = torch.cat([xy, xy + wh], 1)
    obb = torch.cat([xy + wh / 2, wh, (torch.rand(n, 1, generator=g) - 0.5) * math.pi], 1)
    polys = obb_to_poly(obb)
    scores = (torch.rand(n, generator=g) * 8).floor() / 8
    labels = torch.randint(0, 3, (n,), generator=g)

    def brute(iou_row, items):
        keep = []
        order = sorted(range(n), key=lambda i: (-float(scores[i]), i))
        kept_by_class: dict[int, list[int]] = {}
        for i in order:
            same = kept_by_class.setdefault(int(labels[i]), [])
            if not same or float(iou_row(i, same).max()) <= args.iou:
                same.append(i)
                keep.append(i)
        return keep

    hbb_row = lambda i, kept: box_iou(hbb[i : i + 1], hbb[kept])[0]  # noqa: E731
    obb_row = lambda i, kept: paired_poly_iou(polys[i].expand(len(kept), 4, 2), polys[kept])  # noqa: E731
    out: dict = {"boxes": n, "iou": args.iou, "threads": args.threads}
    print(f"NMS on {n} random boxes (3 classes, 8 tied score levels), IoU > {args.iou} suppresses, {args.threads} thread(s)")
    for name, ours, ref in (("horizontal", lambda: batched_nms(hbb, scores, labels, args.iou), lambda: brute(hbb_row, hbb)),
                            ("oriented", lambda: batched_rotated_nms(polys, scores, labels, args.iou), lambda: brute(obb_row, polys))):
        t_ours = time_cpu(ours, args.repeats, 1)
        t0 = time.perf_counter()
        reference = ref()
        t_ref = time.perf_counter() - t0
        same = ours().tolist() == reference
        med = statistics.median(t_ours)
        print(f"  {name:10s}: ours {med:.3f} s, brute force {t_ref:.3f} s (once), speed-up {t_ref / med:.1f}x; "
              f"{len(reference)} kept; identical: {same}")
        out[name] = {"ours_s": med, "brute_force_s": t_ref, "speedup": t_ref / med, "kept": len(reference), "identical": same}

    from mssdf.downstream.config import build_finetune_config
    from mssdf.downstream.engine import build_model, detect

    cuda = args.device == "cuda"
    run = {"task": "detection", "profile": "paper" if cuda else "smoke", "device": args.device,
           "backbone": {"modalities": ["rgb"]}, "data": {"kind": "sample", "task": "detection"}}
    if not cuda:
        run["backbone"]["arch"] = {"preset": "tiny", "img_size": 64, "patch_size": 8}
    cfg = build_finetune_config(run)
    size = 800 if cuda else 64
    model = build_model(cfg, 20 if cuda else 1).eval().to(args.device)
    images = {"rgb": torch.randn(args.images, 3, size, size, device=args.device)}
    dtype = torch.bfloat16 if cuda else None

    def infer():
        for start in range(0, args.images, 8):
            detect(model, {"rgb": images["rgb"][start : start + 8]}, cfg, dtype)
        if cuda:
            torch.cuda.synchronize()

    t = statistics.median(time_cpu(infer, args.repeats, 1))
    print(f"detection inference ({args.device}, {'ViT-B 800 px bf16' if cuda else 'tiny 64 px fp32'}, batch 8): "
          f"{args.images / t:.1f} images/s")
    out["inference"] = {"device": args.device, "size": size, "images_per_s": args.images / t}
    save_figures(out, args.json)


if __name__ == "__main__":
    main()
