"""Shared reader machinery: layout checks, image reading, padding, tensors, the base class.

Sample conventions (every reader):
    * modality keys ``rgb`` (3, H, W), ``ms`` (N, H, W), ``dsm`` (1, H, W): float32 tensors
      of *raw* values (0-255 for 8-bit imagery, sensor units for MS, metres for a DSM or
      raw 8-bit values for an nDSM image); no normalisation (the model normalises).
    * targets: ``label`` int64 (H, W) with 255 = ignore (segmentation) or an int64 scalar
      (scene classification); ``height`` float32 (H, W) with NaN = no data; ``boxes`` /
      ``box_labels`` for detection.
    * ``meta``: a dict of strings/ints (ids, file names, windows) that the default
      collate function can batch.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

from mssdf.config import ConfigError
from mssdf.data.io import DataError, RasterInfo, check_band_count, raster_info, read_raster

Window = tuple[int, int, int, int]  # (row, col, height, width) in pixels
Sample = dict[str, Any]

# Extensions read with Pillow (fast JPEG/PNG decoding, no GDAL side files); the rest via rasterio.
_PIL_EXTS = {".jpg", ".jpeg", ".png", ".bmp"}


# ----------------------------------------------------------------------------- checks
def require_dir(path: Path, layout: str) -> Path:
    """Return ``path`` if it is a folder, else raise a DataError showing the expected layout."""
    if not path.is_dir():
        raise DataError(f"{path}: folder not found; expected layout:\n{layout.strip(chr(10))}")
    return path


def require_file(path: Path, layout: str | None = None, partner: Path | None = None) -> Path:
    """Return ``path`` if it is a file; the error names the partner that needs it."""
    if not path.is_file():
        msg = f"{path}: file not found"
        if partner is not None:
            msg += f" (partner of {partner})"
        if layout:
            msg += f"; expected layout:\n{layout.strip(chr(10))}"
        raise DataError(msg)
    return path


def check_choice(value: Any, choices: Iterable[Any], what: str) -> Any:
    """Raise ConfigError unless ``value`` is one of ``choices``."""
    choices = list(choices)
    if value not in choices:
        raise ConfigError(f"{what}={value!r} is not one of {choices}")
    return value


def check_subset(values: Sequence[str], choices: Sequence[str], what: str) -> tuple[str, ...]:
    """Validate a non-empty, duplicate-free subset of ``choices`` (e.g. modalities)."""
    if isinstance(values, str):
        values = (values,)
    values = tuple(values)
    bad = [v for v in values if v not in choices]
    if bad or not values or len(set(values)) != len(values):
        raise ConfigError(f"{what}={values!r}: expected a non-empty subset of {list(choices)}")
    return values


def check_fraction(value: float, what: str, allow_one: bool = True) -> float:
    """Raise ConfigError unless 0 < value <= 1 (or < 1)."""
    ok = 0 < value <= 1 if allow_one else 0 < value < 1
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not ok:
        raise ConfigError(f"{what}={value!r}: expected a number in (0, 1{']' if allow_one else ')'}")
    return float(value)


def header(path: Path, bands: int | Sequence[int] | None = None, partner: Path | None = None) -> RasterInfo:
    """Read a header (cheap) and check the band count; errors name the file (and partner)."""
    if not path.is_file():
        raise DataError(f"{path}: file not found" + (f" (partner of {partner})" if partner else ""))
    return raster_info(path, expected_bands=bands)


def check_same_size(ref: RasterInfo, other: RasterInfo, width_short_ok: int = 0) -> int:
    """Check ``other`` has ``ref``'s size; return how many columns ``other`` lacks.

    ``width_short_ok`` columns missing on the right are tolerated (Potsdam tile 3_13's DSM).
    """
    short = ref.width - other.width
    if other.height != ref.height or not (0 <= short <= width_short_ok):
        raise DataError(
            f"{other.path}: size {other.height}x{other.width} differs from its partner "
            f"{ref.path} ({ref.height}x{ref.width})"
        )
    return short


# ----------------------------------------------------------------------------- reading
def _pil_read(path: Path) -> np.ndarray:
    from PIL import Image

    try:
        with warnings.catch_warnings(), Image.open(path) as img:
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            if img.mode == "P":
                img = img.convert("RGBA" if "transparency" in img.info else "RGB")
            elif img.mode not in ("L", "RGB", "RGBA", "I", "I;16", "F", "LA", "CMYK"):
                img = img.convert("RGB")
            arr = np.asarray(img)
    except FileNotFoundError as err:
        raise DataError(f"{path}: file not found") from err
    except Image.DecompressionBombError:  # very large scenes (DOTA): GDAL has no such limit
        return read_raster(path, dtype=np.uint16 if path.suffix.lower() == ".png" else np.uint8)
    except (OSError, SyntaxError, ValueError) as err:
        raise DataError(f"{path}: not a readable image (truncated or corrupt?): {err}") from err
    return arr[None] if arr.ndim == 2 else np.moveaxis(arr, -1, 0)


def image_header(path: Path, bands: int | Sequence[int] | None = None, partner: Path | None = None) -> tuple[int, int, int]:
    """``(bands, height, width)`` of an image from its header (Pillow for JPEG/PNG/BMP, else GDAL).

    Palette images count as 3 bands (they are expanded to RGB on reading). Errors name the
    file (and the partner that needs it); ``bands`` = allowed band count(s).
    """
    if path.suffix.lower() not in _PIL_EXTS:
        info = header(path, bands, partner)
        return info.count, info.height, info.width
    from PIL import Image, UnidentifiedImageError

    if not path.is_file():
        raise DataError(f"{path}: file not found" + (f" (partner of {partner})" if partner else ""))
    try:
        with warnings.catch_warnings(), Image.open(path) as img:
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            count = 3 if img.mode == "P" else len(img.getbands())
            width, height = img.size
    except (UnidentifiedImageError, OSError, SyntaxError) as err:
        raise DataError(f"{path}: not a readable image: {err}") from err
    check_band_count(path, count, bands)
    return count, height, width


def read_image(
    path: Path,
    expected_bands: int | Sequence[int] | None = None,
    window: Window | None = None,
    bands: Sequence[int] | None = None,
    dtype: np.dtype | type = np.float32,
) -> np.ndarray:
    """Read an image file as ``(C, H, W)``; JPEG/PNG/BMP via Pillow, others via rasterio.

    Args:
        path: the file.
        expected_bands: allowed band count(s); anything else raises DataError.
        window: optional ``(row, col, height, width)`` (must lie inside the image).
        bands: 1-based band indices to keep.
        dtype: output dtype.
    """
    if path.suffix.lower() in _PIL_EXTS:
        arr = _pil_read(path)
        check_band_count(path, arr.shape[0], expected_bands)
        if window is not None:
            r, c, h, w = window
            arr = arr[:, r : r + h, c : c + w]
        if bands is not None:
            arr = arr[[b - 1 for b in bands]]
        return arr.astype(dtype, copy=False)
    rio_window = None
    if window is not None:
        from rasterio.windows import Window as RioWindow

        r, c, h, w = window
        rio_window = RioWindow(c, r, w, h)
    return read_raster(path, bands=bands, expected_bands=expected_bands, window=rio_window, dtype=dtype)


def read_grey(path: Path, window: Window | None = None, max_channel_diff: float = 8.0) -> np.ndarray:
    """Read a single-channel image (e.g. an 8-bit nDSM) as ``(1, H, W)`` float32.

    A 3-channel file whose channels are (nearly) equal, as some JPEG nDSMs decode, is
    averaged to one band; channels that differ by more than ``max_channel_diff`` raise.
    """
    arr = read_image(path, expected_bands=(1, 3), window=window)
    if arr.shape[0] == 3:
        spread = float(np.max(arr.max(0) - arr.min(0))) if arr.size else 0.0
        if spread > max_channel_diff:
            raise DataError(f"{path}: 3 channels that differ (by up to {spread:g}); expected a grey-scale image")
        arr = arr.mean(0, keepdims=True, dtype=np.float32)
    return arr


def fill_heights(arr: np.ndarray) -> tuple[np.ndarray, int]:
    """Fill NaN heights of an *input* DSM with the array's lowest finite height (0 if none).

    Returns the filled array and the number of filled pixels (targets keep their NaNs).
    """
    bad = ~np.isfinite(arr)
    n = int(bad.sum())
    if n:
        arr = arr.copy()
        arr[bad] = np.min(arr[~bad]) if n < arr.size else 0.0
    return arr, n


def pad_to(arr: np.ndarray, height: int, width: int, value: float, mode: str = "constant") -> np.ndarray:
    """Pad the last two axes of ``arr`` at the bottom/right to ``height`` x ``width``."""
    ph, pw = height - arr.shape[-2], width - arr.shape[-1]
    if ph < 0 or pw < 0:
        raise ValueError(f"cannot pad shape {arr.shape} to {height}x{width}")
    if ph == 0 and pw == 0:
        return arr
    pad = [(0, 0)] * (arr.ndim - 2) + [(0, ph), (0, pw)]
    if mode == "edge":
        return np.pad(arr, pad, mode="edge")
    return np.pad(arr, pad, mode="constant", constant_values=value)


def to_tensor(arr: np.ndarray) -> torch.Tensor:
    """A (contiguous) torch tensor sharing nothing with file buffers."""
    return torch.from_numpy(np.ascontiguousarray(arr))


def list_files(folder: Path, suffixes: Iterable[str]) -> list[Path]:
    """Files in ``folder`` (not recursive) with one of ``suffixes`` (case-insensitive), sorted."""
    suffixes = {s.lower() for s in suffixes}
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in suffixes)


# ----------------------------------------------------------------------------- base class
class ReaderDataset(Dataset):
    """Base class: holds ``root``/``split``/``transform``; subclasses implement ``load``.

    Subclasses set ``LAYOUT`` (shown in errors) and build their index in ``__init__``,
    checking every file's presence and header there so bad input fails before training.
    """

    LAYOUT: str = ""

    def __init__(self, root: str | Path, split: str, transform: Callable[[Sample], Sample] | None = None):
        self.root = Path(root)
        self.split = split
        self.transform = transform
        require_dir(self.root, self.LAYOUT)

    def __len__(self) -> int:  # pragma: no cover - overridden
        raise NotImplementedError

    def load(self, index: int) -> Sample:  # pragma: no cover - overridden
        raise NotImplementedError

    def __getitem__(self, index: int) -> Sample:
        if not -len(self) <= index < len(self):
            raise IndexError(f"index {index} out of range for {type(self).__name__} of length {len(self)}")
        sample = self.load(index % len(self))
        return self.transform(sample) if self.transform is not None else sample

    def __repr__(self) -> str:
        return f"{type(self).__name__}(root={str(self.root)!r}, split={self.split!r}, n={len(self)})"


def detection_collate(batch: list[Sample]) -> Sample:
    """Collate detection samples: images stacked, ``boxes``/``box_labels``/``obb``/``difficult``/``meta`` as lists."""
    out: Sample = {}
    for key in batch[0]:
        values = [s[key] for s in batch]
        if key in ("boxes", "box_labels", "obb", "difficult", "truncated", "meta"):
            out[key] = values
        else:
            out[key] = torch.stack(values)
    return out
