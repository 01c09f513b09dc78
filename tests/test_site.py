"""The report site (mssdf.reports.site): pages, index, bad inputs; and its pages in headless
Chromium (mssdf.reports.browser) when one is installed."""

from __future__ import annotations

import base64
import dataclasses
import io
import json
import re
import shutil
from html.parser import HTMLParser
from pathlib import Path

import nbformat
import pytest
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook, new_output

from mssdf.config import ConfigError, from_dict
from mssdf.reports import site
from mssdf.reports.browser import BrowserError, check_pages, find_browser, site_pages
from mssdf.reports.site import SiteConfig, SiteError, build_site, format_duration, load_config, render_html, stage_duration

ROOT = Path(__file__).resolve().parents[1]
NO_BROWSER = "no Chromium/Chrome on PATH (apt-get install chromium); the HTML pages were not checked in a browser"

DURATIONS = {"01_alpha": 37.2, "02_beta": 100.0}  # total 137.2 s -> "2 min 17 s"
TITLE = "01 · Alpha <script>alert(1)</script> & co"

RESULTS = {
    "generated_from": ["reports/segmentation/metrics.json", "reports/height/metrics.json"],
    "inits": ["random", "mae", "mssdf"],
    "rows": [
        {"family": "semantic segmentation", "task": "segmentation", "dataset": "buildings", "metric": "miou",
         "metric_label": "mIoU", "higher_is_better": True, "labels": "real", "paper": 0.783,
         "paper_dataset": "ISPRS Potsdam (50 % train)", "comparable": False,
         "values": {"random": {"mean": 0.41, "std": 0.02, "n": 3}, "mae": {"mean": 0.4567, "std": 0.0123, "n": 3},
                    "mssdf": {"mean": 0.5, "std": 0.0, "n": 3}}},
        {"family": "semantic segmentation", "task": "segmentation", "dataset": "asprs", "metric": "miou",
         "metric_label": "mIoU", "higher_is_better": True, "labels": "SYNTHETIC", "paper": None,
         "paper_dataset": None, "comparable": False,
         "values": {"random": {"mean": 0.1, "std": 0.05, "n": 3}, "mssdf": {"mean": 0.2, "std": 0.01, "n": 3}}},
        {"family": "height", "task": "height", "dataset": "autzen", "metric": "rmse_m", "metric_label": "RMSE (m)",
         "higher_is_better": False, "labels": "DERIVED", "paper": None, "paper_dataset": None, "comparable": False,
         "values": {"random": {"mean": 3.14159, "std": 0.5, "n": 3}, "mae": {"mean": 2.5, "std": 0.25, "n": 3},
                    "mssdf": {"mean": 2.0, "std": 0.125, "n": 3}}},
        # optional fields: a baseline, the paper's number as printed, near-zero means (one more decimal)
        {"family": "object detection", "task": "detection", "dataset": "trees", "metric": "map_50", "metric_label": "mAP50",
         "higher_is_better": True, "labels": "real", "paper": 45.2, "paper_shown": "45.20", "comparable": True,
         "paper_dataset": "DIOR (trainval)", "note": "different data", "baseline": 0.0011, "baseline_label": "constant",
         "values": {"random": {"mean": 0.0021, "std": 0.0013, "n": 3}, "mae": {"mean": None, "std": None, "n": 0},
                    "mssdf": {"mean": 0.0071, "std": 0.002, "n": 3}}},
    ],
}

LICENCE = """# Licences of the fake sample

| files | licence |
|---|---|
| `fake/a.tif` | CC BY-SA 4.0 https://creativecommons.org/licenses/by-sa/4.0/ |

Attribution: Fake Mapping Agency <b>bold?</b>
"""


def _png(color: tuple[int, int, int] = (200, 30, 30)) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (12, 8), color).save(buf, format="PNG")
    return buf.getvalue()


