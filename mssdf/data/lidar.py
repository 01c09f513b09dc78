"""Airborne-lidar (LAS/LAZ) reading and rasterisation into aligned RGB / NIR / DSM / DTM / nDSM / class grids.

Gridding rules (documented here once, used everywhere):

* Units. The CRS's linear unit is read from the file's WKT (or GeoTIFF keys) and every
  coordinate and height is converted to metres (factor from the CRS, never hard-coded;
  heights use the horizontal unit unless the file declares a vertical unit). A projected
  CRS in feet is rewritten as the same projection in metres (false easting/northing
  scaled) and the rewrite is verified by projecting a point both ways; if that check
  fails the native CRS is kept and the grid is laid out in native units (cells still
  ``res`` metres wide).
* Grid. Cells of ``res`` metres, origin snapped to a multiple of ``res``; a point at
  ``(x, y)`` falls in column ``floor((x - x0) / res)`` and row ``floor((y0 - y) / res)``.
  Noise classes (7, 18) are dropped. Optionally only dense areas are kept
  (``min_density`` points/m^2 in ``density_block`` m blocks; the grid is cropped to
  the bounding box of the dense blocks).
* DSM: the highest point per cell. Class: the class of that highest point (what is
  seen from above). RGB / NIR: the mean colour of all points in the cell (LAS colours
  above 255 are 16-bit and are divided by 256 for ``rgb``; ``nir`` stays raw).
* Holes: empty cells form connected components (4-connectivity); components of at most
  ``max_hole_px`` cells are filled from the nearest filled cell (DSM, RGB, NIR), larger
  ones stay no data (NaN). Class holes are never filled (label = none).
* DTM: mean height of ground points (class 2) per cell; cells without ground points
  are interpolated linearly (Delaunay on ground-cell centres) inside the ground points'
  hull and from the nearest ground cell outside it, only where the DSM has data.
* nDSM = DSM - DTM, clipped at 0 (small negatives come from the interpolated DTM).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from scipy import ndimage

from mssdf.data.io import DataError

NOISE_CLASSES = (7, 18)
GROUND_CLASS = 2


@dataclass(frozen=True)
class PointCloud:
    """Points in metres. ``x, y, z``: (N,) float64; ``classification``: (N,) uint8;
    ``rgb``: (N, 3) float32 in 0-255 or None; ``nir``: (N,) float32 raw or None."""

    path: Path
    x: np.ndarray
    y: np.ndarray
    z: np.ndarray
    classification: np.ndarray
    rgb: np.ndarray | None
    nir: np.ndarray | None
    crs: object  # rasterio CRS of x/y (metric unless the rewrite failed, see ``native_units``)
    unit_factor: float  # native horizontal unit -> metres
    vertical_factor: float  # native vertical unit -> metres
    native_units: bool = False  # True: x/y stayed in the native CRS units (fallback)
    rgb_scale: float = 1.0  # raw LAS colour / rgb_scale = 0-255 value


@dataclass(frozen=True)
class Grid:
    """A north-up grid: ``transform`` (affine, CRS units), ``height`` x ``width`` cells."""

    x0: float
    y0: float
    cell: float  # cell size in CRS units
    height: int
    width: int

    @property
    def transform(self):
        from rasterio.transform import Affine

        return Affine(self.cell, 0.0, self.x0, 0.0, -self.cell, self.y0)


@dataclass
class LidarRasters:
    """Rasterised lidar, every array on ``grid``. Shapes: rgb (3, H, W) float32 0-255,
    nir (1, H, W) float32 raw or None, dsm/dtm/ndsm (1, H, W) float32 metres (NaN = no
    data), cls (H, W) uint8 LAS class of the highest point (0 = no point), count (H, W)."""

    grid: Grid
    crs: object
    rgb: np.ndarray | None
    nir: np.ndarray | None
    dsm: np.ndarray
    dtm: np.ndarray
    ndsm: np.ndarray
    cls: np.ndarray
    count: np.ndarray
    info: dict = field(default_factory=dict)


# ----------------------------------------------------------------------------- CRS and units
def _las_crs(header, path: Path):
    """The file's CRS (rasterio) from its WKT VLR, else the GeoTIFF keys' EPSG code."""
    from rasterio.crs import CRS
    from rasterio.errors import CRSError

    for vlr in list(header.vlrs) + list(getattr(header, "evlrs", None) or []):
        if type(vlr).__name__ == "WktCoordinateSystemVlr" and getattr(vlr, "string", "").strip():
            try:
                return CRS.from_wkt(vlr.string.strip("\x00 "))
            except CRSError as err:
                raise DataError(f"{path}: unreadable WKT CRS ({err})") from err
    for vlr in header.vlrs:
        if type(vlr).__name__ == "GeoKeyDirectoryVlr":
            keys = {k.id: k.value_offset for k in vlr.geo_keys}
            code = keys.get(3072) or keys.get(2048)  # ProjectedCSType, GeographicType
            if code and code != 32767:
                return CRS.from_epsg(code)
    raise DataError(f"{path}: no coordinate reference system (no WKT or EPSG GeoKey)")


_VERTICAL_UNITS = {9001: 1.0, 9002: 0.3048, 9003: 1200.0 / 3937.0}


def _vertical_factor(header, horizontal: float) -> float:
    """Height unit -> metres: GeoKey 4099 (VerticalUnits) if present, else the horizontal unit."""
    for vlr in header.vlrs:
        if type(vlr).__name__ == "GeoKeyDirectoryVlr":
            keys = {k.id: k.value_offset for k in vlr.geo_keys}
            if keys.get(4099) in _VERTICAL_UNITS:
                return _VERTICAL_UNITS[keys[4099]]
    return horizontal


def _split_top_level(body: str) -> list[str]:
    """Split the inside of a WKT node at depth-0 commas."""
    parts, depth, start = [], 0, 0
    for i, ch in enumerate(body):
        if ch == "[":
            depth += 1
        elif ch == "]":
            depth -= 1
        elif ch == "," and depth == 0:
            parts.append(body[start:i])
            start = i + 1
    parts.append(body[start:])
    return parts


def metric_crs(crs, factor: float):
    """The same projected CRS with metres as unit (coordinates scale by ``factor``).

    Rewrites the WKT1 PROJCS unit and scales false easting/northing; returns None if the
    CRS is not a WKT1 PROJCS or the rewrite does not reproduce the original projection
    to within 1 mm.
    """
    from rasterio.crs import CRS
    from rasterio.warp import transform as warp

    if factor == 1.0:
        return crs
    wkt = crs.to_wkt(version="WKT1_GDAL")
    m = re.fullmatch(r"\s*PROJCS\[(.*)\]\s*", wkt, flags=re.S)
    if not m:
        return None
    parts = _split_top_level(m.group(1))
    out = []
    for part in parts:
        p = part.strip()
        pm = re.fullmatch(r'PARAMETER\["(false_easting|false_northing)",\s*([-+0-9.eE]+)\]', p)
        if pm:
            p = f'PARAMETER["{pm.group(1)}",{float(pm.group(2)) * factor!r}]'
        elif p.startswith("UNIT["):
            p = 'UNIT["metre",1,AUTHORITY["EPSG","9001"]]'
        elif p.startswith("AUTHORITY["):
            continue  # the EPSG code named the feet CRS
        out.append(p)
    try:
        new = CRS.from_wkt("PROJCS[" + ",".join(out) + "]")
    except Exception:  # noqa: BLE001 - any PROJ failure means "keep native units"
        return None
    xs, ys = [1.0e6, 1.2e6], [0.5e6, 0.9e6]  # check on two points in native units
    try:
        lon_a, lat_a = warp(crs, "EPSG:4326", xs, ys)
        lon_b, lat_b = warp(new, "EPSG:4326", [v * factor for v in xs], [v * factor for v in ys])
    except Exception:  # noqa: BLE001
        return None
    if np.max(np.abs(np.subtract(lon_a, lon_b))) > 1e-8 or np.max(np.abs(np.subtract(lat_a, lat_b))) > 1e-8:
        return None
    return new


def read_las(path: str | Path) -> PointCloud:
    """Read a LAS/LAZ file into metres (see the module docstring for the unit rules).

    Raises:
        DataError: missing/unreadable file, no CRS, a geographic CRS, or no points.
    """
    import laspy

    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: file not found")
    try:
        las = laspy.read(path)
    except Exception as err:  # laspy raises several types for corrupt/truncated files
        raise DataError(f"{path}: not a readable LAS/LAZ file (truncated or corrupt?): {err}") from err
    if len(las.points) == 0:
        raise DataError(f"{path}: contains no points")
    crs = _las_crs(las.header, path)
    if not crs.is_projected:
        raise DataError(f"{path}: CRS {crs} is not projected; a metric/feet projected CRS is required")
    unit, factor = crs.linear_units_factor
    vfactor = _vertical_factor(las.header, factor)
    metric = metric_crs(crs, factor)
    native = metric is None
    hf = 1.0 if native else factor
    dims = set(las.point_format.dimension_names)
    rgb = nir = None
    scale = 1.0
    if {"red", "green", "blue"} <= dims:
        rgb = np.stack([np.asarray(las.red), np.asarray(las.green), np.asarray(las.blue)], 1).astype(np.float32)
        scale = 256.0 if rgb.max() > 255 else 1.0
        rgb = np.minimum(rgb / scale, 255.0)
    if "nir" in dims:
        nir = np.asarray(las.nir).astype(np.float32)
    z = np.asarray(las.z, dtype=np.float64) * vfactor
    if not np.all(np.isfinite(z)):
        raise DataError(f"{path}: non-finite heights")
    return PointCloud(
        path=path,
        x=np.asarray(las.x, dtype=np.float64) * hf,
        y=np.asarray(las.y, dtype=np.float64) * hf,
        z=z,
        classification=np.asarray(las.classification, dtype=np.uint8),
        rgb=rgb,
        nir=nir,
        crs=crs if native else metric,
        unit_factor=factor,
        vertical_factor=vfactor,
        native_units=native,
        rgb_scale=scale,
    )


# ----------------------------------------------------------------------------- gridding
def dense_mask(x: np.ndarray, y: np.ndarray, block: float, min_density: float) -> np.ndarray:
    """Points lying in ``block``-sized squares holding at least ``min_density`` points per unit^2."""
    bx = np.floor(x / block).astype(np.int64)
    by = np.floor(y / block).astype(np.int64)
    _, inverse, counts = np.unique(np.stack([bx, by], 1), axis=0, return_inverse=True, return_counts=True)
    return (counts / block**2 >= min_density)[inverse.ravel()]


def make_grid(x: np.ndarray, y: np.ndarray, cell: float) -> Grid:
    """The snapped grid covering the points (``cell`` in CRS units)."""
    x0 = np.floor(x.min() / cell) * cell
    y0 = np.ceil(y.max() / cell) * cell
    if y0 == y.max():
        y0 += cell
    width = int(np.floor((x.max() - x0) / cell)) + 1
    height = int(np.floor((y0 - y.min()) / cell)) + 1
    return Grid(float(x0), float(y0), float(cell), height, width)


def cell_of(grid: Grid, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Flat cell index (row * width + col) of each point; -1 outside the grid."""
    col = np.floor((x - grid.x0) / grid.cell).astype(np.int64)
    row = np.floor((grid.y0 - y) / grid.cell).astype(np.int64)
    inside = (col >= 0) & (col < grid.width) & (row >= 0) & (row < grid.height)
    return np.where(inside, row * grid.width + col, -1)


