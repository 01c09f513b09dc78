"""The task catalogue of the prepared sample: what each task's samples hold.

:data:`TASKS` is the one place a task is declared; :func:`mssdf.data.prepare.prepare`
writes one index row per task and tile from it, ``tasks.json`` and the README's label
provenance are written from it, and the readers (:mod:`mssdf.data.sample`,
:mod:`mssdf.pretrain`) look tasks up in it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from mssdf.config import to_dict
from mssdf.data import labels as L
from mssdf.data.sources import SOURCES


@dataclass(frozen=True)
class TaskSpec:
    """What a task's samples hold; drives the index rows :func:`mssdf.data.prepare.prepare` writes.

    Attributes:
        source: the source whose tiles the task uses.
        inputs: input keys; each is the tile file ``<key>.tif``.
        targets: sample target keys.
        label_kind: ``real``, ``synthetic``, ``derived`` (or ``none``: no labels).
        classes, description: class names; what the task is.
        target_files: ``(target key, file in the tile folder)`` pairs, e.g. ``("height",
            "ndsm.tif")``; a task with ``pan_t2`` among its inputs gets the synthetic change
            pair, a task with ``boxes`` among its targets the ``n_boxes`` index column and the
            tile's objects (``boxes``, ``box_labels``; with ``obb`` among them too, the
            oriented boxes: the source's scenes must hold instances).
        tile_class: rule of a per-tile class label (index column ``scene_class``, no file):
            ``building_fraction`` (bins of the footprint fraction) or ``dominant_class``
            (most frequent label class); tiles without a class get no row.
    """

    source: str
    inputs: tuple[str, ...]
    targets: tuple[str, ...]
    label_kind: str
    classes: tuple[str, ...] = ()
    description: str = ""
    target_files: tuple[tuple[str, str], ...] = ()
    tile_class: str | None = None

    @property
    def synthetic(self) -> bool:
        """Labels made by editing real data (derived from ``label_kind``)."""
        return self.label_kind == "synthetic"

    @property
    def derived(self) -> bool:
        """Labels computed from other real labels (derived from ``label_kind``)."""
        return self.label_kind == "derived"

    def to_json(self) -> dict[str, Any]:
        """The task's entry in ``tasks.json``."""
        return {**to_dict(self), "target_files": dict(self.target_files), "synthetic": self.synthetic, "derived": self.derived}


def _asprs_names() -> tuple[str, ...]:
    return tuple(name for _, (_, name) in sorted(L.ASPRS_CLASSES.items(), key=lambda kv: kv[1][0]))


TASKS: dict[str, TaskSpec] = {
    "pretrain_autzen": TaskSpec("autzen", ("rgb", "dsm"), (), "none", description="RGB <-> DSM pairs (Autzen lidar, 1 m)"),
    "pretrain_ign": TaskSpec("ign", ("rgb", "ms", "dsm"), (), "none", description="RGB + MS(B,G,R,NIR) <-> DSM (IGN lidar)"),
    "pretrain_rotterdam": TaskSpec("rotterdam", ("pan", "ms"), (), "none", description="pan <-> MS pairs (SpaceNet 6 Rotterdam)"),
    "pretrain_neon": TaskSpec("neon", ("rgb",), (), "none", description="RGB alone (NEON airborne, 0.1 m, block-mean resampled)"),
    "height": TaskSpec("autzen", ("rgb",), ("height",), "real", description="RGB -> nDSM height (m), the US3D analogue",
                       target_files=(("height", "ndsm.tif"),)),
    "seg_asprs": TaskSpec("ign", ("rgb", "ms", "dsm"), ("label",), "real", _asprs_names(), "ASPRS classes of the top point",
                          target_files=(("label", "label.tif"),)),
    "seg_buildings": TaskSpec("atlanta", ("pan",), ("label",), "real", ("background", "building"), "SpaceNet 4 footprints",
                              target_files=(("label", "label.tif"),)),
    "seg_roads": TaskSpec("lasvegas", ("pan",), ("label",), "real", ("background", "road"), "SpaceNet 3 road mask",
                          target_files=(("label", "label.tif"),)),
    "detection": TaskSpec("atlanta", ("pan",), ("boxes", "box_labels", "obb"), "real", ("building",),
                          "SpaceNet 4 building boxes: horizontal, and oriented (each footprint's minimum-area rectangle)",
                          target_files=(("boxes", "boxes.json"),)),
    "detection_trees": TaskSpec(
        "neon", ("rgb",), ("boxes", "box_labels"), "real", L.TREE_CLASSES,
        "deepforest NEON tree crowns: the 951 boxes annotated by the DeepForest authors (VOC XML of deepforest "
        "2.1.0; Tree/Alive -> tree, Dead -> dead tree), scaled to the resampled grid, clipped to each tile "
        "(kept where at least half the box lies inside)", target_files=(("boxes", "boxes.json"),),
    ),
    "change": TaskSpec(
        "atlanta", ("pan", "pan_t2"), ("label",), "synthetic", ("unchanged", "changed"),
        "SYNTHETIC: buildings removed/pasted/shifted in real tiles; the after-image also carries acquisition "
        "differences everywhere (radiometric shifts, illumination gradient, sub-pixel misregistration, blur, noise); "
        "the mask is exactly the edited pixels", target_files=(("label", "change.tif"),),
    ),
    "scene": TaskSpec(
        "atlanta", ("pan",), ("label",), "derived", ("few buildings", "some buildings", "dense buildings"),
        "DERIVED: tile class = bin of the real building fraction", tile_class="building_fraction",
    ),
    "scene_asprs": TaskSpec(
        "ign", ("rgb", "ms", "dsm"), ("label",), "derived", _asprs_names(), "DERIVED: dominant ASPRS class of the tile",
        tile_class="dominant_class",
    ),
}

# Files every index row of a source lists besides its task's own: the DSM and the nDSM of
# every source that has an nDSM (an ``ndsm`` band entry in its block in
# :mod:`mssdf.data.sources`), so SampleTiles can return the nDSM in place of the DSM
# (``dsm_source="ndsm"``).
EXTRA_FILES: dict[str, tuple[str, ...]] = {name: ("dsm", "ndsm") for name, src in SOURCES.items() if "ndsm" in src.bands}


def source_tasks(source: str) -> list[str]:
    """Names of the tasks on ``source``'s tiles, in :data:`TASKS` order."""
    return [t for t, spec in TASKS.items() if spec.source == source]


@dataclass(frozen=True)
class TileNeeds:
    """What a source's tasks need computed per tile besides its files."""

    boxes: bool  # some task has ``boxes`` among its targets
    obb: bool  # some task has ``obb`` (oriented boxes) among its targets
    change: bool  # some task has the synthetic ``pan_t2`` among its inputs
    tile_classes: frozenset[str]  # the tile-class rules of its tasks


def tile_needs(source: str) -> TileNeeds:
    """Per-tile work that ``source``'s tasks ask for (from :data:`TASKS`)."""
    specs = [TASKS[t] for t in source_tasks(source)]
    return TileNeeds(any("boxes" in s.targets for s in specs), any("obb" in s.targets for s in specs),
                     any("pan_t2" in s.inputs for s in specs),
                     frozenset(s.tile_class for s in specs if s.tile_class))


__all__ = ["EXTRA_FILES", "TASKS", "TaskSpec", "TileNeeds", "source_tasks", "tile_needs"]
