"""The raw sources of the embedded real sample (``data/raw``), one block per source.

Each block declares, in one :class:`Source`: the raw files the source needs (relative to
``raw_dir``), its settings' defaults (which are also the keys its ``prepare.sources.<name>``
block accepts: a key whose default is ``None`` is not a setting of that source), the band
names of its arrays (a source with an ``ndsm`` entry gets its DSM and nDSM files on every
index row: :data:`mssdf.data.tasks.EXTRA_FILES`), its input checks beyond the common ones,
its no-data fallback and its loader, which turns the raw files into aligned :class:`Scene`
objects. Adding a source is adding one block here (and its tasks in
:mod:`mssdf.data.tasks`); append it after the others, since a source's position seeds its
spatial split.

No data in the raster sources, one rule for all (:func:`mssdf.data.io.nodata_to_nan`):
NaN, the header's nodata value, or - for files that declare none - the source's
``nodata_fallback``. The SpaceNet images use 0 outside the imaged area (Rotterdam
pan2/ms2 have such a border, undeclared).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Protocol

import numpy as np

from mssdf.config import ConfigError, from_dict
from mssdf.data import labels as L
from mssdf.data.align import align_pair
from mssdf.data.io import IGNORE_INDEX, DataError, check_aligned, raster_info, read_nan, read_raster
from mssdf.data.lidar import read_las, rasterise


@dataclass(frozen=True)
class SourceSettings:
    """One source's block of ``prepare.sources``; ``None``: the source's default.

    Attributes:
        tile, stride, block: window size, window step and spatial-split block size in
            pixels (every source; tile >= 8, 1 <= stride <= tile, block >= tile).
        res: grid resolution in metres per pixel (sources that resample: autzen, ign,
            rotterdam; the others keep their native grid).
        min_density: lidar points per m^2 a 10 m block needs to be kept (ign).
    """

    tile: int | None = None
    stride: int | None = None
    block: int | None = None
    res: float | None = None
    min_density: float | None = None


@dataclass
class Scene:
    """One aligned scene: ``arrays[key]`` (C, H, W) float32 (labels (1, H, W)); ``valid`` (H, W).

    ``res_m``: metres per pixel of the scene's grid, as the index reports it.
    """

    source: str
    name: str
    crs: Any
    transform: Any
    res_m: float
    arrays: dict[str, np.ndarray]
    valid: np.ndarray
    instances: np.ndarray | None = None  # (H, W) int32 object ids (Atlanta buildings)
    files: tuple[Path, ...] = ()
    notes: dict[str, Any] = field(default_factory=dict)
    boxes: np.ndarray | None = None  # (K, 4) float64 annotated boxes x0, y0, x1, y1 in scene pixels (NEON crowns)
    box_labels: np.ndarray | None = None  # (K,) int64 their class ids


class Loader(Protocol):
    """``load(paths, settings, max_hole_px=...)``: ``paths`` are the source's ``raw_files``
    under ``raw_dir``, in order; ``settings`` its resolved :class:`SourceSettings`;
    ``max_hole_px`` the largest lidar hole (pixels) filled when rasterising (sources that
    rasterise points use it, the others ignore it)."""

    def __call__(self, paths: tuple[Path, ...], s: SourceSettings, *, max_hole_px: int) -> list[Scene]: ...


@dataclass(frozen=True)
class Source:
    """Everything about one raw source (see the module docstring)."""

    name: str
    raw_files: tuple[str, ...]
    defaults: SourceSettings
    bands: Mapping[str, list[str]]
    load: Loader
    check: Callable[[tuple[Path, ...]], None] | None = None  # checks beyond presence and readability
    nodata_fallback: float | None = None
    validate: Callable[[SourceSettings, str], None] | None = None  # source-specific setting rules (ConfigError)

    @property
    def accepts(self) -> tuple[str, ...]:
        """The keys of the source's settings block (those with a default)."""
        return tuple(f.name for f in dataclasses.fields(SourceSettings) if getattr(self.defaults, f.name) is not None)

    def block(self, s: SourceSettings) -> dict[str, Any]:
        """``s`` as this source's settings block: only the keys it accepts (none left ``None``)."""
        return {k: getattr(s, k) for k in self.accepts}

    def paths(self, raw: Path) -> tuple[Path, ...]:
        return tuple(Path(raw) / rel for rel in self.raw_files)

    def settings(self, given: SourceSettings, path: str) -> SourceSettings:
        """``given`` with the source's defaults filled in, validated.

        Raises:
            ConfigError: naming ``<path>.<key>``: a key the source does not accept, or a
                bad tile / stride / block / res.
        """
        accepts = self.accepts
        for f in dataclasses.fields(SourceSettings):
            if getattr(given, f.name) is not None and f.name not in accepts:
                raise ConfigError(f"{path}.{f.name}: not a setting of source {self.name!r} (it accepts {', '.join(accepts)})")
        s = dataclasses.replace(self.defaults, **{k: v for k, v in dataclasses.asdict(given).items() if v is not None})
        if s.tile < 8 or s.stride < 1 or s.stride > s.tile:
            raise ConfigError(f"{path}.tile={s.tile}, {path}.stride={s.stride}: need tile >= 8 and 1 <= stride <= tile")
        if s.block < s.tile:
            raise ConfigError(f"{path}.block={s.block} must be at least {path}.tile={s.tile}")
        if s.res is not None and not s.res > 0:
            raise ConfigError(f"{path}.res={s.res} must be positive (metres per pixel)")
        if self.validate is not None:
            self.validate(s, path)
        return s


