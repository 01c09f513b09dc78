"""The README's "Paper protocols (with the datasets)" commands and their ``protocols/*.yaml`` files
are valid for the current code.

The section holds one ```bash block: a ``# <protocol>`` comment line, then that protocol's
command (backslash continuations allowed), which reads ``protocols/<protocol>.yaml``. Each command
is parsed with the real parsers and its file built by the code that would run it, without
training or reading a dataset: ``torchrun ... -m mssdf.pretrain --config FILE --section pretrain``
with :func:`mssdf.pretrain.cli.parse_args` and :func:`mssdf.pretrain.config.load_config`;
``python -m mssdf.reports.execute ... --params FILE`` with its
:func:`~mssdf.reports.execute.build_parser` and :func:`~mssdf.reports.execute.stage_parameters`
(the notebook must declare the sections), then :class:`~mssdf.downstream.study.StudyConfig`,
which resolves the preset and builds every run, or, for the figures notebook,
:class:`~mssdf.reports.figures.FiguresConfig`. Reader arguments (preset + file) are checked
against the reader's signature, since a run only meets its reader when it reads the files.
"""

from __future__ import annotations

import re
import shlex
from collections import Counter
from itertools import takewhile
from pathlib import Path
from typing import Any, Mapping

import pytest

from mssdf.config import ConfigError, from_dict, load_mapping, yaml_load
from mssdf.data.readers import dataset_params
from mssdf.downstream.config import PAPER_DATASETS, ROLES
from mssdf.downstream.study import StudyConfig
from mssdf.pretrain import cli as pretrain_cli
from mssdf.pretrain.config import PROFILES as PRETRAIN_PROFILES
from mssdf.pretrain.config import PretrainConfig, load_config
from mssdf.reports.execute import build_parser, stage_parameters
from mssdf.reports.figures import FiguresConfig

ROOT = Path(__file__).resolve().parents[1]
HEADING = "## Paper protocols (with the datasets)"
PROTOCOLS = "protocols"  # the folder of the commands' parameters files
FILES = sorted((ROOT / PROTOCOLS).glob("*.yaml"))
NPROC = 8  # GPUs of the node every command is written for
AUTHORS_GPUS = 16  # the authors' pre-training: batch 32 per GPU on 16 GPUs (docs/method.md)
PRETRAIN = {"pretrain_mssdf": "mssdf", "pretrain_mae": "mae"}  # protocol -> variant
FIGURES = "figures"  # the protocol running the figures notebook on the others' results
FIGURES_SECTIONS = ["pretrain_variants", "figures"]
FIGURES_SET = {"metrics", "out_dir", "results", "markdown"}  # the keys figures.yaml sets (the rest: defaults)


def section(readme: str | None = None) -> str:
    text = (ROOT / "README.md").read_text() if readme is None else readme
    assert text.count(f"\n{HEADING}\n") == 1, f"README.md: one {HEADING!r} section expected"
    body = text.split(f"\n{HEADING}\n", 1)[1]
    return body.split("\n## ", 1)[0]


def commands(text: str) -> dict[str, str]:
    """``{protocol: command}`` of the section's single ```bash block (continuations joined)."""
    blocks = re.findall(r"^```bash\n(.*?)^```", text, flags=re.S | re.M)
    assert len(blocks) == 1, f"one ```bash block expected in the section, found {len(blocks)}"
    out: dict[str, str] = {}
    current: str | None = None
    for line in re.sub(r"\\\n\s*", " ", blocks[0]).splitlines():
        line = line.strip()
        if not line:
            continue
        if line.startswith("#"):
            current = line.lstrip("#").strip()
            assert re.fullmatch(r"\w+", current) and current not in out, f"bad or repeated protocol line {line!r}"
            continue
        assert current is not None and current not in out, f"a command without its own '# <protocol>' line: {line[:80]!r}"
        out[current] = line
    assert out and all(out.values())
    return out


def table_rows(text: str) -> dict[str, list[str]]:
    """``{protocol: cells}`` of the section's table (first cell: the protocol in backticks)."""
    rows = {}
    for line in text.splitlines():
        m = re.match(r"\|\s*`(\w+)`\s*\|(.*)\|\s*$", line)
        if m:
            rows[m.group(1)] = [c.strip() for c in m.group(2).split("|")]
    return rows


