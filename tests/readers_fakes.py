"""Tiny fake datasets in the paper datasets' official layouts, for the reader tests.

Every ``make_*`` function writes into a folder and returns what it wrote (arrays, ids) so
tests can check that values round-trip. Images are a few dozen pixels.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Sequence

import numpy as np
import rasterio
import rasterio.errors
from PIL import Image
from affine import Affine

from mssdf.data.readers.colors import ISPRS, SECOND

CRS = "EPSG:32633"


def write_tif(
    path: Path, arr: np.ndarray, geo: tuple[float, float, float] | None = (0.0, 100.0, 0.05), nodata=None
) -> Path:
    """Write ``(C, H, W)`` (or ``(H, W)``) as a GeoTIFF; ``geo`` = (x0, y0, pixel) or None."""
    arr = arr[None] if arr.ndim == 2 else arr
    path.parent.mkdir(parents=True, exist_ok=True)
    profile = dict(driver="GTiff", count=arr.shape[0], height=arr.shape[1], width=arr.shape[2], dtype=arr.dtype)
    if geo is not None:
        profile.update(crs=CRS, transform=Affine(geo[2], 0.0, geo[0], 0.0, -geo[2], geo[1]))
    if nodata is not None:
        profile["nodata"] = nodata
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", rasterio.errors.NotGeoreferencedWarning)
        with rasterio.open(path, "w", **profile) as dst:
            dst.write(arr)
    return path


def write_pil(path: Path, arr: np.ndarray, **save_kw) -> Path:
    """Write ``(C, H, W)`` uint8 (C = 1 or 3) through Pillow (PNG/JPEG/BMP by extension)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    img = Image.fromarray(arr[0] if arr.shape[0] == 1 else np.moveaxis(arr, 0, -1))
    img.save(path, **save_kw)
    return path


def rand_u8(rng: np.random.Generator, c: int, h: int, w: int) -> np.ndarray:
    return rng.integers(0, 256, (c, h, w), dtype=np.uint8)


def rand_label(rng: np.random.Generator, h: int, w: int, n: int = 6) -> np.ndarray:
    return rng.integers(0, n, (h, w)).astype(np.int64)


def truncate(path: Path, keep: float = 0.5) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])


# ----------------------------------------------------------------------------- ISPRS
def make_potsdam(
    root: Path, tiles: Sequence[str], size: int = 32, short_tiles: Sequence[str] = ("3_13",), seed: int = 0
) -> dict:
    """Potsdam layout: RGB, IRRG, RGBIR, zero-padded float DSM, 3-channel nDSM JPEG, labels
    (full and noBoundary). The DSM/nDSM of ``short_tiles`` (the real quirk: 3_13) lack their
    last column."""
    rng = np.random.default_rng(seed)
    out: dict = {}
    for t in tiles:
        r, c = (int(x) for x in t.split("_"))
        pad = f"{r:02d}_{c:02d}"
        rgb = rand_u8(rng, 3, size, size)
        ir = rand_u8(rng, 1, size, size)
        w_dsm = size - 1 if t in short_tiles else size
        dsm = rng.uniform(30, 60, (1, size, w_dsm)).astype(np.float32)
        ndsm = rng.integers(0, 256, (size, w_dsm), dtype=np.uint8)
        label = rand_label(rng, size, size)
        nob = label.copy()
        nob[::5] = 255
        write_tif(root / "2_Ortho_RGB" / f"top_potsdam_{t}_RGB.tif", rgb)
        write_tif(root / "3_Ortho_IRRG" / f"top_potsdam_{t}_IRRG.tif", np.concatenate([ir, rgb[:2]]))
        write_tif(root / "4_Ortho_RGBIR" / f"top_potsdam_{t}_RGBIR.tif", np.concatenate([rgb, ir]))
        write_tif(root / "1_DSM" / f"dsm_potsdam_{pad}.tif", dsm)
        # 3 equal channels, lossless-ish: quality 100, no chroma subsampling
        write_pil(
            root / "1_DSM_normalisation" / f"dsm_potsdam_{pad}_normalized_lastools.jpg",
            np.repeat(ndsm[None], 3, 0), quality=100, subsampling=0,
        )  # fmt: skip
        write_tif(root / "5_Labels_all" / f"top_potsdam_{t}_label.tif", ISPRS.encode(label))
        write_tif(root / "5_Labels_all_noBoundary" / f"top_potsdam_{t}_label_noBoundary.tif", ISPRS.encode(nob))
        out[t] = dict(rgb=rgb, ir=ir, dsm=dsm, ndsm=ndsm, label=label, label_nob=nob)
    return out