def _notebook(path: Path, title: str | None, duration: float | None, source: str = "x = 1\nprint(x)") -> None:
    cells = []
    if title is not None:
        cells.append(new_markdown_cell(f"Some intro.\n\n# {title}\n\nText."))
    code = new_code_cell(source, execution_count=1)
    code.outputs = [
        new_output("stream", name="stdout", text="1\n"),
        new_output("display_data", data={"image/png": base64.b64encode(_png()).decode(), "text/plain": "<Figure>"}),
    ]
    cells.append(code)
    nb = new_notebook(cells=cells)
    if duration is not None:
        nb.metadata["papermill"] = {"duration": duration, "exception": None}
    nbformat.write(nb, str(path))


@pytest.fixture
def fake_site(tmp_path) -> SiteConfig:
    """Two executed notebooks, results.json, two figures (one with an SVG), a LICENSE.md."""
    reports = tmp_path / "reports"
    figures = reports / "figures"
    figures.mkdir(parents=True)
    # a notebook's own Markdown is trusted HTML for nbconvert (not sanitised: the pipeline wrote
    # it), but the index and the page's <title> must escape the heading taken from it
    _notebook(reports / "01_alpha.ipynb", TITLE, DURATIONS["01_alpha"], "import json  # the call users want to see")
    _notebook(reports / "02_beta.ipynb", None, DURATIONS["02_beta"])
    (figures / "results.json").write_text(json.dumps(RESULTS))
    (figures / "fig_a.png").write_bytes(_png((10, 120, 10)))
    (figures / "fig_a.svg").write_text('<svg xmlns="http://www.w3.org/2000/svg" width="12" height="8"></svg>')
    (figures / "fig_b.png").write_bytes(_png((10, 10, 200)))
    licence = tmp_path / "data" / "raw" / "LICENSE.md"
    licence.parent.mkdir(parents=True)
    licence.write_text(LICENCE)
    return SiteConfig(reports_dir=str(reports), html_dir=str(reports / "html"), index=str(reports / "index.html"),
                      results=str(figures / "results.json"), figures_dir=str(figures), licence=str(licence))


class _Tables(HTMLParser):
    """Every table of a page as rows of cell texts, keyed by the last ``<h2>``/``<h3>`` before it."""

    def __init__(self) -> None:
        super().__init__()
        self.tables: list[tuple[str, list[list[str]]]] = []
        self.hrefs: list[str] = []
        self.imgs: list[str] = []
        self._h3: str | None = None
        self._last_h3 = ""
        self._cell: list[str] | None = None
        self._row: list[str] | None = None

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "a" and "href" in attrs:
            self.hrefs.append(attrs["href"])
        elif tag == "img":
            self.imgs.append(attrs.get("src", ""))
        elif tag in ("h2", "h3"):
            self._h3 = ""
        elif tag == "table":
            self.tables.append((self._last_h3, []))
        elif tag == "tr":
            self._row = []
        elif tag in ("td", "th"):
            self._cell = []
        elif tag == "br" and self._cell is not None:
            self._cell.append(" ")

    def handle_endtag(self, tag):
        if tag in ("h2", "h3") and self._h3 is not None:
            self._last_h3, self._h3 = self._h3.strip(), None
        elif tag in ("td", "th") and self._cell is not None and self._row is not None:
            self._row.append(" ".join("".join(self._cell).split()))
            self._cell = None
        elif tag == "tr" and self._row is not None:
            self.tables[-1][1].append(self._row)
            self._row = None

    def handle_data(self, data):
        if self._h3 is not None:
            self._h3 += data
        if self._cell is not None:
            self._cell.append(data)


def _parse(path: Path) -> _Tables:
    parser = _Tables()
    parser.feed(path.read_text())
    return parser


def _table(parsed: _Tables, heading: str) -> list[list[str]]:
    found = [rows for h, rows in parsed.tables if h == heading]
    assert len(found) == 1, f"one table under {heading!r} expected, found {[h for h, _ in parsed.tables]}"
    return found[0]