SOURCES: dict[str, Source] = {}  # name -> Source, in declaration order


def _register(source: Source) -> Source:
    """Add ``source`` to :data:`SOURCES`.

    Raises:
        ValueError: a name already registered, or defaults lacking tile / stride / block
            (every source's windows need them).
    """
    if source.name in SOURCES:
        raise ValueError(f"source {source.name!r} is declared twice in mssdf.data.sources")
    missing = sorted({"tile", "stride", "block"} - set(source.accepts))
    if missing:
        raise ValueError(f"source {source.name!r}: its defaults must set {', '.join(missing)} (every source's windows need them)")
    SOURCES[source.name] = source
    return source


def _read_pan(path: Path, source: Source) -> tuple[np.ndarray, np.ndarray]:
    """A one-band image (no data as NaN, ``source.nodata_fallback`` where the file declares
    none) and its valid-pixel mask (H, W); an image with no valid pixel raises DataError."""
    pan = read_nan(path, expected_bands=1, fallback_nodata=source.nodata_fallback)
    valid = np.isfinite(pan[0])
    if not valid.any():
        raise DataError(f"{path}: every pixel is no data")
    return pan, valid


# ----------------------------------------------------------------------------- autzen
def load_autzen(paths: tuple[Path, ...], s: SourceSettings, *, max_hole_px: int) -> list[Scene]:
    """Autzen lidar -> rgb, dsm, ndsm (and dtm) at ``res`` m; heights in metres."""
    (path,) = paths
    r = rasterise(read_las(path), res=s.res, max_hole_px=max_hole_px)
    if r.rgb is None:
        raise DataError(f"{path}: points carry no RGB")
    valid = np.isfinite(r.dsm[0]) & np.isfinite(r.ndsm[0]) & np.all(np.isfinite(r.rgb), 0)
    arrays = {"rgb": r.rgb, "dsm": r.dsm, "ndsm": r.ndsm, "dtm": r.dtm}
    return [Scene("autzen", "autzen", r.crs, r.grid.transform, s.res, arrays, valid, files=(path,), notes=r.info)]


AUTZEN = _register(Source(
    "autzen", ("laspy/autzen_trim.laz",), SourceSettings(res=1.0, tile=64, stride=16, block=96),
    {"rgb": ["red", "green", "blue"], "dsm": ["dsm_m"], "ndsm": ["ndsm_m"], "height": ["ndsm_m"]}, load_autzen,
))


