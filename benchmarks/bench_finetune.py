"""Benchmark: one downstream fine-tuning step per task, and sliding-window inference on a tile.

What is measured (figures printed side by side, one run)
--------------------------------------------------------
(a) **Fine-tuning step**, per task, on a fixed synthetic batch (no data loading): forward of
    the model, :func:`mssdf.downstream.engine.task_loss`, backward and the AdamW step over the
    engine's layer-decay groups (:func:`mssdf.engine.optim.layer_decay_groups`, decay 0.65) and
    the schedule step (:func:`mssdf.engine.loop.optimizer_step`) — what
    :func:`mssdf.downstream.engine.finetune_step` runs per batch:

    * ``segmentation``: UPerNet + auxiliary FCN head (6 classes, aux weight 0.4,
      :func:`mssdf.downstream.heads.build_segmentation_model`), cross-entropy;
    * ``height``: the height decoder (:func:`mssdf.downstream.heads.build_height_model`),
      L1 over finite pixels (10 % of the target set to NaN, as no-data).

    Reported: median s/step and images/s = batch / median.
(b) **Sliding-window inference** of the segmentation model on one ``--tile`` x ``--tile``
    RGB tile through :func:`mssdf.downstream.engine.predict` (what evaluation runs:
    ``--window`` windows overlapping by ``--overlap``, ``--infer-batch`` windows per
    forward, averaged logits accumulated on the CPU). Reported: median s/tile and
    megapixels/s = tile area / median. The model for (b) is built at ``img_size = window``
    (a model fine-tuned on crops of the window's size, as in the paper: 512 / 512).

Defaults: CPU → the ``tiny`` preset, 64 px crops, patch 8, batch 8, fp32, head channels 32,
window 64; CUDA (``--device cuda``) → ViT-B (``base``), 512 px, patch 16, batch 8, bf16
autocast, head channels 512 (the paper profile), window 512.

Memory
------
Each case (segmentation step, height step, inference) runs in its own child process
(``--no-isolate``: all in this one), so that peaks are per case:
:func:`mssdf.engine.tracking.memory_mb` — the process's max RSS on the CPU (a high-water
mark, reported with the baseline after imports and the model build), CUDA
``max_memory_allocated`` on the GPU (reset after the warm-up; the resident part, weights and
optimiser state, is printed beside it).

Timing: ``--warmup`` untimed calls then ``--repeats`` timed ones; ``time.perf_counter`` on the
CPU, CUDA events on the GPU (each call synchronised). Run:
``python benchmarks/bench_finetune.py [--device cpu] [--repeats 3] [--out figures.json]``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repo, when not installed
sys.path.insert(0, str(Path(__file__).resolve().parent))  # _common

import torch  # noqa: E402

from _common import save_figures, time_cpu, time_cuda  # noqa: E402

CASES = ("segmentation_step", "height_step", "segmentation_inference")
NUM_CLASSES = 6  # Potsdam / Vaihingen with clutter
MARK = "BENCH_FINETUNE_JSON "


def _defaults(args: argparse.Namespace, cuda: bool) -> dict[str, Any]:
    base = cuda if args.preset is None else args.preset == "base"
    preset = args.preset or ("base" if cuda else "tiny")
    return {
        "preset": preset,
        "img_size": args.img_size or (512 if base else 64),
        "patch_size": args.patch_size or (16 if base else 8),
        "head_channels": args.head_channels or (512 if base else 32),
        "window": args.window or (512 if base else 64),
        "precision": {"auto": "bf16" if cuda else "fp32"}.get(args.precision, args.precision),
    }


def _config(task: str, window: int | None = None, overlap: float = 0.33, infer_batch: int = 16) -> Any:
    from mssdf.downstream.config import DataConfig, FinetuneConfig

    data = DataConfig(kind="reader", reader="bench", eval_window=window, eval_overlap=overlap)
    return FinetuneConfig(task=task, data=data, aux_weight=0.4, height_loss="l1", eval_batch_size=infer_batch)


def _model(task: str, d: dict[str, Any], img_size: int, device: torch.device) -> torch.nn.Module:
    from mssdf.downstream.backbone import BackboneConfig, build_backbone
    from mssdf.downstream.heads import build_height_model, build_segmentation_model

    torch.manual_seed(0)
    arch = {"preset": d["preset"], "img_size": img_size, "patch_size": d["patch_size"]}
    backbone = build_backbone(BackboneConfig(init="random", modalities=("rgb",), arch=arch))
    if task == "segmentation":
        model = build_segmentation_model(backbone, NUM_CLASSES, aux=True, channels=d["head_channels"])
    else:
        model = build_height_model(backbone, channels=d["head_channels"])
    return model.to(device)


def _timer(device: torch.device):
    return time_cuda if device.type == "cuda" else time_cpu


def run_case(case: str, args: argparse.Namespace) -> dict[str, Any]:
    """One case in this process; returns its figures."""
    from mssdf.downstream.engine import _layer_id, predict, task_loss
    from mssdf.engine.loop import TrainState, amp_dtype, autocast, optimizer_step
    from mssdf.engine.optim import build_scaled_scheduler, layer_decay_groups
    from mssdf.engine.tracking import memory_mb

    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    cuda = device.type == "cuda"
    d = _defaults(args, cuda)
    dtype = amp_dtype(d["precision"], device)
    context = autocast(dtype, device)
    mem_start = memory_mb(device)
    g = torch.Generator().manual_seed(0)
    out: dict[str, Any] = {"case": case}

    if case.endswith("_step"):
        task = case[: -len("_step")]
        cfg = _config(task)
        model = _model(task, d, d["img_size"], device).train()
        b, s = args.batch, d["img_size"]
        images = {"rgb": torch.randn(b, 3, s, s, generator=g).to(device)}
        if task == "segmentation":
            target = torch.randint(0, NUM_CLASSES, (b, s, s), generator=g)
            target[:, ::7] = 255  # some ignored pixels (boundaries)
        else:
            target = torch.rand(b, s, s, generator=g) * 30.0
            target[torch.rand(b, s, s, generator=g) < 0.1] = float("nan")  # no data
        target = target.to(device)
        depth = model.backbone.encoder.cfg.depth
        groups = layer_decay_groups(model, weight_decay=0.01, layer_decay=0.65, num_layers=depth + 1,
                                    layer_id=_layer_id(model))  # fmt: skip
        opt = torch.optim.AdamW(groups, lr=6e-5, betas=(0.9, 0.999))
        sched = build_scaled_scheduler(opt, peak_lr=6e-5, warmup_steps=0, total_steps=10**6, schedule="poly")
        scaler = torch.amp.GradScaler("cuda") if dtype == torch.float16 else None
        state = TrainState(model, opt, sched, scaler)
        params = [p for p in model.parameters() if p.requires_grad]

        def step() -> None:
            with context():
                o = model(images)
            loss, _ = task_loss(o, target, cfg)
            optimizer_step(state, loss, params)

        calls, unit = step, b
    else:
        cfg = _config("segmentation", d["window"], args.overlap, args.infer_batch)
        model = _model("segmentation", d, d["window"], device).eval()
        tile = {"rgb": torch.randn(1, 3, args.tile, args.tile, generator=g)}  # on the CPU, as evaluation reads it

        def infer() -> None:
            predict(model, tile, cfg, NUM_CLASSES, dtype)

        from mssdf.downstream.inference import overlap_pixels, window_grid

        ov = overlap_pixels(d["window"], args.overlap)
        out["windows"] = len(window_grid(args.tile, args.tile, d["window"], d["window"] - ov))
        calls, unit = infer, args.tile * args.tile / 1e6

    out["params_m"] = sum(p.numel() for p in model.parameters()) / 1e6
    out["mem_after_build_mb"] = memory_mb(device)
    for _ in range(args.warmup):
        calls()
    if cuda:
        torch.cuda.synchronize(device)
        out["resident_mb"] = torch.cuda.memory_allocated(device) / 2**20
        torch.cuda.reset_peak_memory_stats(device)
    times = _timer(device)(calls, args.repeats, 0)
    med = statistics.median(times)
    out.update({"seconds": times, "median_s": med, "rate": unit / med,
                "rate_unit": "images/s" if case.endswith("_step") else "MP/s",
                "peak_mb": memory_mb(device), "mem_start_mb": mem_start})  # fmt: skip
    return out


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default=None, help="cpu or cuda (default: cuda if available, else cpu)")
    p.add_argument("--preset", default=None, help="encoder preset (default: tiny on CPU, base on CUDA)")
    p.add_argument("--img-size", type=int, default=None, help="training crop side (default 64 tiny / 512 base)")
    p.add_argument("--patch-size", type=int, default=None, help="default 8 tiny / 16 base")
    p.add_argument("--head-channels", type=int, default=None, help="default 32 tiny / 512 base (the paper profile)")
    p.add_argument("--batch", type=int, default=8, help="images per fine-tuning step (default 8)")
    p.add_argument("--precision", choices=["auto", "fp32", "bf16"], default="auto", help="auto: bf16 on CUDA, fp32 on CPU")
    p.add_argument("--tile", type=int, default=2048, help="inference tile side (default 2048)")
    p.add_argument("--window", type=int, default=None, help="sliding window side (default 64 tiny / 512 base; 128 also sensible for tiny)")
    p.add_argument("--overlap", type=float, default=0.33, help="window overlap fraction (default 0.33, the paper profile)")
    p.add_argument("--infer-batch", type=int, default=16, help="windows per forward at inference (default 16)")
    p.add_argument("--repeats", type=int, default=5, help="timed calls per case (default 5)")
    p.add_argument("--warmup", type=int, default=2, help="untimed calls first (default 2)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    p.add_argument("--cases", default=",".join(CASES), help=f"comma-separated subset of {', '.join(CASES)}")
    p.add_argument("--no-isolate", action="store_true", help="run every case in this process (CPU peaks then accumulate)")
    p.add_argument("--out", metavar="JSON", help="write all figures to this JSON file")
    p.add_argument("--case", help=argparse.SUPPRESS)  # child mode: run one case, print its JSON
    return p


def _child(case: str, argv: list[str]) -> dict[str, Any]:
    cmd = [sys.executable, str(Path(__file__).resolve()), *argv, "--case", case]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"{case} failed ({proc.returncode}):\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}")
    line = next(x for x in proc.stdout.splitlines() if x.startswith(MARK))
    return json.loads(line[len(MARK):])


def main(argv: list[str] | None = None) -> dict[str, Any]:
    argv = sys.argv[1:] if argv is None else argv
    args = build_parser().parse_args(argv)
    args.device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    if args.case:  # child
        print(MARK + json.dumps(run_case(args.case, args)), flush=True)
        return {}
    cases = [c.strip() for c in args.cases.split(",") if c.strip()]
    unknown = sorted(set(cases) - set(CASES))
    if unknown:
        raise SystemExit(f"--cases: unknown {unknown}; choose from {list(CASES)}")
    device = torch.device(args.device)
    cuda = device.type == "cuda"
    d = _defaults(args, cuda)
    child_argv = [a for a in argv if a != "--no-isolate"] + ["--device", args.device]
    results = {c: (run_case(c, args) if args.no_isolate else _child(c, child_argv)) for c in cases}

    threads = args.threads or torch.get_num_threads()
    name = torch.cuda.get_device_name(device) if cuda else f"CPU ({os.cpu_count()} cores, {threads} torch threads)"
    print(f"Downstream fine-tuning benchmark: preset {d['preset']}, patch {d['patch_size']}, head channels "
          f"{d['head_channels']}, {d['precision']}, on {name}; torch {torch.__version__}; {args.warmup} warm-up + "
          f"{args.repeats} timed calls per case; load average {os.getloadavg()[0]:.2f}")
    mem_kind = "CUDA max allocated" if cuda else "process max RSS"
    print(f"memory: {mem_kind} (MiB){'' if args.no_isolate else ', one process per case'}\n")
    header = f"{'case':<24} {'setting':<50} {'params':>8} {'median':>10} {'rate':>14} {'peak mem':>10} {'base mem':>10}"
    print(header)
    print("-" * len(header))
    for c, r in results.items():
        if c.endswith("_step"):
            setting = f"{d['img_size']} px, batch {args.batch}"
            rate = f"{r['rate']:.1f} img/s"
        else:
            setting = f"{args.tile}² tile, win {d['window']}, ov {args.overlap}, {r['windows']} win, b{args.infer_batch}"
            rate = f"{r['rate']:.3f} MP/s"
        base = r.get("resident_mb", r["mem_after_build_mb"])  # CUDA: resident between calls; CPU: RSS after the build
        print(f"{c:<24} {setting:<50} {r['params_m']:>7.2f}M {r['median_s'] * 1e3:>8.1f}ms {rate:>14} "
              f"{r['peak_mb']:>10.0f} {base:>10.0f}")
    print("\nbase mem: CPU = max RSS after imports + model build; CUDA = allocated between calls (weights, optimiser state)")
    figures = {"config": {**d, "device": args.device, "device_name": name, "batch": args.batch, "tile": args.tile,
                          "overlap": args.overlap, "infer_batch": args.infer_batch, "repeats": args.repeats,
                          "warmup": args.warmup, "threads": threads, "torch": torch.__version__,
                          "loadavg": os.getloadavg()[0], "isolated": not args.no_isolate, "memory": mem_kind},
               "results": results}  # fmt: skip
    save_figures(figures, args.out)
    return figures


if __name__ == "__main__":
    main()