# ----------------------------------------------------------------------------- pages and index
def test_every_notebook_gets_a_page_linked_from_the_index(fake_site):
    index = build_site(fake_site)
    assert index == Path(fake_site.index)
    parsed = _parse(index)
    for stem in DURATIONS:
        page = Path(fake_site.html_dir) / f"{stem}.html"
        assert page.is_file(), stem
        assert f"html/{stem}.html" in parsed.hrefs
        text = page.read_text()
        assert "data:image/png;base64," in text  # the output image stays embedded
        assert 'class="jp-InputPrompt' not in text and 'class="jp-OutputPrompt' not in text  # no In/Out prompts
        assert 'href="../index.html"' in text  # back to the index
        assert not re.search(r"""(?:src|href)\s*=\s*["']?(?:https?:)?//""", text)  # nothing loaded from elsewhere
    alpha = (Path(fake_site.html_dir) / "01_alpha.html").read_text()
    assert "the call users want to see" in alpha  # code inputs are kept
    beta = (Path(fake_site.html_dir) / "02_beta.html").read_text()
    assert "<title>02_beta</title>" in beta  # no heading: the stem
    assert "<script" not in beta  # no require.js, MathJax or mermaid loader


def test_pages_share_one_stylesheet_instead_of_inlining_it(fake_site):
    from mssdf.reports.site import CSS_FILE

    build_site(fake_site)
    html_dir = Path(fake_site.html_dir)
    css = (html_dir / CSS_FILE).read_text()
    assert ".jp-Notebook" in css and "<style" not in css
    pages = sorted(html_dir.glob("*.html"))
    assert pages
    for page in pages:
        text = page.read_text()
        assert f'href="{CSS_FILE}"' in text and ".jp-Notebook {" not in text


def test_stage_table_shows_run_times_and_their_total(fake_site):
    parsed = _parse(build_site(fake_site))
    rows = [r for h, rows in parsed.tables for r in rows if r and r[0] in DURATIONS]
    assert {r[0]: r[2] for r in rows} == {stem: format_duration(d) for stem, d in DURATIONS.items()}
    assert {r[0]: r[1] for r in rows} == {"01_alpha": " ".join(TITLE.split()), "02_beta": "02_beta"}
    total = [r for h, rows in parsed.tables for r in rows if r and r[0].startswith("total")]
    assert total == [["total, 2 notebooks", format_duration(sum(DURATIONS.values()))]]
    assert format_duration(sum(DURATIONS.values())) == "2 min 17 s"
    assert format_duration(37.2) == "37 s" and format_duration(3725) == "1 h 2 min 5 s" and format_duration(None) == "—"


def test_results_tables_equal_the_json(fake_site):
    parsed = _parse(build_site(fake_site))
    inits = RESULTS["inits"]
    for family in ("semantic segmentation", "height", "object detection"):
        rows = [r for r in RESULTS["rows"] if r["family"] == family]
        table = _table(parsed, family)
        with_paper = any(r["paper"] is not None or r.get("note") for r in rows)
        with_baseline = any(r.get("baseline") is not None for r in rows)
        baseline = next((r["baseline_label"] for r in rows if r.get("baseline_label")), "baseline")
        assert table[0] == ["dataset", "metric", *inits, *([baseline] if with_baseline else []),
                            *(["paper (MSSDF)"] if with_paper else []), "labels"]
        assert len(table) == 1 + len(rows)
        for expected, got in zip(rows, table[1:]):
            means = [v["mean"] for v in expected["values"].values() if v["mean"] is not None]
            d = 4 if max(means) < 0.01 else 3
            assert got[0] == expected["dataset"]
            assert got[1].startswith(expected["metric_label"])
            for i, init in enumerate(inits):
                v = expected["values"].get(init)
                assert got[2 + i] == (f"{v['mean']:.{d}f} ± {v['std']:.{d}f}" if v and v["mean"] is not None else "—"), \
                    (family, init)
            if with_baseline:
                assert got[2 + len(inits)] == f"{expected['baseline']:.{d}f}"
            if with_paper:
                paper = got[2 + len(inits) + with_baseline]
                shown = expected.get("paper_shown") or (expected["paper"] is not None and f"{expected['paper']:.3f}")
                if expected["paper"] is not None:
                    assert paper.startswith(shown)
                else:  # not the paper's dataset: the row says so
                    assert paper.startswith(expected.get("note") or "not comparable")
            assert got[-1] == expected["labels"]
    seg = _table(parsed, "semantic segmentation")
    assert seg[2][3] == "—"  # asprs has no mae value
    assert seg[2][-1] == "SYNTHETIC"
    assert "ISPRS Potsdam (50 % train)" in seg[1][5] and "(not comparable)" in seg[1][5]
    det = _table(parsed, "object detection")
    assert det[1][2:7] == ["0.0021 ± 0.0013", "—", "0.0071 ± 0.0020", "0.0011", "45.20 DIOR (trainval)"]