def check_reader_args(cfg: Any, where: str) -> None:
    """Every argument the run passes to its reader (preset + file, per role) is one the reader takes."""
    valid = set(dataset_params(cfg.data.reader))
    for role in ROLES:
        args = {**cfg.data.reader_args, **cfg.data.role_args.get(role, {})}
        unknown = sorted(set(args) - valid - {"split"})
        if unknown:
            raise ConfigError(f"{where}: reader {cfg.data.reader!r} takes no {unknown} (role {role}); valid: {sorted(valid)}")


def parse(protocol: str, command: str, files: Mapping[str, Path] | None = None) -> dict[str, Any]:
    """The command's configuration, built by the code that would run it (raises ConfigError).

    The command must read ``protocols/<protocol>.yaml``; ``files`` maps that path to another
    file to read instead (a modified copy).
    """
    expected = f"{PROTOCOLS}/{protocol}.yaml"

    def path_of(given: str | None) -> Path:
        assert given == expected, f"{protocol}: the command reads {given!r}, not {expected!r}"
        return (files or {}).get(given, ROOT / given)

    tokens = shlex.split(command)
    if tokens[0] == "torchrun":
        split = tokens.index("-m")
        launcher, module, argv = tokens[1:split], tokens[split + 1], tokens[split + 2:]
        assert module == "mssdf.pretrain", f"torchrun runs {module!r}"
        assert "--standalone" in launcher and f"--nproc_per_node={NPROC}" in launcher, launcher
        args = pretrain_cli.parse_args(argv)
        assert args.section == "pretrain" and not args.sets, "the whole run comes from the file's pretrain section"
        path = path_of(args.config)
        mapping = load_mapping(path, args.section, args.sets)
        return {"kind": "pretrain", "file": args.config, "mapping": mapping,
                "config": load_config(path, args.section, args.sets)}  # fmt: skip
    assert tokens[:3] == ["python", "-m", "mssdf.reports.execute"], f"unknown command form: {tokens[:3]}"
    args = build_parser().parse_args(tokens[3:])
    assert not args.sets, "the sections come whole from the --params file"
    path = path_of(args.params)
    if not path.is_file():
        raise ConfigError(f"{path}: params file not found")
    params = yaml_load(path.read_text())
    if not isinstance(params, dict):
        raise ConfigError(f"--params: expected a mapping, got {type(params).__name__}")
    sections = stage_parameters(params, args.sections, ROOT / args.notebook, args.sets)
    assert sorted(params) == sorted(args.sections), f"{expected}: holds {sorted(params)}, the command passes {args.sections}"
    common = {"file": args.params, "args": args}
    if protocol == FIGURES:
        assert args.sections == FIGURES_SECTIONS, args.sections
        config = from_dict(FiguresConfig, sections["figures"], "figures")
        return {"kind": "figures", **common, "sections": sections, "config": config}
    assert len(args.sections) == 1, args.sections
    name = args.sections[0]
    study = from_dict(StudyConfig, sections[name], name)  # resolves the presets, builds every combination
    for dataset in study.datasets:
        for init in study.inits:
            check_reader_args(study.run_config(dataset, init, study.seeds[0]), f"{name}.datasets.{dataset}")
    return {"kind": "study", **common, "section": name, "study": study}


def data_roots(p: Mapping[str, Any]) -> list[str]:
    """The dataset folders a parsed command reads (its file's ``root:`` lines)."""
    if p["kind"] == "pretrain":
        return [p["config"].data.root]
    if p["kind"] == "study":
        return [entry["data"]["root"] for entry in p["study"].datasets.values()]
    return []


@pytest.fixture(scope="module")
def text() -> str:
    return section()


@pytest.fixture(scope="module")
def parsed(text) -> dict[str, dict[str, Any]]:
    return {p: parse(p, c) for p, c in commands(text).items()}


def test_table_and_commands_name_the_same_protocols(text, parsed):
    rows = table_rows(text)
    assert list(rows) == list(parsed)
    method = (ROOT / "docs" / "method.md").read_text()
    for protocol, cells in rows.items():
        assert len(cells) == 3, f"{protocol}: dataset | paper | what runs"
        # what the paper reports: a number docs/method.md gives, or an explicit absence
        numbers = re.findall(r"\d+\.\d+", cells[1])
        assert numbers or cells[1].startswith(("not reported", "not applicable")), (protocol, cells[1])
        assert all(n in method for n in numbers), f"{protocol}: {numbers} not in docs/method.md"
        folders = re.findall(r"`(/data/[^`]+)`", cells[0])
        assert folders == data_roots(parsed[protocol]), f"{protocol}: the row says {folders}, the file reads {data_roots(parsed[protocol])}"