# ----------------------------------------------------------------------------- ign
def load_ign(paths: tuple[Path, ...], s: SourceSettings, *, max_hole_px: int) -> list[Scene]:
    """IGN lidar -> rgb, ms (B, G, R, NIR raw), dsm, ndsm, ASPRS label at ``res`` m."""
    (path,) = paths
    pc = read_las(path)
    r = rasterise(pc, res=s.res, max_hole_px=max_hole_px, min_density=s.min_density)
    if r.rgb is None or r.nir is None:
        raise DataError(f"{path}: points carry no RGB and NIR")
    label = L.map_asprs(r.cls, path)
    raw_rgb = r.rgb * np.float32(pc.rgb_scale)
    ms = np.concatenate([raw_rgb[::-1], r.nir]).astype(np.float32)
    valid = np.isfinite(r.dsm[0]) & np.isfinite(r.ndsm[0]) & np.all(np.isfinite(ms), 0)
    label = np.where(valid, label, IGNORE_INDEX).astype(np.uint8)
    arrays = {"rgb": r.rgb, "ms": ms, "dsm": r.dsm, "ndsm": r.ndsm, "dtm": r.dtm, "label": label[None]}
    return [Scene("ign", "ign", r.crs, r.grid.transform, s.res, arrays, valid, files=(path,), notes=r.info)]


IGN = _register(Source(
    "ign", ("laspy/append-bug.laz",), SourceSettings(res=0.5, min_density=2.0, tile=32, stride=8, block=32),
    {"rgb": ["red", "green", "blue"], "ms": ["blue", "green", "red", "nir"], "dsm": ["dsm_m"], "ndsm": ["ndsm_m"]}, load_ign,
))


# ----------------------------------------------------------------------------- rotterdam
def _rotterdam_pairs(paths: tuple[Path, ...]) -> list[tuple[Path, Path]]:
    """(pan, ms) per scene: the raw files alternate pan{i}, ms{i}."""
    return list(zip(paths[::2], paths[1::2]))


def check_rotterdam(paths: tuple[Path, ...]) -> None:
    for pan_p, ms_p in _rotterdam_pairs(paths):
        raster_info(pan_p, expected_bands=1)
        raster_info(ms_p, expected_bands=4)


def load_rotterdam(paths: tuple[Path, ...], s: SourceSettings, *, max_hole_px: int) -> list[Scene]:
    """Three SpaceNet 6 pan (0.5 m) / MS (1 m) pairs on a common grid at ``res`` m."""
    scenes = []
    for i, (pan_p, ms_p) in enumerate(_rotterdam_pairs(paths), 1):
        pan, ms, grid = align_pair(pan_p, ms_p, s.res, 1, 4, zero_is_nodata=ROTTERDAM.nodata_fallback == 0)
        valid = np.isfinite(pan[0]) & np.all(np.isfinite(ms), 0)
        if not valid.any():
            raise DataError(f"{pan_p}: no valid pixel shared with its partner {ms_p} (all no data)")
        scenes.append(Scene("rotterdam", f"rotterdam{i}", grid.crs, grid.affine, s.res, {"pan": pan, "ms": ms}, valid,
                            files=(pan_p, ms_p)))
    return scenes


ROTTERDAM = _register(Source(
    "rotterdam", tuple(f"solaris/preproc_tutorial/{k}{i}.tif" for i in (1, 2, 3) for k in ("pan", "ms")),
    SourceSettings(res=0.5, tile=64, stride=64, block=128),
    {"pan": ["pan"], "ms": ["blue", "green", "red", "nir"]}, load_rotterdam, check_rotterdam, nodata_fallback=0.0,
))


# ----------------------------------------------------------------------------- atlanta
def check_atlanta(paths: tuple[Path, ...]) -> None:
    img_p, gj_p = paths
    raster_info(img_p, expected_bands=1)
    L.read_geojson(gj_p)


def load_atlanta(paths: tuple[Path, ...], s: SourceSettings, *, max_hole_px: int) -> list[Scene]:
    """SpaceNet 4 Atlanta pan + rasterised footprints (label, instance ids), native grid."""
    img_p, gj_p = paths
    mask_p = img_p.with_name("sample_fp_mask.tif")  # optional, only compared with (see notes)
    info = raster_info(img_p)
    pan, valid = _read_pan(img_p, ATLANTA)
    features, fcrs = L.read_geojson(gj_p)
    from rasterio.transform import Affine

    transform = Affine(*info.transform)
    inst = L.rasterise_features(features, fcrs, info.crs, transform, (info.height, info.width))
    label = np.where(valid, inst > 0, IGNORE_INDEX).astype(np.uint8)
    notes = {"footprints": len(features), "building_fraction": float((inst > 0).mean())}
    if mask_p.is_file():  # the solaris fixture mask: it does NOT match this image (IoU ~0.04), so it is not used
        ref = L.mask_to_label(read_raster(mask_p, expected_bands=1, dtype=np.uint8)[0], mask_p)
        inter, union = np.logical_and(ref == 1, inst > 0).sum(), np.logical_or(ref == 1, inst > 0).sum()
        notes["iou_with_sample_fp_mask"] = float(inter / max(union, 1))
    return [Scene("atlanta", "atlanta", info.crs, transform, float(abs(transform.a)), {"pan": pan, "label": label[None]},
                  valid, inst, paths, notes)]


