"""Benchmark: information-aware masking, vectorised (``mssdf.masking``) vs per-patch reference.

What is measured
----------------
A batch of ``--batch`` (64) two-modality samples, ``rgb`` (3 bands, uint8 0-255) and
``dsm`` (1 band, float32 metres), ``--size`` (320) px square, patch 16, mask ratio 0.75
(N = 400 patches, 300 masked per sample):

* **ours** — :func:`mssdf.masking.generate_masks` in ``mode="information"`` on the whole
  batch (torch, CPU), in two configurations:

  - ``training default``: the :class:`~mssdf.masking.MaskingConfig` defaults (scores
    normalised per modality, cross-modal masking on, epoch 0 → p = 0.1). It does more
    work than the reference (normalisation, a second modality's mask), so it is the
    conservative one;
  - ``reference-matched``: ``normalize_scores=False, cross_modal=False`` (exactly the
    reference's job: one mask per sample from the summed raw scores);

  and, separately, its two stages: :func:`~mssdf.masking.information_scores` alone
  (Sobel + variance per patch, both modalities) and the sampling alone
  (:func:`~mssdf.masking.information_aware_mask`: per-sample quantiles → weights →
  Gumbel top-k), plus :func:`~mssdf.masking.cross_modal_masks` alone.
* **reference** — :func:`mssdf.reference.batch_masks`: the authors' algorithm, one
  sample at a time, one patch at a time, in NumPy (``normalize=False``, the authors' raw
  sum); and its two stages (``sample_scores`` and ``sample_mask`` per sample).

Both run **in the same process, on the same thread count** (``--threads``, default 1):
the OMP/MKL/OpenBLAS thread variables are set before NumPy and torch are imported and
``torch.set_num_threads`` is called, so "per sample" means "per sample per core" at the
default. Each timing is ``--warmup`` untimed calls, then ``--repeats`` timed calls
(``--ref-repeats`` for the slow reference) with ``time.perf_counter``; the **median**
call time divided by the batch size is reported in ms per sample. The ratio
reference/ours is the speed-up, from the medians and from the fastest calls (the
latter is less disturbed by other processes on a shared machine); the target is ≥ 10×,
PASS/FAIL judged on the lowest of the four full-masking ratios.

Inputs are realistic rather than white noise (white noise makes every patch equally
"informative" and the quantile bands meaningless): per sample, a smooth random field
(coarse noise upsampled bicubically, at a 16-px and a 3-px scale) plus axis-aligned rectangles ("buildings") with
sharp edges; the rectangles are uniform-coloured roofs in ``rgb`` and 3-30 m raised
blocks on a gently varying ground (~50 m) in ``dsm``; mild pixel noise on both.

Checks (printed, and in the JSON): the vectorised scores equal the reference scores
(both un-normalised) on ``--check-samples`` samples to float32 tolerance
(``rtol=1e-4``, ``atol=1e-4·mean|score|``; ours is float32, the reference float64); and
every mask of every sample and modality hides exactly ``int(N·ratio)`` patches.

``--chunk-sizes`` sweeps ``MaskingConfig.chunk_size`` (samples scored at once) for the
training-default ``generate_masks``; chunking bounds the temporaries of the score
computation (roughly 8 float32 copies of a chunk's grey image, printed as "work MiB").

With CUDA (and without ``--no-cuda``) the same batch is also masked on the GPU (CUDA
events after a warm-up, ``torch.cuda.synchronize``), the chunk sweep is repeated there
with peak allocated memory, and one base-preset pre-training step (batch 32, 320 px,
bf16 autocast; see ``bench_step.py``) is timed without masking, so that masking is
printed as a percentage of a full step (mask + rest).

Run: ``python benchmarks/bench_masking.py [--threads 1] [--json out.json]``.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

THREAD_VARS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "VECLIB_MAXIMUM_THREADS", "NUMEXPR_NUM_THREADS")
TARGET_SPEEDUP = 10.0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--batch", type=int, default=64, help="samples per batch (default 64)")
    p.add_argument("--size", type=int, default=320, help="image side in pixels (default 320)")
    p.add_argument("--patch", type=int, default=16, help="patch size (default 16)")
    p.add_argument("--ratio", type=float, default=0.75, help="mask ratio (default 0.75)")
    p.add_argument("--threads", type=int, default=1, help="threads for NumPy and torch alike (default 1)")
    p.add_argument("--repeats", type=int, default=7, help="timed calls of the vectorised code (default 7)")
    p.add_argument("--ref-repeats", type=int, default=3, help="timed calls of the reference (default 3)")
    p.add_argument("--warmup", type=int, default=2, help="untimed calls first (default 2; 1 for the reference)")
    p.add_argument("--chunk-size", type=int, default=None, help="chunk_size of the main timings (default: MaskingConfig's)")
    p.add_argument("--chunk-sizes", default="1,2,4,8,16,64", help="comma list for the chunk_size sweep ('' to skip)")
    p.add_argument("--check-samples", type=int, default=4, help="samples whose scores are compared with the reference")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-cuda", action="store_true", help="skip the GPU part even if CUDA is available")
    p.add_argument("--gpu-step-batch", type=int, default=32, help="batch of the GPU training step (default 32)")
    p.add_argument("--json", metavar="OUT", help="write all figures to this JSON file")
    return p


if __name__ == "__main__":  # thread counts must be fixed before NumPy/torch are imported
    ARGS = build_parser().parse_args()
    for _var in THREAD_VARS:
        os.environ[_var] = str(ARGS.threads)

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repo, when not installed

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from _common import save_figures, time_cpu, time_cuda  # noqa: E402
from mssdf import masking, reference  # noqa: E402


# ---------------------------------------------------------------------------------------
# inputs


def _smooth(x: torch.Tensor, size: int) -> torch.Tensor:
    """Smooth random field: coarse noise ``(B, C, h, w)`` upsampled (bicubic) to ``size``."""
    return F.interpolate(x, size=(size, size), mode="bicubic", align_corners=False)


def _unit(x: torch.Tensor) -> torch.Tensor:
    """Scale each sample/channel to zero mean, unit std."""
    return (x - x.mean(dim=(2, 3), keepdim=True)) / x.std(dim=(2, 3), keepdim=True).clamp_min(1e-6)


def synthetic_images(batch: int, size: int, seed: int = 0, rectangles: int = 12) -> dict[str, torch.Tensor]:
    """Realistic-looking raw inputs: ``{"rgb": (B,3,S,S) uint8, "dsm": (B,1,S,S) float32 metres}``.

    Smooth random fields (upsampled noise at two scales) plus sharp-edged rectangles: roofs
    of a uniform colour in ``rgb``, 3-30 m blocks in ``dsm``; mild pixel noise on both.
    """
    g = torch.Generator().manual_seed(seed)
    n = lambda *s: torch.randn(*s, generator=g)  # noqa: E731
    rgb = 0.7 * _unit(_smooth(n(batch, 3, size // 16, size // 16), size)) + 0.3 * _unit(_smooth(n(batch, 3, size // 3, size // 3), size))
    rgb = 110.0 + 35.0 * (0.6 * rgb + 0.4 * rgb.mean(dim=1, keepdim=True))  # correlated bands
    ground = 50.0 + 2.0 * _unit(_smooth(n(batch, 1, size // 40, size // 40), size))
    dsm = ground.clone()
    for b in range(batch):
        for _ in range(rectangles):
            h, w = (torch.randint(size // 32, size // 4, (2,), generator=g)).tolist()
            y, x = torch.randint(0, size - h, (1,), generator=g).item(), torch.randint(0, size - w, (1,), generator=g).item()
            colour = torch.rand(3, 1, 1, generator=g) * 200 + 30
            rgb[b, :, y : y + h, x : x + w] = colour
            dsm[b, :, y : y + h, x : x + w] = ground[b, :, y : y + h, x : x + w].mean() + 3 + 27 * torch.rand(1, generator=g)
    rgb = (rgb + 3.0 * n(batch, 3, size, size)).round_().clamp_(0, 255).to(torch.uint8)
    dsm = dsm + 0.05 * n(batch, 1, size, size)
    return {"rgb": rgb, "dsm": dsm.float()}


# ---------------------------------------------------------------------------------------
# timing


def summary(times: list[float], per: int) -> dict:
    """Median/min/max of call times, also per sample (``per`` samples a call), in ms."""
    med = statistics.median(times)
    return {
        "median_ms": med * 1e3,
        "min_ms": min(times) * 1e3,
        "max_ms": max(times) * 1e3,
        "per_sample_ms": med * 1e3 / per,
        "repeats": len(times),
    }


def row(label: str, s: dict) -> str:
    return f"  {label:<44s} {s['per_sample_ms']:9.3f} ms/sample   {s['median_ms']:10.1f} ms/batch  (min {s['min_ms']:.1f}, max {s['max_ms']:.1f}, n={s['repeats']})"


# ---------------------------------------------------------------------------------------
# parts


def check_scores(images: dict[str, torch.Tensor], patch: int, k: int) -> dict:
    """Our un-normalised scores vs the reference's on the first ``k`` samples."""
    ours = masking.information_scores({m: x[:k] for m, x in images.items()}, patch, normalize=False).double().numpy()
    ref = np.stack([reference.sample_scores({m: x[b].numpy() for m, x in images.items()}, patch) for b in range(k)])
    atol = 1e-4 * float(np.abs(ref).mean())
    abs_err = np.abs(ours - ref)
    rel_err = abs_err / np.maximum(np.abs(ref), atol)
    return {
        "samples": k,
        "max_abs_err": float(abs_err.max()),
        "max_rel_err": float(rel_err.max()),
        "score_range": [float(ref.min()), float(ref.max())],
        "rtol": 1e-4,
        "atol": atol,
        "equal": bool(np.allclose(ours, ref, rtol=1e-4, atol=atol)),
    }


