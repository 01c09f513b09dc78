"""HR-Pairs reader: per-file windows with edge windows, bounded black-window replacement."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).parent))
from readers_fakes import make_hrpairs, write_tif  # noqa: E402

from mssdf.data.io import DataError  # noqa: E402
from mssdf.data.readers import HRPairs, get_dataset  # noqa: E402


def test_windows_per_file_with_edges_and_values(tmp_path):
    data = make_hrpairs(tmp_path, {"a": (20, 20), "b": (26, 14)})
    ds = get_dataset("hr_pairs", tmp_path, "all", window_size=10)
    per_file = [[w for k, w in ds.windows if k == i] for i in range(2)]
    assert per_file[0] == [(r, c, 10, 10) for r in (0, 10) for c in (0, 10)]
    # b's own grid (not a's): rows 0, 10 + edge 16; cols 0 + edge 4
    assert per_file[1] == [(r, c, 10, 10) for r in (0, 10, 16) for c in (0, 4)]
    s = ds[len(per_file[0]) + 5]  # b, window (16, 4)
    assert s["meta"]["id"] == "b" and s["meta"]["window"] == [16, 4, 10, 10]
    assert (s["rgb"].numpy() == data["b"]["dom"][:, 16:26, 4:14]).all()
    assert np.allclose(s["dsm"].numpy(), data["b"]["dsm"][:, 16:26, 4:14])


def test_black_windows_replaced_with_bounded_retries(tmp_path):
    make_hrpairs(tmp_path, {"a": (20, 20)}, black={"a": [(0, 0, 10, 10), (0, 10, 6, 10), (10, 0, 5, 10)]})
    ds = HRPairs(tmp_path, window_size=10, seed=0)
    s = ds[0]  # window 0 all black -> another window
    assert s["meta"]["source_index"] != 0 and s["meta"]["black_fraction"] <= 0.5
    assert (s["rgb"] != 0).any(dim=0).float().mean() >= 0.5
    assert ds[1]["meta"]["source_index"] in (2, 3)  # 60% black: replaced
    assert ds[2]["meta"]["source_index"] == 2 and ds[2]["meta"]["black_fraction"] == 0.5  # 50%: kept
    assert ds[0]["meta"] == HRPairs(tmp_path, window_size=10, seed=0)[0]["meta"]  # seeded
    make_hrpairs(tmp_path / "dark", {"z": (20, 20)}, black={"z": [(0, 0, 20, 20)]})
    dark = HRPairs(tmp_path / "dark", window_size=10, max_retries=3)
    s = dark[2]  # nothing valid anywhere: bounded, returns the least-black candidate
    assert s["meta"]["black_fraction"] == 1.0


def test_hrpairs_bad_inputs(tmp_path):
    make_hrpairs(tmp_path, {"a": (20, 20), "b": (20, 20)})
    (tmp_path / "patch" / "b_dsm.tif").unlink()
    with pytest.raises(DataError, match=r"b_dsm\.tif: file not found \(partner of .*b_dom\.tif\)"):
        HRPairs(tmp_path, window_size=10)
    write_tif(tmp_path / "patch" / "b_dsm.tif", np.zeros((1, 20, 19), np.float32), (0.0, 0.0, 0.5))
    with pytest.raises(DataError, match=r"b_dsm\.tif: size 20x19 differs from its partner .*b_dom\.tif"):
        HRPairs(tmp_path, window_size=10)
    (tmp_path / "patch" / "b_dom.tif").unlink()
    with pytest.raises(DataError, match=r"b_dom\.tif: file not found \(partner of .*b_dsm\.tif\)"):
        HRPairs(tmp_path, window_size=10)
    (tmp_path / "patch" / "b_dsm.tif").unlink()
    write_tif(tmp_path / "patch" / "a_dom.tif", np.ones((2, 20, 20), np.uint8), (0.0, 0.0, 0.5))
    with pytest.raises(DataError, match=r"a_dom\.tif: has 2 band"):
        HRPairs(tmp_path, window_size=10)
    write_tif(tmp_path / "patch" / "a_dom.tif", np.ones((3, 20, 20), np.uint8), (0.0, 0.0, 0.5))
    dsm = np.full((1, 20, 20), 12.0, np.float32)
    dsm[0, :2, :2] = -32768
    write_tif(tmp_path / "patch" / "a_dsm.tif", dsm, (0.0, 0.0, 0.5), nodata=-32768)
    s = HRPairs(tmp_path, window_size=10)[0]
    assert s["meta"]["dsm_filled"] == 4 and (s["dsm"] == 12.0).all()
    with pytest.raises(DataError, match=r"(?s)nowhere: folder not found.*_dom\.tif"):
        HRPairs(tmp_path / "nowhere")


def test_grey_rendered_dsm_is_marked(tmp_path):
    data = make_hrpairs(tmp_path, {"a": (20, 20), "g": (20, 20)})
    grey = np.repeat(np.round(data["g"]["dsm"] * 5).clip(0, 255).astype(np.uint8), 3, 0)  # 3 equal channels
    write_tif(tmp_path / "patch" / "g_dsm.tif", grey, (0.0, 0.0, 0.5))
    ds = HRPairs(tmp_path, window_size=10)
    assert ds.dsm_kinds == {"a": "metres", "g": "grey"}
    kinds = {ds[i]["meta"]["id"]: ds[i]["meta"]["dsm_kind"] for i in range(len(ds))}
    assert kinds == {"a": "metres", "g": "grey"}
    s = next(ds[i] for i in range(len(ds)) if ds[i]["meta"]["id"] == "g")
    assert s["dsm"].shape == (1, 10, 10) and float(s["dsm"].max()) > 50  # rendering levels, not metres
    import torch

    batch = torch.utils.data.default_collate([ds[0], ds[len(ds) - 1]])
    assert batch["meta"]["dsm_kind"] == ["metres", "grey"]