ATLANTA = _register(Source(
    "atlanta", ("solaris/sample_geotiff.tif", "solaris/geotiff_labels.geojson"), SourceSettings(tile=64, stride=64, block=128),
    {"pan": ["pan"], "pan_t2": ["pan"]}, load_atlanta, check_atlanta, nodata_fallback=0.0,
))


# ----------------------------------------------------------------------------- lasvegas
def check_lasvegas(paths: tuple[Path, ...]) -> None:
    img_p, mask_p, _ = paths
    check_aligned([raster_info(img_p, expected_bands=1), raster_info(mask_p, expected_bands=1)])


def load_lasvegas(paths: tuple[Path, ...], s: SourceSettings, *, max_hole_px: int) -> list[Scene]:
    """SpaceNet 3 Las Vegas pan + road mask (kept on its native EPSG:4326 grid)."""
    img_p, mask_p, lines_p = paths
    info = raster_info(img_p)
    check_aligned([info, raster_info(mask_p)])
    pan, valid = _read_pan(img_p, LASVEGAS)
    label = L.mask_to_label(read_raster(mask_p, expected_bands=1, dtype=np.uint8)[0], mask_p)
    label = np.where(valid, label, IGNORE_INDEX).astype(np.uint8)
    from rasterio.transform import Affine, array_bounds

    features, fcrs = L.read_geojson(lines_p)
    xs = [pt[0] for f in features for pt in f["geometry"]["coordinates"]]
    ys = [pt[1] for f in features for pt in f["geometry"]["coordinates"]]
    transform = Affine(*info.transform)
    west, south, east, north = array_bounds(info.height, info.width, transform)
    overlaps = bool(xs) and not (max(xs) < west or min(xs) > east or max(ys) < south or min(ys) > north)
    notes = {"road_fraction": float((label == 1).mean()), "road_lines_overlap_image": overlaps,
             "note": "the road label is the raster mask; sample_roads.geojson lies outside the image" if not overlaps else ""}
    res_m = float(abs(transform.e) * 111_320.0)  # degrees -> metres (north-south), for information only
    return [Scene("lasvegas", "lasvegas", info.crs, transform, res_m, {"pan": pan, "label": label[None]}, valid,
                  files=(img_p, mask_p), notes=notes)]


LASVEGAS = _register(Source(
    "lasvegas", ("solaris/road_mask_input.tif", "solaris/sample_road_raster_mask.tif", "solaris/sample_roads.geojson"),
    SourceSettings(tile=64, stride=64, block=128), {"pan": ["pan"]}, load_lasvegas, check_lasvegas, nodata_fallback=0.0,
))


# ----------------------------------------------------------------------------- neon
NEON_RES = 0.1  # metres per pixel of the NEON airborne RGB mosaics


def _read_rgb(path: Path) -> np.ndarray:
    """``(3, H, W)`` float32 of an 8-bit RGB GeoTIFF or PNG. PNGs are decoded by Pillow,
    which refuses a truncated file (GDAL's PNG driver returns what it could read)."""
    if path.suffix.lower() != ".png":
        return read_raster(path, expected_bands=3)
    from PIL import Image

    try:
        with Image.open(path) as img:
            img.load()
            if img.mode != "RGB":
                raise DataError(f"{path}: expected an 8-bit RGB image, got mode {img.mode}")
            return np.asarray(img, dtype=np.float32).transpose(2, 0, 1).copy()
    except OSError as err:
        raise DataError(f"{path}: not a readable PNG ({err})") from err