def make_vaihingen(
    root: Path, areas: Sequence[int], size: int = 24, variants: Sequence[str] = ("gts",), seed: int = 0,
    ndsm: bool = True, short_dsm: Sequence[int] = (),
) -> dict:  # fmt: skip
    """Vaihingen layout: top (IRRG), float DSM, optional nDSM BMP, and labels in the
    requested ``variants``: ``gts`` (gts_for_participants), ``complete``, ``eroded``. The
    DSM/nDSM of the ``short_dsm`` areas lack their last column (no real area does)."""
    rng = np.random.default_rng(seed)
    out: dict = {}
    for a in areas:
        h, w = size + a % 3, size + 2 * (a % 2)  # areas differ in size, like the real ones
        top = rand_u8(rng, 3, h, w)
        w_dsm = w - 1 if a in short_dsm else w
        dsm = rng.uniform(250, 280, (1, h, w_dsm)).astype(np.float32)
        nd = rng.integers(0, 256, (1, h, w_dsm), dtype=np.uint8)
        label = rand_label(rng, h, w)
        nob = label.copy()
        nob[:, ::4] = 255
        geo = (500000.0, 5400000.0, 0.09)
        write_tif(root / "top" / f"top_mosaic_09cm_area{a}.tif", top, geo)
        write_tif(root / "dsm" / f"dsm_09cm_matching_area{a}.tif", dsm, geo)
        if ndsm:
            write_pil(root / "ndsm" / f"ndsm_09cm_matching_area{a}.bmp", nd)
        if "gts" in variants:
            write_tif(root / "gts_for_participants" / f"top_mosaic_09cm_area{a}.tif", ISPRS.encode(label), None)
        if "complete" in variants:
            write_tif(root / "ground_truth_COMPLETE" / f"top_mosaic_09cm_area{a}.tif", ISPRS.encode(label), None)
        if "eroded" in variants:
            write_tif(
                root / "ground_truth_eroded_COMPLETE" / f"top_mosaic_09cm_area{a}_noBoundary.tif",
                ISPRS.encode(nob), None,
            )  # fmt: skip
        out[a] = dict(top=top, dsm=dsm, ndsm=nd, label=label, label_nob=nob)
    return out


# ----------------------------------------------------------------------------- US3D
def make_us3d(root: Path, keys: Sequence[tuple[str, int, int]], size: int = 16, seed: int = 0) -> dict:
    """US3D release layout (RGB, MSI, truth in separate folders). AGL has NaNs at row 0,
    CLS uses every LAS code (2, 5, 6, 9, 17, 65)."""
    rng = np.random.default_rng(seed)
    out: dict = {}
    codes = np.array([2, 5, 6, 9, 17, 65], np.uint8)
    for city, tile, img in keys:
        stem = f"{city}_{tile:03d}_{img:03d}"
        rgb = rand_u8(rng, 3, size, size)
        msi = rng.integers(0, 2048, (8, size, size), dtype=np.uint16)
        agl = rng.uniform(0, 30, (1, size, size)).astype(np.float32)
        agl[0, 0, :3] = np.nan
        cls = codes[rng.integers(0, 6, (size, size))][None]
        geo = (400000.0, 3350000.0, 0.3)
        write_tif(root / "Track1-RGB" / f"{stem}_RGB.tif", rgb, geo)
        write_tif(root / "Track1-MSI-1" / f"{stem}_MSI.tif", msi, geo)
        write_tif(root / "Track1-Truth" / f"{stem}_AGL.tif", agl, geo)
        write_tif(root / "Track1-Truth" / f"{stem}_CLS.tif", cls, geo)
        out[stem] = dict(rgb=rgb, msi=msi, agl=agl[0], cls=cls[0])
    return out