def _mean_per_cell(idx: np.ndarray, values: np.ndarray, n: int, counts: np.ndarray) -> np.ndarray:
    """(n,) mean of ``values`` per cell, NaN where a cell has no point."""
    sums = np.bincount(idx, weights=values, minlength=n)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(counts > 0, sums / np.maximum(counts, 1), np.nan)


def small_holes(empty: np.ndarray, max_hole_px: int) -> np.ndarray:
    """(H, W) bool: empty cells in 4-connected empty components of at most ``max_hole_px`` cells."""
    if max_hole_px <= 0 or not empty.any():
        return np.zeros_like(empty)
    labels, n = ndimage.label(empty)
    sizes = np.bincount(labels.ravel(), minlength=n + 1)
    small = sizes <= max_hole_px
    small[0] = False
    return small[labels]


def fill_nearest(arr: np.ndarray, fill: np.ndarray) -> np.ndarray:
    """Copy of ``arr`` (C, H, W) with cells in ``fill`` (H, W) taken from the nearest valid cell."""
    valid = np.all(np.isfinite(arr), axis=0)
    if not fill.any() or not valid.any():
        return arr
    _, (ri, ci) = ndimage.distance_transform_edt(~valid, return_indices=True)
    out = arr.copy()
    out[:, fill] = arr[:, ri[fill], ci[fill]]
    return out


