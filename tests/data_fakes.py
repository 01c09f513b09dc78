"""Tiny fake versions of the embedded real sample (``data/raw`` layout), for the data tests.

``make_raw(root)`` writes every file the sources of :mod:`mssdf.data.sources` read, a few dozen pixels
/ a few thousand points each, with known content so tests can check values:

* Autzen-like LAZ in a feet CRS (EPSG:2994 WKT): ground plane ``z = 100 + 0.1 x`` metres,
  a 6 x 6 m "building" 10 m high (class 1), one small hole and one large empty strip.
* IGN-like LAS 1.4 / format 8 (RGB + NIR) in EPSG:2154 with ASPRS classes 2, 5, 6.
* Rotterdam-like pan (0.5 m, uint16) / MS (1 m, 4 bands float64) pairs in EPSG:32631.
* Atlanta-like pan (0.5 m) + GeoJSON squares (EPSG:32616); Las Vegas-like pan + 0/255
  road mask (EPSG:4326) + road lines.
* NEON-like RGB (0.1 m): one UTM GeoTIFF and three PNGs, each with a Pascal-VOC XML of the
  tree boxes in :data:`NEON_BOXES` (native pixels).
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import laspy
import numpy as np
import rasterio
from rasterio.crs import CRS
from rasterio.errors import NotGeoreferencedWarning
from rasterio.transform import Affine

FT = 0.3048
AUTZEN_BUILDING = (10.0, 16.0, 10.0, 16.0)  # x0, x1, y0, y1 in metres (relative to the origin)
AUTZEN_ORIGIN = (190000.0, 250000.0)  # metres


def write_tif(path: Path, arr: np.ndarray, crs: str | None, transform: Affine | None, nodata=None) -> Path:
    """Write (C, H, W) or (H, W) as a (Geo)TIFF."""
    arr = arr[None] if arr.ndim == 2 else arr
    path.parent.mkdir(parents=True, exist_ok=True)
    profile = dict(driver="GTiff", count=arr.shape[0], height=arr.shape[1], width=arr.shape[2], dtype=arr.dtype)
    if crs is not None:
        profile.update(crs=crs, transform=transform)
    if nodata is not None:
        profile["nodata"] = nodata
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NotGeoreferencedWarning)
        with rasterio.open(path, "w", **profile) as dst:
            dst.write(arr)
    return path


def write_las(path: Path, x, y, z, cls, rgb, nir=None, wkt: str | None = None) -> Path:
    """Write points (native units) as LAS/LAZ; format 3 (RGB) or 8 (RGB + NIR)."""
    fmt, version = (8, "1.4") if nir is not None else (3, "1.2")
    header = laspy.LasHeader(point_format=fmt, version=version)
    header.scales = np.array([0.001, 0.001, 0.001])
    header.offsets = np.array([np.floor(np.min(x)), np.floor(np.min(y)), 0.0])
    if wkt:
        header.vlrs.append(laspy.vlrs.known.WktCoordinateSystemVlr(wkt))
    las = laspy.LasData(header)
    las.x, las.y, las.z = x, y, z
    las.classification = np.asarray(cls, np.uint8)
    las.red, las.green, las.blue = (np.asarray(rgb[:, i], np.uint16) for i in range(3))
    if nir is not None:
        las.nir = np.asarray(nir, np.uint16)
    path.parent.mkdir(parents=True, exist_ok=True)
    las.write(path)
    return path


def autzen_points(size_m: float = 48.0, step: float = 0.5, big_gap: bool = True):
    """Points in METRES (x, y, z relative to AUTZEN_ORIGIN added) and their classes/colours."""
    g = np.arange(step / 2, size_m, step)
    xx, yy = np.meshgrid(g, g)
    x, y = xx.ravel(), yy.ravel()
    keep = ~((x > 30) & (x < 32) & (y > 30) & (y < 32))  # a 2 x 2 m hole (4 cells at 1 m)
    if big_gap:
        keep &= ~((y > 18) & (y < 26) & (x > 24))  # an 8 x 24 m area with no point: no data
    x, y = x[keep], y[keep]
    z = 100.0 + 0.1 * x
    bx0, bx1, by0, by1 = AUTZEN_BUILDING
    roof = (x >= bx0) & (x < bx1) & (y >= by0) & (y < by1)
    z = np.where(roof, z + 10.0, z)
    cls = np.where(roof, 1, 2)
    rgb = np.stack([np.full_like(x, 200), np.where(roof, 50, 120), np.full_like(x, 30)], 1)
    return x + AUTZEN_ORIGIN[0], y + AUTZEN_ORIGIN[1], z, cls, rgb


def make_autzen(path: Path, **kw) -> Path:
    """Autzen-like LAZ with coordinates and heights in international feet (EPSG:2994)."""
    x, y, z, cls, rgb = autzen_points(**kw)
    return write_las(path, x / FT, y / FT, z / FT, cls, rgb, wkt=CRS.from_epsg(2994).to_wkt())


def make_ign(path: Path, size_m: float = 24.0) -> Path:
    """IGN-like LAS 1.4 (RGB 16-bit + NIR) in Lambert-93 with classes 2 (ground), 5 (tree), 6 (building)."""
    g = np.arange(0.125, size_m, 0.25)
    xx, yy = np.meshgrid(g, g)
    x, y = xx.ravel(), yy.ravel()
    cls = np.where(x < size_m / 3, 2, np.where(y < size_m / 2, 5, 6))
    z = 50.0 + np.where(cls == 2, 0.0, np.where(cls == 5, 8.0, 5.0))
    ground_x, ground_y = x[::7], y[::7]  # ground points under trees/buildings too
    x, y = np.r_[x, ground_x], np.r_[y, ground_y]
    z, cls = np.r_[z, np.full(len(ground_x), 50.0)], np.r_[cls, np.full(len(ground_x), 2)]
    rgb = np.stack([cls * 5000, np.full_like(x, 30000), np.full_like(x, 20000)], 1)
    nir = np.where(cls == 5, 50000, 10000)
    return write_las(path, x + 698000.0, y + 6259900.0, z, cls, rgb, nir, wkt=CRS.from_epsg(2154).to_wkt())


def make_raw(root: Path, rotterdam_px: int = 64, atlanta_px: int = 96, lasvegas_px: int = 96, neon_px: int = 64) -> Path:
    """Write a complete fake ``data/raw`` under ``root``; returns ``root``."""
    rng = np.random.default_rng(0)
    make_autzen(root / "laspy/autzen_trim.laz")
    make_ign(root / "laspy/append-bug.laz")
    pt = root / "solaris/preproc_tutorial"
    for i in (1, 2, 3):
        x0, y0 = 593000.0 + 1000 * i, 5747000.0
        pan = rng.integers(100, 2000, (rotterdam_px, rotterdam_px)).astype(np.uint16)
        ms = rng.uniform(100, 2000, (4, rotterdam_px // 2, rotterdam_px // 2))
        if i == 2:
            pan[:, : rotterdam_px // 4] = 0  # a no-data border, like the real ms2/pan2
            ms[:, :, : rotterdam_px // 8] = 0
        write_tif(pt / f"pan{i}.tif", pan, "EPSG:32631", Affine(0.5, 0, x0, 0, -0.5, y0))
        write_tif(pt / f"ms{i}.tif", ms, "EPSG:32631", Affine(1.0, 0, x0, 0, -1.0, y0))
    sol = root / "solaris"
    a_tf = Affine(0.5, 0, 733600.0, 0, -0.5, 3725100.0)
    write_tif(sol / "sample_geotiff.tif", rng.integers(100, 3000, (atlanta_px, atlanta_px)).astype(np.uint16),
              "EPSG:32616", a_tf, nodata=0)
    feats = []
    for k, (r, c) in enumerate([(5, 5), (5, 40), (30, 20), (60, 60), (70, 10)]):
        x0, y0 = a_tf @ (c, r)
        sq = [[x0, y0], [x0 + 6, y0], [x0 + 6, y0 - 6], [x0, y0 - 6], [x0, y0]]  # 12 x 12 px
        feats.append({"type": "Feature", "properties": {"id": k}, "geometry": {"type": "Polygon", "coordinates": [sq]}})
    (sol / "geotiff_labels.geojson").write_text(json.dumps({
        "type": "FeatureCollection", "crs": {"type": "name", "properties": {"name": "urn:ogc:def:crs:EPSG::32616"}},
        "features": feats}))
    write_tif(sol / "sample_fp_mask.tif", np.zeros((atlanta_px, atlanta_px), np.uint8), None, None)
    lv_tf = Affine(2.7e-6, 0, -115.2338, 0, -2.7e-6, 36.1423)
    write_tif(sol / "road_mask_input.tif", rng.integers(1, 2047, (lasvegas_px, lasvegas_px)).astype(np.uint16), "EPSG:4326", lv_tf)
    mask = np.zeros((lasvegas_px, lasvegas_px), np.uint8)
    mask[40:46, :] = 255
    mask[:, 20:24] = 255
    write_tif(sol / "sample_road_raster_mask.tif", mask, "EPSG:4326", lv_tf)
    (sol / "sample_roads.geojson").write_text(json.dumps({
        "type": "FeatureCollection", "crs": {"type": "name", "properties": {"name": "urn:ogc:def:crs:OGC:1.3:CRS84"}},
        "features": [{"type": "Feature", "properties": {}, "geometry": {"type": "LineString",
                      "coordinates": [[-115.3, 36.15], [-115.29, 36.16]]}}]}))
    make_neon(root / "deepforest", rng, neon_px)
    (root / "LICENSE.md").write_text("fake sample for tests\n")
    return root


NEON_IMAGES = ("OSBS_029.tif", "2019_YELL_2_528000_4978000_image_crop2.png", "2019_YELL_2_541000_4977000_image_crop.png",
               "SOAP_061.png")
# Tree boxes of each fake NEON image (native 0.1 m pixels, xmin ymin xmax ymax, the image at least 64 px). At
# res 0.2 (factor 2) in 16 px tiles (SMALL_SOURCES): the first lies in tile (0, 0) at (1.5, 2.5, 13.5, 14.5); the
# second, (10, 20, 20, 28) in the scene, straddles the border x = 16 between tiles (16, 0), which holds 60 % of it,
# and (16, 16), which holds 40 %; the third lies in tile (16, 16) at (2, 2, 14, 14); SOAP_061's fourth in tile (0, 16).
_TREES = [(3, 5, 27, 29), (20, 40, 40, 56), (36, 36, 60, 60)]
NEON_BOXES: dict[str, list[tuple[str, tuple[int, int, int, int]]]] = {
    **{name: [("Tree", b) for b in _TREES] for name in NEON_IMAGES[:3]},
    "SOAP_061.png": [("Alive", _TREES[0]), ("Alive", _TREES[1]), ("Dead", _TREES[2]), ("Dead", (40, 4, 60, 22))],
}


def voc_xml(filename: str, size: tuple[int, int] | None, objects, bndbox: str | None = None) -> str:
    """Pascal-VOC XML text (deepforest's layout) of ``objects`` ``[(name, (xmin, ymin, xmax, ymax))]``;
    ``bndbox`` replaces the first object's ``<bndbox>`` element text (malformed-input tests)."""
    size_xml = f"<size><width>{size[0]}</width><height>{size[1]}</height><depth>3</depth></size>" if size else ""
    objs = []
    for k, (name, (x0, y0, x1, y1)) in enumerate(objects):
        box = bndbox if bndbox is not None and k == 0 else (
            f"<bndbox><xmin>{x0}</xmin><ymin>{y0}</ymin><xmax>{x1}</xmax><ymax>{y1}</ymax></bndbox>")
        objs.append(f"<object><name>{name}</name><pose>Unspecified</pose><truncated>0</truncated>"
                    f"<difficult>0</difficult>{box}</object>")
    return f"<annotation><folder>data</folder><filename>{filename}</filename>{size_xml}<segmented>0</segmented>{''.join(objs)}</annotation>\n"


def make_neon(folder: Path, rng: np.random.Generator, px: int = 64) -> None:
    """Fake NEON RGB: one georeferenced 3-band GeoTIFF (UTM, 0.1 m) and three PNGs without a CRS,
    each with its VOC XML (``<image stem>.xml``) of the :data:`NEON_BOXES` trees."""
    from PIL import Image

    assert px >= 64, "the fake tree boxes need images of at least 64 px"
    folder.mkdir(parents=True, exist_ok=True)
    write_tif(folder / "OSBS_029.tif", rng.integers(0, 256, (3, px, px)).astype(np.uint8), "EPSG:32617",
              Affine(0.1, 0, 404000.0, 0, -0.1, 3285000.0))
    for name in NEON_IMAGES[1:]:
        Image.fromarray(rng.integers(0, 256, (px, px, 3)).astype(np.uint8)).save(folder / name)
    for name in NEON_IMAGES:
        (folder / name).with_suffix(".xml").write_text(voc_xml(name, (px, px), NEON_BOXES[name]))


# Small tiles so the fakes give tiles in every source (``prepare.sources`` blocks).
SMALL_SOURCES = {
    "autzen": dict(tile=16, stride=8, block=16),
    "ign": dict(tile=16, stride=8, block=16, min_density=1.0),
    "rotterdam": dict(tile=16, stride=16, block=32),
    "atlanta": dict(tile=32, stride=16, block=32),
    "lasvegas": dict(tile=32, stride=32, block=32),
    "neon": dict(res=0.2, tile=16, stride=16, block=32),
}


def small_sources(*names: str, **overrides: dict) -> dict[str, dict]:
    """The ``sources`` mapping with the small blocks of ``names`` (all sources if none),
    each updated by ``overrides[name]``, e.g. ``small_sources("rotterdam", rotterdam={"stride": 4})``."""
    unknown = set(overrides) - set(names or SMALL_SOURCES)
    assert not unknown, f"overrides for unselected sources {unknown}"
    return {n: {**SMALL_SOURCES[n], **overrides.get(n, {})} for n in (names or SMALL_SOURCES)}


SMALL = dict(sources=small_sources(), max_nodata=0.3, change_per_tile=2, min_box_pixels=8)