# ----------------------------------------------------------------------------- SECOND
def make_second(root: Path, n: int = 5, size: int = 16, seed: int = 0) -> dict:
    """SECOND layout; labels share the unchanged region (255,255,255) at t1 and t2."""
    rng = np.random.default_rng(seed)
    out: dict = {}
    for i in range(n):
        name = f"{i:05d}"
        changed = rng.random((size, size)) < 0.4
        s1 = np.where(changed, rng.integers(1, 7, (size, size)), 0)
        s2 = np.where(changed, rng.integers(1, 7, (size, size)), 0)
        im1, im2 = rand_u8(rng, 3, size, size), rand_u8(rng, 3, size, size)
        write_pil(root / "im1" / f"{name}.png", im1)
        write_pil(root / "im2" / f"{name}.png", im2)
        write_pil(root / "label1" / f"{name}.png", SECOND.encode(s1))
        write_pil(root / "label2" / f"{name}.png", SECOND.encode(s2))
        out[name] = dict(im1=im1, im2=im2, s1=s1, s2=s2, change=changed.astype(np.int64))
    return out


# ----------------------------------------------------------------------------- scenes
def make_scene_folders(folder: Path, classes: Sequence[str], per_class: int, size: int = 8, camel: bool = False) -> None:
    """``folder/<class>/<class>_<n>.jpg`` (AID: CamelCase folders, lower-case file names)."""
    rng = np.random.default_rng(0)
    for cls in classes:
        d = folder / (cls.title().replace("_", "") if camel else cls)
        for n in range(1, per_class + 1):
            write_pil(d / f"{cls.lower()}_{n:03d}.jpg", rand_u8(rng, 3, size, size), quality=95)


# ----------------------------------------------------------------------------- detection
DIOR_XML = """<annotation><filename>{id}.jpg</filename><size><width>{w}</width><height>{h}</height><depth>3</depth></size>{objects}</annotation>"""
DIOR_OBJ = "<object><name>{name}</name><pose>Unspecified</pose><bndbox><xmin>{b[0]}</xmin><ymin>{b[1]}</ymin><xmax>{b[2]}</xmax><ymax>{b[3]}</ymax></bndbox></object>"


def make_dior(root: Path, splits: dict[str, Sequence[str]], objects: dict[str, list], size: int = 16,
              lists_dir: str = "Main") -> None:  # fmt: skip
    """DIOR layout; ``objects[id]`` = [(class name as written, (x1, y1, x2, y2)), ...]."""
    rng = np.random.default_rng(0)
    ann = root / "Annotations" / "Horizontal Bounding Boxes"
    ann.mkdir(parents=True, exist_ok=True)
    (root / lists_dir).mkdir(parents=True, exist_ok=True)
    for split, ids in splits.items():
        (root / lists_dir / f"{split}.txt").write_text("".join(f"{i}\n" for i in ids))
        folder = root / ("JPEGImages-test" if split == "test" else "JPEGImages-trainval")
        for i in ids:
            write_pil(folder / f"{i}.jpg", rand_u8(rng, 3, size, size))
            objs = "".join(DIOR_OBJ.format(name=n, b=b) for n, b in objects.get(i, []))
            (ann / f"{i}.xml").write_text(DIOR_XML.format(id=i, w=size, h=size, objects=objs))


def make_dota(root: Path, split: str, labels: dict[str, str], sizes: dict[str, tuple[int, int]]) -> None:
    """DOTA layout: ``labels[name]`` is the label file's text, ``sizes[name]`` = (h, w)."""
    rng = np.random.default_rng(0)
    for name, (h, w) in sizes.items():
        write_pil(root / split / "images" / f"{name}.png", rand_u8(rng, 3, h, w))
        if name in labels:
            path = root / split / "labelTxt" / f"{name}.txt"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(labels[name])


# ----------------------------------------------------------------------------- HR-Pairs
def make_hrpairs(root: Path, shapes: dict[str, tuple[int, int]], black: dict[str, list] | None = None,
                 seed: int = 0) -> dict:  # fmt: skip
    """HR-Pairs layout; ``black[name]`` lists (row, col, h, w) regions set to 0 in the DOM."""
    rng = np.random.default_rng(seed)
    out: dict = {}
    for name, (h, w) in shapes.items():
        dom = rng.integers(1, 256, (3, h, w), dtype=np.uint8)
        for r, c, hh, ww in (black or {}).get(name, []):
            dom[:, r : r + hh, c : c + ww] = 0
        dsm = rng.uniform(0, 50, (1, h, w)).astype(np.float32)
        write_tif(root / "patch" / f"{name}_dom.tif", dom, (0.0, 0.0, 0.5))
        write_tif(root / "patch" / f"{name}_dsm.tif", dsm, (0.0, 0.0, 0.5))
        out[name] = dict(dom=dom, dsm=dsm)
    return out
