"""Benchmark: one MSSDF pre-training step per preset — images/s, peak memory, FLOPs, MFU.

What one step is
----------------
Exactly what a pre-training loop does per batch, on a fixed synthetic two-modality batch
(``rgb`` uint8 0-255 and ``dsm`` float32 metres; the same realistic generator as
``bench_masking.py``), no data loading:

1. information-aware + cross-modal masks (:func:`mssdf.masking.generate_masks`, training
   defaults, on the model's device);
2. forward of :class:`mssdf.model.MSSDF` (student on visible tokens, fusion and
   reconstruction decoders, modality head, EMA teacher on the full images);
3. :func:`mssdf.losses.mssdf_loss` (all four terms, default weights);
4. :func:`mssdf.engine.loop.optimizer_step`: backward, the AdamW step over the
   training's parameter groups (:func:`mssdf.engine.optim.build_optimizer`: betas
   0.9/0.95, wd 0.05, no decay on norms/biases/tokens) and the schedule step — what
   :func:`mssdf.pretrain.engine.pretrain_step` runs; 5. :func:`mssdf.model.ema_update` of
   the teacher (momentum 0.996).

``--warmup`` untimed steps (allocator, caches, autotuning), then ``--steps`` timed steps;
per step wall time with ``time.perf_counter`` on the CPU, CUDA events on the GPU (each
step synchronised). Reported: median s/step and images/s = batch / median (an "image" is
one two-modality sample).

Memory
------
* CPU: ``resource.getrusage(RUSAGE_SELF).ru_maxrss`` (the process's peak resident set,
  a high-water mark) read after imports and the input batch (baseline), after building
  the model and optimiser, and after all steps. "peak delta" = final − baseline: model,
  teacher, AdamW state, gradients, and the peak of one step's activations and
  temporaries (plus allocator slack). It is RSS, not allocator bytes: it can only grow
  and includes pages the allocator has freed but kept. The analytic static part
  (fp32 parameters + gradients + 2 AdamW moments + teacher) is printed beside it.
* CUDA: ``torch.cuda.max_memory_allocated`` over the timed steps (peak allocated by
  tensors, after ``reset_peak_memory_stats``), and the resident part before a step.

FLOPs and MFU
-------------
* **analytic model FLOPs** (the MFU numerator): matmul FLOPs only (2·m·n·k per
  product), from the architecture and the actual masks of the batch: patch embeddings
  (student and teacher), student encoder on ``1+n_vis`` tokens per modality, teacher
  encoder on ``1+N`` tokens per modality (forward only), encoder→decoder projection,
  fusion decoder on ``M·(1+n_vis)+L`` tokens (``L`` = positions visible in any
  modality, batch maximum, as padded), reconstruction decoder on ``L+N`` tokens per
  modality, head, modality head; per transformer layer ``2·T·12·D²`` (qkv, proj, MLP
  with ratio 4) + ``4·T²·D`` (QKᵀ and AV). Training = 3 × student forward (forward +
  backward) + 1 × teacher forward. Softmax, norms, losses, optimizer are not counted.
* **counted FLOPs**: :class:`torch.utils.flop_counter.FlopCounterMode` over one full
  step (what aten's mm/addmm/bmm/conv/SDPA report; CPU SDPA kernels are not registered
  there, so on the CPU attention is missing from this count).
* MFU = analytic FLOPs per step / step time / peak, peak = ``--peak-tflops`` (790 TFLOP/s
  bf16 dense, H100/H200; printed only on CUDA).

Defaults: CPU → ``tiny`` preset, 64 px, batch 32, fp32; CUDA → ``base`` preset, 320 px,
batch 32, bf16 autocast. Run: ``python benchmarks/bench_step.py [--preset tiny]
[--device cpu] [--json out.json]``.
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repo, when not installed
sys.path.insert(0, str(Path(__file__).resolve().parent))  # bench_masking, _common

import torch  # noqa: E402

from _common import save_figures, time_cpu, time_cuda  # noqa: E402
from mssdf import masking  # noqa: E402
from mssdf.engine.loop import TrainState, optimizer_step  # noqa: E402
from mssdf.engine.optim import build_optimizer, build_scheduler  # noqa: E402
from mssdf.losses import LossConfig, mssdf_loss  # noqa: E402
from mssdf.model import MSSDF, ModelConfig, ema_update, model_config  # noqa: E402

# rough statistics of the synthetic inputs (only so that the model sees unit-scale values)
NORMALIZATION = {"rgb": {"mean": [110.0, 110.0, 110.0], "std": [40.0, 40.0, 40.0]}, "dsm": {"mean": [55.0], "std": [8.0]}}


class StepBench:
    """A model, its optimiser and a fixed batch; ``step()`` runs one pre-training step."""

    def __init__(self, preset: str, batch: int, img_size: int, device: torch.device, amp: bool, seed: int = 0):
        from bench_masking import synthetic_images

        torch.manual_seed(seed)
        self.device, self.amp = device, amp
        self.cfg: ModelConfig = model_config(preset, img_size=img_size, normalization=NORMALIZATION)
        self.images = {m: x.to(device) for m, x in synthetic_images(batch, img_size, seed).items()}
        self.rss_before_model_kib = _maxrss_kib()
        self.model = MSSDF(self.cfg).to(device)
        opt = build_optimizer(self.model, 1.5e-4, 0.05, (0.9, 0.95))
        sched = build_scheduler(opt, peak_lr=1.5e-4, min_lr=1e-5, warmup_steps=0, total_steps=10**6)
        self.state = TrainState(self.model, opt, sched)
        self.mask_cfg = masking.MaskingConfig()
        self.loss_cfg = LossConfig()
        self.gen = torch.Generator(device=device).manual_seed(seed)

    def masks(self) -> dict[str, torch.Tensor]:
        return masking.generate_masks(self.images, self.cfg.patch_size, self.mask_cfg, 0.0, self.gen)

    def step(self, masks: dict[str, torch.Tensor] | None = None) -> torch.Tensor:
        """One step; ``masks`` given → the masking stage is skipped (for timing it apart)."""
        masks = self.masks() if masks is None else masks
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.amp):
            out = self.model(self.images, masks)
            loss, _ = mssdf_loss(out, self.loss_cfg)
        optimizer_step(self.state, loss)
        ema_update(self.model.teacher, self.model.encoder, 0.996)
        return loss.detach()

    # -- accounting --------------------------------------------------------------------
    def param_counts(self) -> dict[str, int]:
        student = sum(p.numel() for p in self.model.student_parameters())
        encoder = sum(p.numel() for p in self.model.encoder.parameters())
        teacher = sum(p.numel() for p in self.model.teacher.parameters()) if self.model.teacher is not None else 0
        return {"student": student, "encoder": encoder, "teacher": teacher}

    def analytic_flops(self, masks: dict[str, torch.Tensor]) -> dict[str, float]:
        """Matmul FLOPs of one training step (see the module docstring)."""
        c = self.cfg
        b = next(iter(self.images.values())).shape[0]
        mods = list(self.images)
        m = len(mods)
        n_all = c.num_patches
        n_vis = int((~next(iter(masks.values()))).sum(dim=1)[0])
        visible_any = torch.stack([~masks[k] for k in mods]).any(dim=0)
        n_query = int(visible_any.sum(dim=1).max())
        d, dd, r = c.embed_dim, c.decoder_dim, c.mlp_ratio

        def layers(seqs: int, t: int, width: int, depth: int) -> float:
            per_layer = 2 * t * (4 + 2 * r) * width**2 + 4 * t * t * width
            return seqs * depth * per_layer

        embed = sum(2 * b * n_all * (c.patch_size**2 * ch) * d for ch in (c.modalities[k] for k in mods))
        student = (
            embed
            + layers(m * b, 1 + n_vis, d, c.depth)
            + 2 * m * b * (1 + n_vis) * d * dd  # encoder_to_decoder
            + layers(b, m * (1 + n_vis) + n_query, dd, c.fusion_depth)
            + layers(m * b, n_query + n_all, dd, c.decoder_depth)
            + 2 * m * b * n_all * dd * d  # head (teacher targets)
            + 2 * m * b * (d * d // 2 + d // 2 * len(c.modalities))  # modality head
        )
        teacher = embed + layers(m * b, 1 + n_all, d, c.depth)
        return {"student_forward": student, "teacher_forward": teacher, "train_step": 3 * student + teacher,
                "n_visible": n_vis, "n_query": n_query}

    def counted_flops(self) -> float:
        from torch.utils.flop_counter import FlopCounterMode

        with FlopCounterMode(display=False) as fc:
            self.step()
        return float(fc.get_total_flops())


def _maxrss_kib() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default=None, help="cpu or cuda (default: cuda if available, else cpu)")
    p.add_argument("--preset", default=None, help="tiny/small/base/large (default: tiny on CPU, base on CUDA)")
    p.add_argument("--batch", type=int, default=32, help="samples per step (default 32)")
    p.add_argument("--img-size", type=int, default=None, help="image side (default: 64 on CPU, 320 on CUDA)")
    p.add_argument("--steps", type=int, default=10, help="timed steps (default 10)")
    p.add_argument("--warmup", type=int, default=3, help="untimed steps first (default 3)")
    p.add_argument("--amp", choices=["auto", "bf16", "fp32"], default="auto", help="auto: bf16 on CUDA, fp32 on CPU")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    p.add_argument("--peak-tflops", type=float, default=790.0, help="bf16 dense peak for MFU (default 790, H100/H200)")
    p.add_argument("--no-flop-count", action="store_true", help="skip the FlopCounterMode step")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", metavar="OUT", help="write all figures to this JSON file")
    return p


def main(args: argparse.Namespace) -> dict:
    if args.threads:
        torch.set_num_threads(args.threads)
    dev = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    cuda = dev.type == "cuda"
    preset = args.preset or ("base" if cuda else "tiny")
    img = args.img_size or (320 if cuda else 64)
    amp = cuda if args.amp == "auto" else args.amp == "bf16"

    rss0 = _maxrss_kib()
    bench = StepBench(preset, args.batch, img, dev, amp, args.seed)
    rss_model = _maxrss_kib()
    masks = bench.masks()
    flops = bench.analytic_flops(masks)
    params = bench.param_counts()
    static_bytes = 4 * (4 * params["student"] + params["teacher"])  # weights, grads, 2 moments; teacher

    if cuda:
        torch.cuda.synchronize()
    for _ in range(args.warmup):
        bench.step()
    if cuda:
        torch.cuda.synchronize()
        resident = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
    times = (time_cuda if cuda else time_cpu)(bench.step, args.steps, 0)
    rss_end = _maxrss_kib()
    med = statistics.median(times)
    ips = args.batch / med

    out = {
        "config": {"preset": preset, "batch": args.batch, "img_size": img, "device": str(dev),
                   "precision": "bf16 autocast" if amp else "fp32", "steps": args.steps, "warmup": args.warmup,
                   "threads": torch.get_num_threads(), "torch": torch.__version__, "loadavg": os.getloadavg()[0],
                   "device_name": torch.cuda.get_device_name(dev) if cuda else f"CPU ({os.cpu_count()} cores)"},
        "params": params,
        "step_s": {"median": med, "min": min(times), "max": max(times), "all": times},
        "images_per_s": ips,
        "flops": flops,
    }
    c = bench.cfg
    print(f"MSSDF pre-training step: preset {preset} (D={c.embed_dim}, depth {c.depth}, dec {c.decoder_dim}x{c.decoder_depth}, "
          f"fusion {c.fusion_depth}), {img} px, patch {c.patch_size} (N={c.num_patches}, {flops['n_visible']} visible/modality), "
          f"batch {args.batch} x {{rgb, dsm}}")
    print(f"device {out['config']['device_name']}, {out['config']['precision']}, torch {torch.__version__}, "
          f"{torch.get_num_threads()} CPU thread(s); {args.warmup} warm-up + {args.steps} timed steps; "
          f"load average {os.getloadavg()[0]:.2f} on {os.cpu_count()} CPUs")
    print(f"parameters: student {params['student'] / 1e6:.2f} M (encoder {params['encoder'] / 1e6:.2f} M), teacher {params['teacher'] / 1e6:.2f} M")
    print(f"step: median {med * 1e3:.1f} ms (min {min(times) * 1e3:.1f}, max {max(times) * 1e3:.1f})  ->  {ips:.1f} images/s")

    if cuda:
        peak = torch.cuda.max_memory_allocated()
        out["memory"] = {"kind": "torch.cuda.max_memory_allocated", "peak_bytes": peak, "resident_bytes": resident,
                         "static_bytes_analytic": static_bytes}
        print(f"memory (CUDA allocated): peak {peak / 2**30:.2f} GiB during a step; resident between steps "
              f"{resident / 2**30:.2f} GiB (analytic weights+grads+AdamW+teacher {static_bytes / 2**30:.2f} GiB)")
    else:
        out["memory"] = {"kind": "ru_maxrss high-water mark", "baseline_kib": rss0, "after_model_kib": rss_model,
                         "peak_kib": rss_end, "peak_delta_kib": rss_end - rss0, "static_bytes_analytic": static_bytes}
        print(f"memory (max RSS, high-water): baseline {rss0 / 1024:.0f} MiB, after model+batch {rss_model / 1024:.0f} MiB, "
              f"after steps {rss_end / 1024:.0f} MiB -> peak delta {(rss_end - rss0) / 1024:.0f} MiB "
              f"(analytic weights+grads+AdamW+teacher {static_bytes / 2**20:.0f} MiB)")

    tf = flops["train_step"]
    print(f"model FLOPs (analytic, matmuls): {tf / 1e9:.2f} GFLOP/step (student fwd {flops['student_forward'] / 1e9:.2f}, "
          f"teacher fwd {flops['teacher_forward'] / 1e9:.2f}) -> {tf / med / 1e12:.3f} TFLOP/s achieved")
    out["achieved_tflops"] = tf / med / 1e12
    if not args.no_flop_count:
        counted = bench.counted_flops()
        out["flops"]["counted_flop_counter_mode"] = counted
        note = "" if cuda else " (CPU SDPA is not counted by FlopCounterMode)"
        print(f"counted FLOPs (FlopCounterMode, one step): {counted / 1e9:.2f} GFLOP ({counted / tf:.2f}x analytic){note}")
    if cuda:
        mfu = tf / med / (args.peak_tflops * 1e12)
        out["mfu"] = mfu
        out["peak_tflops"] = args.peak_tflops
        print(f"MFU: {100 * mfu:.1f}% of {args.peak_tflops:.0f} TFLOP/s bf16 peak")

    save_figures(out, args.json)
    return out


if __name__ == "__main__":
    main(build_parser().parse_args())