def neon_annotations(paths: tuple[Path, ...]) -> dict[Path, L.VocBoxes]:
    """The tree-crown boxes of the NEON images: every ``*.xml`` beside them (Pascal VOC,
    :func:`mssdf.data.labels.read_voc`), keyed by the image it names.

    Raises:
        DataError: naming the XML: unreadable or malformed (see ``read_voc``), an annotation
            without its image (``<filename>`` names no file beside it), an image that is not
            one of the source's, a second annotation of one image, an unknown class name
            (:data:`mssdf.data.labels.TREE_NAMES`).
    """
    folder = paths[0].parent
    images = {p.name: p for p in paths}
    out: dict[Path, L.VocBoxes] = {}
    for xml in sorted(folder.glob("*.xml")):
        ann = L.read_voc(xml)
        if not (folder / ann.filename).is_file():
            raise DataError(f"{xml}: an annotation without its image: <filename> {ann.filename!r} is not in {folder}")
        if ann.filename not in images:
            raise DataError(f"{xml}: annotates {ann.filename!r}, which is not one of the neon source's images "
                            f"({', '.join(images)})")
        image = images[ann.filename]
        if image in out:
            raise DataError(f"{xml}: a second annotation of {ann.filename} (the first is {out[image].path.name})")
        ann.labels(L.TREE_NAMES)
        out[image] = ann
    return out


def check_neon(paths: tuple[Path, ...]) -> None:
    annotations = neon_annotations(paths)
    for p in paths:
        rgb = _read_rgb(p)  # full decode: truncated files fail here, before any work
        if p in annotations:
            annotations[p].check_inside(rgb.shape[2], rgb.shape[1], p)


def block_mean(image: np.ndarray, factor: int) -> np.ndarray:
    """``(C, H, W)`` → ``(C, H // factor, W // factor)`` means of ``factor``² blocks
    (area resampling; the right and bottom remainders are dropped)."""
    c, h, w = image.shape
    hh, ww = h // factor, w // factor
    return image[:, : hh * factor, : ww * factor].reshape(c, hh, factor, ww, factor).mean(axis=(2, 4))


def validate_neon(s: SourceSettings, path: str) -> None:
    """``res`` must be a whole multiple of the native pixels (area resampling by block means)."""
    factor = round(s.res / NEON_RES)
    if factor < 1 or abs(factor * NEON_RES - s.res) > 1e-9:
        raise ConfigError(f"{path}.res={s.res}: must be a whole multiple of the {NEON_RES} m NEON pixels")


def load_neon(paths: tuple[Path, ...], s: SourceSettings, *, max_hole_px: int) -> list[Scene]:
    """NEON airborne RGB (0.1 m; deepforest 2.1.0) → rgb at ``res`` m by block means, with
    the image's tree-crown boxes (:func:`neon_annotations`) when it has an annotation.

    OSBS_029.tif is georeferenced (UTM); the PNG crops are not, and keep a pixel grid
    with no CRS (their tiles carry no map position: no other source overlaps them).

    Boxes: the XML coordinates are pixel edges of the native image (0-based, ``xmax`` /
    ``ymax`` exclusive, as deepforest reads them). Both kinds of grid start at the native
    image's top-left corner and resampled pixel ``j`` covers native pixels ``[j f, (j + 1) f)``
    (``f = res / 0.1``; OSBS_029's transform is its native one scaled by ``f``), so a native
    coordinate ``x`` is ``x / f`` scene pixels. Class ids: :data:`mssdf.data.labels.TREE_NAMES`.
    """
    factor = round(s.res / NEON_RES)  # a whole number (validate_neon)
    from rasterio.transform import Affine

    annotations = neon_annotations(paths)
    scenes = []
    for p in paths:
        info = raster_info(p, expected_bands=3)
        native = _read_rgb(p)
        rgb = block_mean(native, factor).astype(np.float32)
        if info.crs is not None:
            transform = Affine(*info.transform) @ Affine.scale(factor)
        else:
            transform = Affine(s.res, 0.0, 0.0, 0.0, -s.res, 0.0)
        name = "neon_" + p.stem.lower().replace("2019_", "").replace("_image", "")
        notes = {"native_res_m": NEON_RES, "factor": factor, "georeferenced": info.crs is not None}
        boxes = labels = None
        ann = annotations.get(p)
        if ann is not None:
            ann.check_inside(native.shape[2], native.shape[1], p)
            boxes, labels = ann.boxes / factor, ann.labels(L.TREE_NAMES)
            notes.update(annotation=ann.path.name, tree_boxes={c: int((labels == i).sum()) for i, c in enumerate(L.TREE_CLASSES)})
        scenes.append(Scene("neon", name, info.crs, transform, s.res, {"rgb": rgb}, np.all(np.isfinite(rgb), 0),
                            files=(p,) if ann is None else (p, ann.path), notes=notes, boxes=boxes, box_labels=labels))
    return scenes