def chunk_sweep(images, patch, base_cfg, sizes, repeats, warmup, timer) -> list[dict]:
    """Training-default ``generate_masks`` per chunk size (+ peak CUDA memory on the GPU).

    The repeats are interleaved round-robin over the chunk sizes, so that a burst of load
    from other processes hits every size alike instead of one size's whole series.
    """
    b, _, h, w = next(iter(images.values())).shape
    dev = next(iter(images.values())).device
    cuda = dev.type == "cuda"
    fns, extra = {}, {}
    for cs in sizes:
        cfg = masking.MaskingConfig(**{**base_cfg.__dict__, "chunk_size": cs})
        gen = torch.Generator(device=dev).manual_seed(0)
        fns[cs] = lambda cfg=cfg, gen=gen: masking.generate_masks(images, patch, cfg, 0.0, gen)
        if cuda:
            fns[cs]()
            torch.cuda.synchronize()
            base = torch.cuda.memory_allocated()
            torch.cuda.reset_peak_memory_stats()
            fns[cs]()
            torch.cuda.synchronize()
            extra[cs] = (torch.cuda.max_memory_allocated() - base) / 2**20
        timer(fns[cs], 0, warmup)
    times: dict[int, list[float]] = {cs: [] for cs in sizes}
    for _ in range(repeats):
        for cs in sizes:
            times[cs] += timer(fns[cs], 1, 0)
    out = []
    for cs in sizes:
        s = summary(times[cs], b)
        s["chunk_size"] = cs
        s["grey_chunk_mib"] = min(cs, b) * h * w * 4 / 2**20
        s["work_mib_estimate"] = 8 * s["grey_chunk_mib"]
        if cuda:
            s["cuda_peak_extra_mib"] = extra[cs]
        out.append(s)
    return out