def test_licence_escaping_and_figures(fake_site):
    index = build_site(fake_site)
    text = index.read_text()
    assert "Licences of the fake sample" in text and "Fake Mapping Agency" in text
    assert '<a href="https://creativecommons.org/licenses/by-sa/4.0/">' in text  # bare URL -> a link, not loaded
    assert "<b>bold?</b>" not in text and "&lt;b&gt;bold?&lt;/b&gt;" in text  # raw HTML in the Markdown is escaped
    assert "<script" not in text and "&lt;script&gt;alert(1)&lt;/script&gt;" in text
    page = (Path(fake_site.html_dir) / "01_alpha.html").read_text()
    assert "<title>01 · Alpha &lt;script&gt;alert(1)&lt;/script&gt; &amp; co</title>" in page
    assert "NOT comparable" in text or "not comparable to the paper" in text
    parsed = _parse(index)
    assert parsed.imgs == ["figures/fig_a.png", "figures/fig_b.png"]
    assert "figures/fig_a.svg" in parsed.hrefs and "figures/fig_b.png" in parsed.hrefs
    assert not any(src.startswith(("http:", "https:", "//")) for src in parsed.imgs)


def test_missing_results_and_licence_are_said_not_fatal(fake_site):
    Path(fake_site.results).unlink()
    Path(fake_site.licence).unlink()
    text = build_site(fake_site).read_text()
    assert "No key numbers yet" in text and "results.json" in text
    assert "licences of the embedded data are documented in" in text


def test_stage_duration_and_render_html(fake_site, tmp_path):
    nb = Path(fake_site.reports_dir) / "01_alpha.ipynb"
    assert stage_duration(nb) == pytest.approx(DURATIONS["01_alpha"])
    _notebook(tmp_path / "plain.ipynb", "Plain", None)
    assert stage_duration(tmp_path / "plain.ipynb") is None
    out = tmp_path / "out" / "plain.html"
    render_html(tmp_path / "plain.ipynb", out)
    assert "<title>Plain</title>" in out.read_text() and "data:image/png;base64," in out.read_text()


# ----------------------------------------------------------------------------- bad input
def test_missing_reports_dir_names_it(fake_site, tmp_path):
    cfg = dataclasses.replace(fake_site, reports_dir=str(tmp_path / "nowhere"))
    with pytest.raises(ConfigError, match="nowhere"):
        build_site(cfg)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ConfigError, match="no executed notebook.*empty"):
        build_site(dataclasses.replace(fake_site, reports_dir=str(empty)))