def test_every_protocol_file_in_exactly_one_command(parsed):
    used = Counter(p["file"] for p in parsed.values())
    assert sorted(used) == [f"{PROTOCOLS}/{f.name}" for f in FILES], f"used {sorted(used)}, in {PROTOCOLS}/: {[f.name for f in FILES]}"
    assert set(used.values()) == {1}
    assert set(parsed) == set(PRETRAIN) | set(PAPER_DATASETS) | {FIGURES}


@pytest.mark.parametrize("path", FILES, ids=lambda f: f.stem)
def test_protocol_file_header(path):
    """2-4 comment lines: what the protocol is, the ``root:`` to edit, what the paper reports."""
    text = path.read_text()
    header = list(takewhile(lambda line: line.startswith("#"), text.splitlines()))
    assert 2 <= len(header) <= 4 and header[0].startswith(f"# {path.stem}:"), header[:1]
    assert ("root:" in text.split("\n", len(header))[-1]) == ("`root:`" in " ".join(header)), "say which root: to edit"
    method = (ROOT / "docs" / "method.md").read_text()
    assert all(n in method for n in re.findall(r"\d+\.\d+", " ".join(header))), "a number docs/method.md does not give"
    assert path.name in (ROOT / PROTOCOLS / "README.md").read_text(), f"{PROTOCOLS}/README.md does not name {path.name}"


def test_every_paper_preset_in_exactly_one_command(parsed):
    used = Counter(entry.get("preset") for p in parsed.values() if p["kind"] == "study"
                   for entry in p["study"].datasets.values())  # fmt: skip
    assert used == Counter(list(PAPER_DATASETS)), f"presets used {dict(used)}, presets defined {sorted(PAPER_DATASETS)}"


@pytest.mark.parametrize("protocol", list(PRETRAIN))
def test_pretraining_command(parsed, protocol):
    p = parsed[protocol]
    assert p["kind"] == "pretrain" and p["mapping"]["profile"] == "paper"
    assert p["mapping"].get("variant", "mssdf") == PRETRAIN[protocol]
    cfg: PretrainConfig = p["config"]
    assert cfg.data.kind == "reader" and cfg.data.reader == "hr_pairs" and cfg.data.root.startswith("/data/")
    assert cfg.data.modalities == ("rgb", "dsm")
    assert cfg.model_config().img_size == PRETRAIN_PROFILES["paper"]["model"]["img_size"] == cfg.crop
    assert cfg.epochs == PRETRAIN_PROFILES["paper"]["epochs"]
    # the authors' global batch (and so their learning rate and schedule) on one node of NPROC GPUs
    assert cfg.batch_size * NPROC == PRETRAIN_PROFILES["paper"]["batch_size"] * AUTHORS_GPUS
    assert cfg.out_dir == f"models/paper/pretrain/{PRETRAIN[protocol]}"


@pytest.mark.parametrize("protocol", list(PAPER_DATASETS))
def test_study_command(parsed, protocol):
    p = parsed[protocol]
    study: StudyConfig = p["study"]
    assert p["kind"] == "study" and list(study.datasets) == [protocol]
    assert study.datasets[protocol]["preset"] == protocol and study.run["profile"] == "paper"
    assert study.inits == ("random", "mae", "mssdf") and study.seeds == (0, 1, 2) and study.nproc == NPROC
    assert study.out_dir == f"models/paper/{protocol}" and study.report_dir == f"reports/paper_protocols/{protocol}"
    assert p["args"].output == f"reports/paper_protocols/{protocol}.ipynb"
    # one process per GPU: the per-process batch keeps the protocol's global batch (the preset alone, one process)
    alone = StudyConfig(inits=("random",), seeds=(0,), run={k: v for k, v in study.run.items() if k != "batch_size"},
                        datasets=study.datasets)  # fmt: skip
    protocol_batch = alone.run_config(protocol, "random", 0).batch_size
    pretrained = {out["config"].out_dir for out in parsed.values() if out["kind"] == "pretrain"}
    for init in study.inits:
        cfg = study.run_config(protocol, init, 0)
        assert cfg.task == PAPER_DATASETS[protocol]["task"] == p["section"]
        assert cfg.data.kind == "reader" and cfg.data.reader == PAPER_DATASETS[protocol]["data"]["reader"]
        assert cfg.data.root.startswith("/data/")
        assert cfg.batch_size * NPROC == protocol_batch, (cfg.batch_size, protocol_batch)
        if init != "random":  # the weights a pre-training command writes (<models_dir>/<init>/final)
            assert f"{cfg.backbone.models_dir}/{init}" in pretrained