def print_sweep(sweep: list[dict], default: int, where: str) -> dict:
    best = min(sweep, key=lambda s: s["median_ms"])
    print(f"\nchunk_size sweep ({where}; training-default generate_masks on the whole batch):")
    for s in sweep:
        mem = f"   CUDA peak +{s['cuda_peak_extra_mib']:.0f} MiB" if "cuda_peak_extra_mib" in s else ""
        flag = "  <- default" if s["chunk_size"] == default else ""
        print(
            f"  chunk_size {s['chunk_size']:>3d}: {s['per_sample_ms']:8.3f} ms/sample  {s['median_ms']:9.1f} ms/batch"
            f"  ({s['median_ms'] / best['median_ms']:.2f}x best)  work ~{s['work_mib_estimate']:.0f} MiB{mem}{flag}"
        )
    d = next((s for s in sweep if s["chunk_size"] == default), None)
    verdict = {"fastest": best["chunk_size"], "default": default}
    if d is not None:
        verdict["default_vs_fastest"] = d["median_ms"] / best["median_ms"]
        print(f"  fastest: chunk_size={best['chunk_size']}; default {default} is {verdict['default_vs_fastest']:.2f}x the fastest")
    else:
        print(f"  fastest: chunk_size={best['chunk_size']} (default {default} not in the sweep)")
    return verdict