NEON = _register(Source(
    "neon",
    tuple(f"deepforest/{n}" for n in ("OSBS_029.tif", "2019_YELL_2_528000_4978000_image_crop2.png",
                                      "2019_YELL_2_541000_4977000_image_crop.png", "SOAP_061.png")),
    SourceSettings(res=0.4, tile=64, stride=64, block=128), {"rgb": ["red", "green", "blue"]}, load_neon, check_neon, validate=validate_neon,
))


# ----------------------------------------------------------------------------- all sources
def resolve_settings(given: Mapping[str, SourceSettings | Mapping[str, Any]], path: str = "sources") -> dict[str, SourceSettings]:
    """The selected sources (the keys, order kept), each with its defaults filled in.

    Args:
        given: source name -> its settings block (a :class:`SourceSettings` or a mapping).
        path: the key path of ``given`` in error messages (``prepare.sources``).

    Raises:
        ConfigError: an unknown source (listing the valid ones), no source, or a bad
            block (see :meth:`Source.settings`).
    """
    if not isinstance(given, Mapping):
        raise ConfigError(f"{path}: expected a mapping source name -> settings, got {type(given).__name__} {given!r}")
    unknown = [name for name in given if name not in SOURCES]
    if unknown or not given:
        raise ConfigError(f"{path}: {'unknown source(s) ' + ', '.join(map(str, unknown)) if unknown else 'no source selected'}; "
                          f"valid sources: {', '.join(SOURCES)}")
    out = {}
    for name, block in given.items():
        if not isinstance(block, SourceSettings):
            block = from_dict(SourceSettings, block, f"{path}.{name}")
        out[name] = SOURCES[name].settings(block, f"{path}.{name}")
    return out


def check_inputs(names: Iterable[str], raw: Path) -> None:
    """Validate every raw input the named sources need, cheaply, before any work.

    Raises:
        DataError: missing file (naming its partner), unreadable or truncated raster,
            wrong band count, CRS/size/transform mismatch, unreadable LAS header.
    """
    import laspy

    for name in names:
        source = SOURCES[name]
        paths = source.paths(raw)
        for p in paths:
            if not p.is_file():
                partners = ", ".join(q.name for q in paths if q != p)
                raise DataError(f"{p}: file not found (needed with {partners} for source {name!r}; run `python -m mssdf.data.fetch`)")
        for p in paths:
            if p.suffix == ".laz":
                try:
                    with laspy.open(p) as f:
                        _ = f.header.point_count
                except Exception as err:  # noqa: BLE001 - any laspy failure
                    raise DataError(f"{p}: not a readable LAS/LAZ file ({err})") from err
            elif p.suffix == ".tif":
                read_raster(p)  # full read: truncated pixel data fails here, not mid-run
        if source.check is not None:
            source.check(paths)


def load_scenes(settings: Mapping[str, SourceSettings], raw: Path, *, max_hole_px: int) -> dict[str, list[Scene]]:
    """Every selected source's scenes: ``{name: [Scene, ...]}`` in the order of ``settings``
    (``max_hole_px``: see :class:`Loader`)."""
    return {name: SOURCES[name].load(SOURCES[name].paths(raw), s, max_hole_px=max_hole_px) for name, s in settings.items()}


def split_seed(seed: int, name: str) -> int:
    """The seed of ``name``'s spatial split: ``seed`` plus the source's position."""
    return seed + list(SOURCES).index(name)


__all__ = ["SOURCES", "Loader", "Scene", "Source", "SourceSettings", "check_inputs", "load_scenes", "resolve_settings", "split_seed"]