def test_figures_command(parsed):
    """The figures notebook reads, per task, the sample stage's metrics file, then every protocol's."""
    p = parsed[FIGURES]
    cfg: FiguresConfig = p["config"]
    assert p["kind"] == "figures" and p["args"].output == "reports/paper_protocols/09_paper_figures.ipynb"
    assert p["sections"]["pretrain_variants"] == yaml_load((ROOT / "params.yaml").read_text())["pretrain_variants"]
    assert set(p["sections"]["figures"]) == FIGURES_SET, "probe, method, prepare, pretrain_* stay the pipeline's"
    sample = FiguresConfig().metrics  # the sample stages' files (the pipeline's figures stage reads them)
    expected: dict[str, list[str]] = {}
    for out in parsed.values():
        if out["kind"] == "study":
            task = out["section"]
            expected.setdefault(task, [sample[task]]).append(f"{out['study'].report_dir}/metrics.json")
    listed = {task: [files] if isinstance(files, str) else list(files) for task, files in cfg.metrics.items()}
    assert listed == expected
    for key in ("out_dir", "results", "markdown"):
        assert getattr(cfg, key).startswith("reports/paper_protocols/"), key


def _stage_outputs() -> list[str]:
    """Every path a dvc.yaml stage writes (``foreach`` templates cut at their first ``${``)."""
    dvc = yaml_load((ROOT / "dvc.yaml").read_text())
    out = []
    for stage in dvc["stages"].values():
        stage = stage.get("do", stage)
        for key in ("outs", "metrics", "plots"):
            for item in stage.get(key) or []:
                path = next(iter(item)) if isinstance(item, dict) else item
                out.append(path.split("${")[0].rstrip("/"))
    return out


def test_no_command_writes_into_a_dvc_output(parsed):
    """`dvc repro` removes a stage's outputs before running it: the protocols' folders lie outside them."""
    written = []
    for p in parsed.values():
        if p["kind"] == "pretrain":
            written.append(p["config"].out_dir)
        elif p["kind"] == "study":
            written += [p["study"].out_dir, p["study"].report_dir, p["args"].output]
        else:
            written += [p["config"].out_dir, p["config"].results, p["config"].markdown, p["args"].output]
    outputs = _stage_outputs()
    assert outputs
    for path in written:
        clash = [o for o in outputs if path == o or path.startswith(o + "/") or o.startswith(path + "/")]
        assert not clash, f"{path} overlaps the DVC output(s) {clash}"
    assert len(set(written)) == len(written), "two commands write the same path"


@pytest.mark.parametrize("protocol, old, new", [
    ("potsdam", "task: segmentation", "tsak: segmentation"),  # unknown run key
    ("potsdam", "preset: potsdam", "preset: potsdm"),  # unknown preset
    ("us3d", "--sections height", "--sections heigth"),  # a section the file does not hold (the command)
    ("us3d", "notebooks/05_height.ipynb", "notebooks/04_segmentation.ipynb"),  # a notebook not declaring it
    ("dior", "batch_size: 1", "batch_size: one"),  # wrong type
    ("us3d", "root: /data/US3D", "root: /data/US3D\n        reader_args: {modalitis: [rgb]}"),  # reader argument
    ("pretrain_mssdf", "reader: hr_pairs", "raeder: hr_pairs"),  # unknown pre-training key
    ("pretrain_mae", "  variant: mae\n", "  variant: maee\n"),  # unknown variant
    ("figures", "markdown: ", "markdwon: "),  # unknown figures key
])  # fmt: skip
def test_a_typo_fails(text, tmp_path, protocol, old, new):
    """A typo in the README's command or in the protocol's file is a ConfigError, before any run."""
    command = commands(text)[protocol]
    rel = f"{PROTOCOLS}/{protocol}.yaml"
    source = (ROOT / rel).read_text()
    assert (command.count(old) == 1) != (source.count(old) == 1), f"{old!r}: once, in the command or the file"
    good, bad = tmp_path / "good.yaml", tmp_path / "bad.yaml"
    good.write_text(source)
    bad.write_text(source.replace(old, new))
    parse(protocol, command, {rel: good})  # the copy, unmodified, parses
    with pytest.raises(ConfigError):
        if old in command:
            parse(protocol, command.replace(old, new), {rel: good})
        else:
            parse(protocol, command, {rel: bad})