def test_corrupt_notebook_is_named_and_the_previous_site_kept(fake_site, capsys, tmp_path):
    index = Path(fake_site.index)
    index.write_text("previous index")
    (Path(fake_site.reports_dir) / "03_broken.ipynb").write_text('{"cells": [')
    with pytest.raises(SiteError, match="03_broken.ipynb"):
        build_site(fake_site)
    assert index.read_text() == "previous index"
    assert not Path(fake_site.html_dir).exists()  # nothing written before every notebook is rendered
    params = tmp_path / "params.yaml"
    params.write_text(json.dumps({"site": dataclasses.asdict(fake_site)}))  # JSON is YAML
    assert site.main(["--params", str(params)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and "03_broken.ipynb" in err[0]
    assert index.read_text() == "previous index"


def test_unknown_site_key_is_named(tmp_path, capsys):
    with pytest.raises(ConfigError, match="site.report_dir"):
        from_dict(SiteConfig, {"report_dir": "reports"}, "site")
    params = tmp_path / "params.yaml"
    params.write_text("site:\n  reports_dir: reports\n  colour: blue\n")
    with pytest.raises(ConfigError, match="site.colour"):
        load_config(params)
    assert site.main(["--params", str(params)]) == 2
    assert "site.colour" in capsys.readouterr().err
    params.write_text("other: {a: 1}\n")
    assert load_config(params) == SiteConfig()  # no site section: the defaults


def test_cli_builds_the_site(fake_site, tmp_path, capsys):
    params = tmp_path / "params.yaml"
    params.write_text(json.dumps({"site": dataclasses.asdict(fake_site)}))
    assert site.main(["--params", str(params)]) == 0
    assert Path(fake_site.index).is_file() and "wrote" in capsys.readouterr().out


# ----------------------------------------------------------------------------- in a browser
@pytest.fixture
def browser() -> str:
    found = find_browser()
    if found is None:
        pytest.skip(NO_BROWSER)
    return found


def test_fake_site_passes_the_browser_check_and_breakage_is_reported(fake_site, browser):
    index = build_site(fake_site)
    root = index.parent
    pages = site_pages(root)
    assert pages == ["index.html", "html/01_alpha.html", "html/02_beta.html"]
    assert check_pages(root, pages, browser) == []

    (root / "figures" / "fig_b.png").unlink()  # the index shows it and links to it
    page = root / "html" / "02_beta.html"
    page.write_text(page.read_text().replace("</main>", '<a href="03_gone.html">gone</a> <a href="#nowhere">x</a>'
                                             '<a href="../index.html#stages">ok</a></main>'))
    problems = check_pages(root, pages, browser)
    assert any(p.startswith("index.html: broken image #2") for p in problems), problems
    assert any(p.startswith("index.html: broken link 'figures/fig_b.png'") for p in problems), problems
    assert any(p.startswith("html/02_beta.html: broken link '03_gone.html'") for p in problems), problems
    assert any(p.startswith("html/02_beta.html: link '#nowhere'") for p in problems), problems
    assert len(problems) == 4, problems
    assert check_pages(root, ["html/missing.html"], browser) == ["html/missing.html: page not found (HTTP 404)"]


def test_a_browser_that_cannot_run_is_a_clear_error(fake_site, tmp_path):
    root = build_site(fake_site).parent
    with pytest.raises(BrowserError, match="cannot be run"):
        check_pages(root, ["index.html"], str(tmp_path / "no-such-chromium"))
    with pytest.raises(BrowserError, match="printed no checker page"):
        check_pages(root, ["index.html"], shutil.which("false") or "/bin/false")


def test_real_site_passes_the_browser_check(browser):
    reports = ROOT / "reports"
    if not (reports / "index.html").is_file():
        pytest.skip("reports/index.html not built (python -m mssdf.reports.site, or its DVC stage); "
                    "the real pages were not checked in a browser")
    pages = site_pages(reports)
    assert check_pages(reports, pages, browser, timeout_s=180) == []


def test_copy_of_site_is_self_contained(fake_site, tmp_path, browser):
    """The site folder moved elsewhere still works: every link is relative."""
    root = build_site(fake_site).parent
    moved = tmp_path / "moved"
    shutil.copytree(root, moved)
    assert check_pages(moved, site_pages(moved), browser) == []