def gpu_part(images_cpu, args, sizes, dev=None, timer=None, step_preset="base", step_img=320) -> dict:
    """Masking on the GPU, its chunk sweep, and its share of a base-preset training step.

    ``dev``/``timer``/``step_preset``/``step_img`` exist only to smoke-test this on a CPU.
    """
    dev = dev or torch.device("cuda")
    time_cuda_ = timer or time_cuda
    images = {m: x.to(dev) for m, x in images_cpu.items()}
    b = args.batch
    cfg = masking.MaskingConfig() if args.chunk_size is None else masking.MaskingConfig(chunk_size=args.chunk_size)
    gen = torch.Generator(device=dev).manual_seed(args.seed)
    res = {"device": torch.cuda.get_device_name(dev) if dev.type == "cuda" else str(dev)}
    print(f"\n=== GPU: {res['device']} ===")
    res["generate_masks"] = summary(time_cuda_(lambda: masking.generate_masks(images, args.patch, cfg, 0.0, gen), args.repeats, args.warmup), b)
    res["information_scores"] = summary(
        time_cuda_(lambda: masking.information_scores(images, args.patch, chunk_size=cfg.chunk_size), args.repeats, args.warmup), b
    )
    scores = masking.information_scores(images, args.patch, chunk_size=cfg.chunk_size)
    res["sampling"] = summary(time_cuda_(lambda: masking.information_aware_mask(scores, args.ratio, generator=gen), args.repeats, args.warmup), b)
    print(row(f"generate_masks (batch {b}, chunk {cfg.chunk_size})", res["generate_masks"]))
    print(row("  information_scores alone", res["information_scores"]))
    print(row("  sampling alone", res["sampling"]))
    if sizes:
        res["chunk_sweep"] = chunk_sweep(images, args.patch, cfg, sizes, args.repeats, args.warmup, time_cuda_)
        res["chunk_verdict"] = print_sweep(res["chunk_sweep"], cfg.chunk_size, "GPU")

    # one base-preset training step without masking, and masking of the same batch
    from bench_step import StepBench  # noqa: E402  (same folder)

    sb = args.gpu_step_batch
    bench = StepBench(step_preset, sb, step_img, dev, amp=True, seed=args.seed)
    masks = bench.masks()
    step = summary(time_cuda_(lambda: bench.step(masks), 5, 3), sb)
    mask_sb = summary(time_cuda_(bench.masks, args.repeats, args.warmup), sb)
    pct = 100.0 * mask_sb["median_ms"] / (mask_sb["median_ms"] + step["median_ms"])
    res["step_base"] = {"batch": sb, "img_size": 320, "amp": "bf16", "step_without_masking": step, "masking": mask_sb, "masking_pct_of_step": pct}
    print(f"\n{step_preset} preset step, batch {sb}, {step_img} px, bf16 autocast (forward + loss + backward + AdamW + EMA; masking timed apart):")
    print(row("step without masking", step))
    print(row(f"masking (batch {sb})", mask_sb))
    print(f"  masking = {pct:.2f}% of the step (mask / (mask + rest))")
    return res


# ---------------------------------------------------------------------------------------