def interpolate_dtm(ground: np.ndarray, where: np.ndarray) -> np.ndarray:
    """Fill ``ground`` (H, W; NaN = no ground point) at ``where`` cells: linear inside the
    hull of ground cells, nearest ground cell outside; NaN elsewhere."""
    from scipy.interpolate import LinearNDInterpolator

    have = np.isfinite(ground)
    out = np.where(have & where, ground, np.nan)
    todo = where & ~have
    if not todo.any() or not have.any():
        return out
    rows, cols = np.nonzero(have)
    qr, qc = np.nonzero(todo)
    values = ground[rows, cols]
    if len(rows) >= 3 and np.linalg.matrix_rank(np.stack([rows, cols, np.ones_like(rows)], 1).astype(float)) == 3:
        lin = LinearNDInterpolator(np.stack([rows, cols], 1), values)(qr, qc)
    else:
        lin = np.full(len(qr), np.nan)
    miss = ~np.isfinite(lin)
    if miss.any():
        _, (ri, ci) = ndimage.distance_transform_edt(~have, return_indices=True)
        lin[miss] = ground[ri[qr[miss], qc[miss]], ci[qr[miss], qc[miss]]]
    out[qr, qc] = lin
    return out


def rasterise(
    pc: PointCloud,
    res: float = 1.0,
    max_hole_px: int = 4,
    min_density: float | None = None,
    density_block: float = 10.0,
) -> LidarRasters:
    """Rasterise a point cloud at ``res`` metres (rules in the module docstring).

    Returns:
        :class:`LidarRasters`; arrays are (C, H, W) or (H, W) on ``grid``.

    Raises:
        DataError: no points left after noise removal / density cropping, or no ground points.
    """
    keep = ~np.isin(pc.classification, NOISE_CLASSES)
    cell = res / pc.unit_factor if pc.native_units else res
    if min_density is not None:
        block = density_block / pc.unit_factor if pc.native_units else density_block
        density = min_density * (pc.unit_factor**2 if pc.native_units else 1.0)
        keep &= dense_mask(pc.x, pc.y, block, density)
    if not keep.any():
        raise DataError(f"{pc.path}: no points left after removing noise / sparse areas")
    x, y, z, cls = pc.x[keep], pc.y[keep], pc.z[keep], pc.classification[keep]
    grid = make_grid(x, y, cell)
    n = grid.height * grid.width
    idx = cell_of(grid, x, y)
    counts = np.bincount(idx, minlength=n)
    # highest point per cell: sort by (cell, z) and take the last of each cell's run
    order = np.lexsort((z, idx))
    last = np.r_[idx[order][1:] != idx[order][:-1], True]
    top = order[last]
    dsm = np.full(n, np.nan)
    dsm[idx[top]] = z[top]
    top_cls = np.zeros(n, np.uint8)
    top_cls[idx[top]] = cls[top]
    shape = (grid.height, grid.width)
    empty = counts.reshape(shape) == 0
    holes = small_holes(empty, max_hole_px)

    dsm = fill_nearest(dsm.reshape(1, *shape), holes)
    rgb = nir = None
    if pc.rgb is not None:
        rgb = np.stack([_mean_per_cell(idx, pc.rgb[keep][:, b], n, counts) for b in range(3)]).reshape(3, *shape)
        rgb = fill_nearest(rgb, holes).astype(np.float32)
    if pc.nir is not None:
        nir = _mean_per_cell(idx, pc.nir[keep], n, counts).reshape(1, *shape)
        nir = fill_nearest(nir, holes).astype(np.float32)

    ground = cls == GROUND_CLASS
    if not ground.any():
        raise DataError(f"{pc.path}: no ground points (class {GROUND_CLASS}); cannot build a DTM")
    g_counts = np.bincount(idx[ground], minlength=n)
    ground_mean = _mean_per_cell(idx[ground], z[ground], n, g_counts).reshape(shape)
    dtm = interpolate_dtm(ground_mean, np.isfinite(dsm[0]))[None]
    ndsm = np.clip(dsm - dtm, 0.0, None)
    info = {
        "points": int(keep.sum()),
        "filled_fraction": float((~empty).mean()),
        "holes_filled": int(holes.sum()),
        "unit_factor": pc.unit_factor,
        "vertical_factor": pc.vertical_factor,
        "native_units": pc.native_units,
    }
    return LidarRasters(
        grid=grid,
        crs=pc.crs,
        rgb=rgb,
        nir=nir,
        dsm=dsm.astype(np.float32),
        dtm=dtm.astype(np.float32),
        ndsm=ndsm.astype(np.float32),
        cls=top_cls.reshape(shape),
        count=counts.reshape(shape).astype(np.int32),
        info=info,
    )
