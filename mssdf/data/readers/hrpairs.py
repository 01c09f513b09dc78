"""HR-Pairs, the MSSDF pre-training set: orthophoto + DSM pairs (resolution unpublished).

Layout under ``root``::

    patch/<name>_dom.tif    orthophoto, 3 bands (a 4th band is ignored)
    patch/<name>_dsm.tif    DSM, 1 band float (or 3 equal bands of a grey rendering)

Each file pair is cut into non-overlapping ``window_size`` windows computed from *that*
file's size, plus windows aligned to the right/bottom border (the authors took the grid
of the first file for every file). A window more than ``black_threshold`` black (all DOM
bands 0; padding of a file smaller than the window counts as black) is replaced by
another window drawn with a generator seeded by ``(seed, epoch, index)``; after
``max_retries`` failed draws the least-black candidate seen is returned (bounded, unlike
the authors' unbounded recursion). ``meta`` records ``source_index`` (the window actually
returned) and its ``black_fraction``.

Sample: ``rgb`` (3,S,S) float32 raw, ``dsm`` (1,S,S) float32 (nodata/NaN filled with the
window's lowest height, counted in ``meta["dsm_filled"]``), ``meta``. ``meta["dsm_kind"]``
says what the DSM values are: ``"metres"`` for a 1-band DSM, ``"grey"`` for a 3-band file
(equal channels of a grey rendering, averaged): its values are rendering levels (e.g.
0-255), NOT metres, so height losses/metrics in metres are meaningless for those pairs
(the file is accepted because the authors' loader accepts it). The dataset's
``dsm_kinds`` lists the kind per file.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import numpy as np

from mssdf.config import ConfigError
from mssdf.data.io import DataError, RasterInfo, check_aligned, nodata_to_nan
from mssdf.data.readers.base import (
    ReaderDataset,
    Sample,
    Window,
    check_choice,
    check_fraction,
    check_same_size,
    fill_heights,
    header,
    pad_to,
    read_grey,
    read_image,
    require_dir,
    to_tensor,
)
from mssdf.data.readers.windows import grid_windows

LAYOUT = __doc__.split("Layout under ``root``::")[1].split("Each file pair")[0].rstrip()


class HRPairs(ReaderDataset):
    """HR-Pairs windows (layout and behaviour in the module docstring).

    Args:
        root: folder holding ``patch/``.
        split: ``all`` or ``train`` (the same: no split is published).
        window_size: window side in pixels (the authors' input size is 320).
        black_threshold: maximum black fraction of a kept window.
        max_retries: replacement draws before giving up on finding a valid window.
        seed: replacement seed; ``set_epoch`` varies the draws per epoch.
        check_georef: also compare CRS/transform of each pair (sizes are always compared).
        transform: optional callable applied to each sample dict.
    """

    LAYOUT = LAYOUT

    def __init__(
        self,
        root: str | Path,
        split: str = "all",
        window_size: int = 320,
        black_threshold: float = 0.5,
        max_retries: int = 10,
        seed: int = 0,
        check_georef: bool = True,
        transform: Callable[[Sample], Sample] | None = None,
    ):
        super().__init__(root, split, transform)
        check_choice(split, ("all", "train"), "split")
        self.window_size = window_size
        self.black_threshold = check_fraction(black_threshold, "black_threshold")
        if max_retries < 0 or window_size <= 0:
            raise ConfigError(f"max_retries={max_retries} must be >= 0 and window_size={window_size} > 0")
        self.max_retries = max_retries
        self.seed = seed
        self.epoch = 0
        patch = require_dir(self.root / "patch", LAYOUT)
        doms = sorted(patch.glob("*_dom.tif"))
        dsms = {p.name[: -len("_dsm.tif")] for p in patch.glob("*_dsm.tif")}
        names = {p.name[: -len("_dom.tif")] for p in doms}
        lonely = sorted(dsms - names)
        if lonely:
            raise DataError(f"{patch / (lonely[0] + '_dom.tif')}: file not found (partner of "
                            f"{patch / (lonely[0] + '_dsm.tif')})")  # fmt: skip
        if not doms:
            raise DataError(f"{patch}: no *_dom.tif files; expected layout:\n{LAYOUT}")
        self.pairs: list[tuple[str, Path, Path, RasterInfo, RasterInfo]] = []
        self.dsm_kinds: dict[str, str] = {}  # name -> "metres" (1 band) or "grey" (3-band rendering)
        self.windows: list[tuple[int, Window]] = []
        for dom in doms:
            name = dom.name[: -len("_dom.tif")]
            dsm = patch / f"{name}_dsm.tif"
            dom_info = header(dom, (3, 4))
            dsm_info = header(dsm, (1, 3), partner=dom)
            check_same_size(dom_info, dsm_info)
            if check_georef:
                check_aligned([dom_info, dsm_info])
            k = len(self.pairs)
            self.pairs.append((name, dom, dsm, dom_info, dsm_info))
            self.dsm_kinds[name] = "metres" if dsm_info.count == 1 else "grey"
            self.windows += [(k, w) for w in grid_windows(dom_info.height, dom_info.width, window_size)]

    def set_epoch(self, epoch: int) -> None:
        """Vary the replacement draws between epochs (call from the training loop)."""
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self.windows)

    def _window(self, index: int) -> tuple[Sample, float]:
        k, window = self.windows[index]
        name, dom, dsm, _, dsm_info = self.pairs[k]
        s = self.window_size
        rgb = pad_to(read_image(dom, (3, 4), window, bands=(1, 2, 3)), s, s, 0)
        black = float((rgb == 0).all(0).mean())
        if dsm_info.count == 1:
            height = nodata_to_nan(read_image(dsm, 1, window), dsm_info.nodata)
        else:
            height = read_grey(dsm, window)
        height, filled = fill_heights(pad_to(height, s, s, np.nan))
        meta = {"id": name, "window": list(window), "source_index": index, "black_fraction": black,
                "dsm_filled": filled, "dsm_kind": self.dsm_kinds[name]}  # fmt: skip
        return {"rgb": to_tensor(rgb), "dsm": to_tensor(height), "meta": meta}, black

    def load(self, index: int) -> Sample:
        sample, black = self._window(index)
        if black <= self.black_threshold:
            return sample
        rng = np.random.default_rng([self.seed, self.epoch, index])
        best, best_black = sample, black
        for _ in range(self.max_retries):
            cand, cand_black = self._window(int(rng.integers(len(self))))
            if cand_black <= self.black_threshold:
                return cand
            if cand_black < best_black:
                best, best_black = cand, cand_black
        return best