def main(args: argparse.Namespace) -> dict:
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    sizes = [int(s) for s in args.chunk_sizes.split(",") if s.strip()]
    cfg_train = masking.MaskingConfig() if args.chunk_size is None else masking.MaskingConfig(chunk_size=args.chunk_size)
    cfg_match = masking.MaskingConfig(**{**cfg_train.__dict__, "normalize_scores": False, "cross_modal": False})
    b, p = args.batch, args.patch
    n = (args.size // p) ** 2
    k_masked = masking.num_masked(n, args.ratio)

    t0 = time.perf_counter()
    images = synthetic_images(b, args.size, args.seed)
    np_images = {m: x.numpy() for m, x in images.items()}
    gen_s = time.perf_counter() - t0
    out: dict = {
        "config": {**{k: v for k, v in vars(args).items() if k != "json"}, "num_patches": n, "num_masked": k_masked,
                   "chunk_size_used": cfg_train.chunk_size},
        "env": {"torch": torch.__version__, "numpy": np.__version__, "torch_threads": torch.get_num_threads(),
                **{v: os.environ.get(v) for v in THREAD_VARS[:3]}, "cpu_count": os.cpu_count(),
                "loadavg_start": os.getloadavg()[0]},
    }
    print(f"information-aware masking: batch {b} x {{rgb uint8 3-band, dsm float32 1-band}}, {args.size}x{args.size} px, "
          f"patch {p} (N={n}), ratio {args.ratio} ({k_masked} masked)")
    print(f"threads: torch {torch.get_num_threads()}, OMP/MKL/OpenBLAS {os.environ.get('OMP_NUM_THREADS')}  "
          f"(torch {torch.__version__}, numpy {np.__version__}); inputs generated in {gen_s:.1f} s; "
          f"load average {os.getloadavg()[0]:.2f} on {os.cpu_count()} CPUs (other processes skew timings)")

    # --- correctness first
    chk = check_scores(images, p, min(args.check_samples, b))
    out["score_check"] = chk
    print(f"\nscores (normalize_scores=False) vs reference on {chk['samples']} samples: "
          f"max abs err {chk['max_abs_err']:.3g}, max rel err {chk['max_rel_err']:.3g} "
          f"(scores {chk['score_range'][0]:.3g}..{chk['score_range'][1]:.3g}; rtol 1e-4, atol {chk['atol']:.3g}) "
          f"-> {'EQUAL' if chk['equal'] else 'DIFFERENT'}")

    # --- ours
    gen = torch.Generator().manual_seed(args.seed)
    ours = {}
    ours["generate_masks_training_default"] = summary(
        time_cpu(lambda: masking.generate_masks(images, p, cfg_train, 0.0, gen), args.repeats, args.warmup), b)
    ours["generate_masks_reference_matched"] = summary(
        time_cpu(lambda: masking.generate_masks(images, p, cfg_match, 0.0, gen), args.repeats, args.warmup), b)
    ours["information_scores"] = summary(
        time_cpu(lambda: masking.information_scores(images, p, normalize=False, chunk_size=cfg_train.chunk_size), args.repeats, args.warmup), b)
    scores = masking.information_scores(images, p, normalize=False, chunk_size=cfg_train.chunk_size)
    ours["sampling"] = summary(
        time_cpu(lambda: masking.information_aware_mask(scores, args.ratio, generator=gen), args.repeats, args.warmup), b)
    refmask = masking.information_aware_mask(scores, args.ratio, generator=gen)
    ours["cross_modal"] = summary(
        time_cpu(lambda: masking.cross_modal_masks(refmask, list(images), "rgb", cfg_train.substitution(0.0), gen), args.repeats, args.warmup), b)

    # --- reference (one sample at a time)
    rng = np.random.default_rng(args.seed)
    ref = {}
    one = {m: x[:1] for m, x in np_images.items()}
    ref["batch_masks"] = summary(
        time_cpu(lambda: reference.batch_masks(np_images, p, args.ratio, rng), args.ref_repeats, 0), b)
    reference.batch_masks(one, p, args.ratio, rng)  # (warm-up on one sample; nothing is compiled)
    ref["sample_scores"] = summary(time_cpu(
        lambda: [reference.sample_scores({m: x[i] for m, x in np_images.items()}, p) for i in range(b)], args.ref_repeats, 0), b)
    ref_scores = [reference.sample_scores({m: x[i] for m, x in np_images.items()}, p) for i in range(b)]
    ref["sample_mask"] = summary(time_cpu(
        lambda: [reference.sample_mask(s, args.ratio, rng) for s in ref_scores], args.repeats, args.warmup), b)
    out["ours"], out["reference"] = ours, ref

    print(f"\nCPU, {torch.get_num_threads()} thread(s), median of repeats, per sample = batch time / {b}:")
    print(" ours (mssdf.masking, whole batch):")
    print(row(f"generate_masks, training default (chunk {cfg_train.chunk_size})", ours["generate_masks_training_default"]))
    print(row("generate_masks, reference-matched", ours["generate_masks_reference_matched"]))
    print(row("  information_scores alone", ours["information_scores"]))
    print(row("  sampling alone (quantiles+Gumbel top-k)", ours["sampling"]))
    print(row("  cross_modal_masks alone (p=0.1)", ours["cross_modal"]))
    print(" reference (mssdf.reference, one sample at a time):")
    print(row("batch_masks", ref["batch_masks"]))
    print(row("  sample_scores alone", ref["sample_scores"]))
    print(row("  sample_mask alone", ref["sample_mask"]))

    def ratio(r: str, o: str, key: str) -> float:
        return ref[r][key] / ours[o][key]

    speed = {
        "training_default": ratio("batch_masks", "generate_masks_training_default", "per_sample_ms"),
        "reference_matched": ratio("batch_masks", "generate_masks_reference_matched", "per_sample_ms"),
        "scores": ratio("sample_scores", "information_scores", "per_sample_ms"),
        "sampling": ratio("sample_mask", "sampling", "per_sample_ms"),
        # from the fastest call of each (least disturbed by other processes)
        "training_default_min": ratio("batch_masks", "generate_masks_training_default", "min_ms"),
        "reference_matched_min": ratio("batch_masks", "generate_masks_reference_matched", "min_ms"),
    }
    judged = min(speed["training_default"], speed["reference_matched"], speed["training_default_min"], speed["reference_matched_min"])
    verdict = "PASS" if judged >= TARGET_SPEEDUP else "FAIL"
    out["speedup"], out["verdict"], out["speedup_judged"] = speed, verdict, judged
    print("\nspeed-up (reference / ours, per sample, same threads):")
    print(f"  full masking, medians: {speed['training_default']:.1f}x (training default), {speed['reference_matched']:.1f}x (reference-matched)")
    print(f"  full masking, fastest calls: {speed['training_default_min']:.1f}x (training default), {speed['reference_matched_min']:.1f}x (reference-matched)")
    print(f"  stages, medians: scores {speed['scores']:.1f}x, sampling {speed['sampling']:.1f}x")
    print(f"  target >= {TARGET_SPEEDUP:.0f}x per sample per core: {verdict} (judged on the lowest of the four: {judged:.1f}x)"
          + ("" if args.threads == 1 else f"  (note: measured on {args.threads} threads)"))

    # --- masked counts
    m_train = masking.generate_masks(images, p, cfg_train, 0.0, gen)
    counts = {m: mk.sum(dim=1) for m, mk in m_train.items()}
    ref_counts = reference.batch_masks({m: x[:4] for m, x in np_images.items()}, p, args.ratio, rng).sum(axis=1)
    out["masked_counts"] = {
        "expected": k_masked,
        **{f"ours_{m}": [int(c.min()), int(c.max())] for m, c in counts.items()},
        "reference_first4": [int(c) for c in ref_counts],
    }
    ok = all(bool((c == k_masked).all()) for c in counts.values()) and bool((ref_counts == k_masked).all())
    out["masked_counts"]["ok"] = ok
    print(f"\nmasked per sample (expected {k_masked}): "
          + ", ".join(f"ours {m} min {int(c.min())} max {int(c.max())}" for m, c in counts.items())
          + f"; reference (4 samples) {ref_counts.tolist()} -> {'OK' if ok else 'WRONG'}")

    # --- chunk sweep
    if sizes:
        out["chunk_sweep_cpu"] = chunk_sweep(images, p, cfg_train, sizes, args.repeats, args.warmup, time_cpu)
        out["chunk_verdict_cpu"] = print_sweep(out["chunk_sweep_cpu"], cfg_train.chunk_size, f"CPU, {torch.get_num_threads()} thread(s)")

    # --- GPU
    if torch.cuda.is_available() and not args.no_cuda:
        out["cuda"] = gpu_part(images, args, sizes)
    else:
        print("\n(no CUDA device: GPU masking and the base-preset step share are skipped)")

    out["env"]["loadavg_end"] = os.getloadavg()[0]
    print(f"\nload average at the end: {out['env']['loadavg_end']:.2f}")
    save_figures(out, args.json)
    return out


if __name__ == "__main__":
    main(ARGS)
