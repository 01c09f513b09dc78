"""The executed notebooks as a small static site: one HTML page per notebook and an index.

    python -m mssdf.reports.site [--params params.yaml] [--section site]

:func:`build_site` renders every executed notebook ``reports/*.ipynb`` (sorted) to
``reports/html/<stem>.html`` (:func:`render_html`: nbconvert's ``lab`` template, code
inputs kept, no In/Out prompts, images embedded as base64, no external script) and
writes ``reports/index.html``, a self-contained page (inline CSS, no JavaScript, nothing
loaded from elsewhere) with

* a header saying that the default pipeline runs on a small real sample, so its numbers
  are not comparable to the paper's;
* the key numbers of ``reports/paper/results.json`` (written by the figures stage): one table per family, one column
  per initialisation (mean ± std), the paper's value where there is one, and the label
  kind of each row (``real``, ``SYNTHETIC``, ``DERIVED``);
* one row per stage: its page, its title and its run time (papermill's
  ``metadata.papermill.duration``), with the total;
* every figure ``reports/figures/*.png`` as a thumbnail linking to its SVG (or PNG);
* the licences and attributions of the embedded data (``data/raw/LICENSE.md``).

Every link is relative, so the folder can be published or opened from disk as it is;
:mod:`mssdf.reports.browser` checks the pages in headless Chromium.

Nothing is written before every notebook has been read and rendered, and every file is
written atomically: a corrupt notebook fails naming it, and the previous site is intact.
Errors print one ``error:`` line and exit with 2.
"""

from __future__ import annotations

import argparse
import html
import json
import math
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

from mssdf.atomic import atomic_write_text
from mssdf.config import ConfigError, from_dict, yaml_load
from mssdf.paths import resolve
from mssdf.reports.paper import format_value, row_digits

PROJECT = "mssdf — MSSDF reproduction on the embedded sample"
DASH = "—"


class SiteError(ValueError):
    """An input of the site (an executed notebook, results.json) cannot be read."""


@dataclass(frozen=True)
class SiteConfig:
    """Where the site reads and writes (the ``site`` section of params.yaml; repository-relative
    paths; unknown keys fail in :func:`mssdf.config.from_dict`)."""

    reports_dir: str = "reports"  # the executed notebooks *.ipynb
    html_dir: str = "reports/html"  # one page per notebook
    index: str = "reports/index.html"
    results: str = "reports/paper/results.json"  # key numbers (optional; the figures stage writes it)
    figures_dir: str = "reports/figures"  # *.png thumbnails, linking to *.svg where present
    licence: str = "data/raw/LICENSE.md"  # licences and attributions of the embedded data


# ----------------------------------------------------------------------------- notebooks
def _read_notebook(ipynb: Path) -> Any:
    import nbformat

    try:
        nb = nbformat.read(str(ipynb), as_version=4)
    except Exception as err:  # noqa: BLE001 - any reader failure is a corrupt notebook
        raise SiteError(f"{ipynb}: not a readable notebook ({type(err).__name__}: {err})") from err
    return nb


def stage_duration(ipynb: Path) -> float | None:
    """Seconds the notebook took under papermill (``metadata.papermill.duration``); None when absent.

    Raises:
        SiteError: the file is not a readable notebook.
    """
    return _duration(_read_notebook(Path(ipynb)))


def _duration(nb: Any) -> float | None:
    value = nb.get("metadata", {}).get("papermill", {}).get("duration")
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return None
    return float(value)


def _title(nb: Any, fallback: str) -> str:
    """The first markdown ``# `` heading of ``nb``, else ``fallback``."""
    for cell in nb.cells:
        if cell.cell_type != "markdown":
            continue
        for line in cell.source.splitlines():
            if line.startswith("# ") and line[2:].strip():
                return line[2:].strip()
    return fallback


def format_duration(seconds: float | None) -> str:
    """``137.4`` → ``"2 min 17 s"``; ``3725`` → ``"1 h 2 min 5 s"``; None → ``"—"``."""
    if seconds is None:
        return DASH
    total = int(round(seconds))
    h, rest = divmod(total, 3600)
    m, s = divmod(rest, 60)
    if h:
        return f"{h} h {m} min {s} s"
    if m:
        return f"{m} min {s} s"
    return f"{s} s"


# ----------------------------------------------------------------------------- pages
# The lab template without its external scripts (require.js, MathJax, mermaid: none of the
# notebooks' outputs needs them), with a link back to the index and images kept in the page width.
_PAGE_TEMPLATE = """{%- extends 'index.html.j2' -%}
{%- block html_head_js_requirejs -%}{%- endblock html_head_js_requirejs -%}
{%- block html_head_js_mathjax -%}{%- endblock html_head_js_mathjax -%}
{%- block html_head_js_mermaidjs -%}{%- endblock html_head_js_mermaidjs -%}
{%- block extra_css -%}
<style type="text/css">
main { max-width: 1200px; margin: 0 auto; }
.jp-RenderedImage img, .jp-RenderedMarkdown img { max-width: 100%; height: auto; }
.jp-RenderedHTMLCommon table { display: block; max-width: 100%; overflow-x: auto; }
.jp-OutputArea-output pre { white-space: pre-wrap; overflow-wrap: anywhere; }
.jp-InputArea-editor pre { white-space: pre-wrap; overflow-wrap: anywhere; }
nav.mssdf-nav { max-width: 1200px; margin: 0 auto; padding: 8px 20px; font: 14px sans-serif; }
</style>
{%- endblock extra_css -%}
{%- block notebook_css -%}
{%- if resources.mssdf_css_href -%}
<link rel="stylesheet" type="text/css" href="{{ resources.mssdf_css_href | escape_html_keep_quotes }}">
{%- else -%}
<!--mssdf-css-begin-->{{ super() }}<!--mssdf-css-end-->
{%- endif -%}
{%- endblock notebook_css -%}
{%- block body_header -%}
{{ super() }}
{%- if resources.mssdf_index_href %}
<nav class="mssdf-nav"><a href="{{ resources.mssdf_index_href | escape_html_keep_quotes }}">&larr; back to the report index</a></nav>
{%- endif %}
{%- endblock body_header -%}
"""


def _exporter() -> Any:
    import jinja2
    from nbconvert import HTMLExporter

    return HTMLExporter(
        template_name="lab",
        template_file="mssdf_page.html.j2",
        extra_loaders=[jinja2.DictLoader({"mssdf_page.html.j2": _PAGE_TEMPLATE})],
        exclude_input_prompt=True,
        exclude_output_prompt=True,
    )


def _render(exporter: Any, nb: Any, title: str, index_href: str | None, css_href: str | None = None) -> str:
    resources = {"metadata": {"name": title}, "mssdf_index_href": index_href or "", "mssdf_css_href": css_href or ""}
    body, _ = exporter.from_notebook_node(nb, resources=resources)
    return body


CSS_FILE = "notebook.css"  # the lab template's stylesheet, written once next to the pages


def notebook_css(exporter: Any) -> str:
    """The lab template's notebook stylesheet (~300 kB), which every page would otherwise inline."""
    import nbformat

    page = _render(exporter, nbformat.v4.new_notebook(), "css", None)
    inner = page.split("<!--mssdf-css-begin-->", 1)[1].split("<!--mssdf-css-end-->", 1)[0]
    chunks = [c.split(">", 1)[1] for c in inner.split("<style")[1:]]  # the bodies of its <style> blocks
    return "\n".join(c.split("</style>", 1)[0].strip() for c in chunks) + "\n"


def render_html(ipynb: Path, html: Path, index_href: str | None = None) -> None:
    """Render an executed notebook to one self-contained HTML page (written atomically).

    nbconvert's ``lab`` template: code inputs kept, In/Out prompts dropped, images
    embedded (base64), no external scripts. The page title is the notebook's first
    markdown ``# `` heading, else the file stem.

    Args:
        ipynb: the executed notebook.
        html: the page to write.
        index_href: a link back to the index, relative to the page (none when None).

    Raises:
        SiteError: the notebook cannot be read or rendered.
    """
    ipynb, html = Path(ipynb), Path(html)
    nb = _read_notebook(ipynb)
    text = _render_checked(_exporter(), nb, ipynb, index_href)
    atomic_write_text(html, text)


def _render_checked(exporter: Any, nb: Any, ipynb: Path, index_href: str | None, css_href: str | None = None) -> str:
    try:
        return _render(exporter, nb, _title(nb, ipynb.stem), index_href, css_href)
    except Exception as err:  # noqa: BLE001 - a notebook nbconvert cannot render is corrupt
        raise SiteError(f"{ipynb}: cannot be rendered to HTML ({type(err).__name__}: {err})") from err


# ----------------------------------------------------------------------------- index parts
def _esc(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _href(target: Path, start: Path) -> str:
    """``target`` relative to the folder ``start`` as a URL path (forward slashes, quoted)."""
    from urllib.parse import quote

    return quote(Path(os.path.relpath(target, start)).as_posix())


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value)


def _paper_cell(r: Mapping[str, Any], digits: int) -> str:
    paper = _number(r.get("paper"))
    if paper is None:  # the row's dataset is not the paper's: say so, with what the paper reports
        ref = f'<br><span class="small">paper: {_esc(r["paper_dataset"])}</span>' if r.get("paper_dataset") else ""
        return f'<td class="small">{_esc(r.get("note") or "not comparable")}{ref}</td>'
    shown = r.get("paper_shown") or f"{paper:.{digits}f}"
    flag = "" if r.get("comparable") else ' <span class="small">(not comparable)</span>'
    where = f'<br><span class="small">{_esc(r["paper_dataset"])}</span>' if r.get("paper_dataset") else ""
    title = f' title="{_esc(r["note"])}"' if r.get("note") else ""
    return f'<td class="num"{title}>{_esc(shown)}{flag}{where}</td>'


def _results_section(path: Path, shown: str) -> str:
    out = ['<section id="key-numbers"><h2>Key numbers</h2>']
    if not path.is_file():
        out.append(f"<p class=\"missing\">No key numbers yet: <code>{_esc(shown)}</code> was not found "
                   "(the results stage writes it).</p></section>")
        return "\n".join(out)
    try:
        data = json.loads(path.read_text())
        rows = data["rows"]
        if not isinstance(rows, list) or not all(isinstance(r, Mapping) for r in rows):
            raise TypeError("rows must be a list of objects")
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise SiteError(f"{path}: not a readable results file ({type(err).__name__}: {err})") from err
    inits = [str(i) for i in data.get("inits") or []]
    for row in rows:
        for init in row.get("values") or {}:
            if init not in inits:
                inits.append(init)
    sources = data.get("generated_from") or []
    if sources:
        out.append("<p class=\"note\">From " + ", ".join(f"<code>{_esc(s)}</code>" for s in sources) + ".</p>")
    families: dict[str, list[Mapping[str, Any]]] = {}
    for row in rows:
        families.setdefault(str(row.get("family", "other")), []).append(row)
    if not families:
        out.append('<p class="missing">results.json holds no rows.</p>')
    for family, frows in families.items():
        with_paper = any(_number(r.get("paper")) is not None or r.get("note") for r in frows)
        with_baseline = any(_number(r.get("baseline")) is not None for r in frows)
        baseline = next((str(r["baseline_label"]) for r in frows if r.get("baseline_label")), "baseline")
        head = (["dataset", "metric", *inits] + ([baseline] if with_baseline else [])
                + (["paper (MSSDF)"] if with_paper else []) + ["labels"])
        out.append(f'<h3>{_esc(family)}</h3>\n<div class="scroll"><table class="results">')
        out.append("<thead><tr>" + "".join(f"<th>{_esc(h)}</th>" for h in head) + "</tr></thead><tbody>")
        for r in frows:
            digits = row_digits(r)
            dataset = str(r.get("dataset", DASH))
            if r.get("protocol"):
                dataset += f" · {r['protocol']}"
            metric = str(r.get("metric_label") or r.get("metric") or DASH)
            hib = r.get("higher_is_better")
            arrow = " ↑" if hib is True else " ↓" if hib is False else ""
            values = r.get("values") or {}
            cells = [f"<td>{_esc(dataset)}</td>", f"<td>{_esc(metric)}{_esc(arrow)}</td>"]
            for init in inits:
                cell = values.get(init)
                n = cell.get("n") if isinstance(cell, Mapping) else None
                title = f' title="n = {_esc(n)}"' if n is not None else ""
                cells.append(f'<td class="num"{title}>{_esc(format_value(cell, digits))}</td>')
            if with_baseline:
                base = _number(r.get("baseline"))
                title = f' title="{_esc(r["baseline_label"])}"' if r.get("baseline_label") else ""
                cells.append(f'<td class="num"{title}>{_esc(DASH if base is None else f"{base:.{digits}f}")}</td>')
            if with_paper:
                cells.append(_paper_cell(r, digits))
            labels = str(r.get("labels", DASH))
            kind = {"real": "real", "none": "none"}.get(labels.strip().lower(), "flagged")
            cells.append(f'<td><span class="label {kind}">{_esc(labels)}</span></td>')
            out.append("<tr>" + "".join(cells) + "</tr>")
        out.append("</tbody></table></div>")
    out.append("<p class=\"note\">Cells are mean ± standard deviation over runs (hover for the number of runs); "
               "↑ higher is better, ↓ lower is better. Rows whose labels are not <em>real</em> "
               "(SYNTHETIC, DERIVED) measure the pipeline, not the method.</p></section>")
    return "\n".join(out)


def _stages_section(stages: list[dict[str, Any]]) -> str:
    out = ['<section id="stages"><h2>Stages</h2>', '<div class="scroll"><table class="stages">',
           "<thead><tr><th>notebook</th><th>title</th><th>run time</th></tr></thead><tbody>"]
    for s in stages:
        out.append(f'<tr><td><a href="{_esc(s["href"])}">{_esc(s["stem"])}</a></td><td>{_esc(s["title"])}</td>'
                   f'<td class="num">{_esc(format_duration(s["duration"]))}</td></tr>')
    known = [s["duration"] for s in stages if s["duration"] is not None]
    missing = len(stages) - len(known)
    note = f" ({missing} without a run time)" if missing else ""
    out.append(f'</tbody><tfoot><tr><th colspan="2">total, {len(stages)} notebooks{_esc(note)}</th>'
               f'<th class="num">{_esc(format_duration(sum(known)) if known else DASH)}</th></tr></tfoot>')
    out.append("</table></div></section>")
    return "\n".join(out)


def _figures_section(figures_dir: Path, start: Path, shown: str) -> str:
    out = ['<section id="figures"><h2>Figures</h2>']
    pngs = sorted(figures_dir.glob("*.png")) if figures_dir.is_dir() else []
    if not pngs:
        out.append(f'<p class="missing">No figures (<code>*.png</code>) in <code>{_esc(shown)}</code>.</p></section>')
        return "\n".join(out)
    out.append('<div class="figures">')
    for png in pngs:
        svg = png.with_suffix(".svg")
        target = svg if svg.is_file() else png
        out.append(f'<figure><a href="{_esc(_href(target, start))}"><img src="{_esc(_href(png, start))}" '
                   f'alt="{_esc(png.stem)}"></a><figcaption>{_esc(png.stem)}'
                   f'{" (SVG)" if target is svg else ""}</figcaption></figure>')
    out.append("</div></section>")
    return "\n".join(out)


def _licence_section(licence: Path, start: Path, shown: str) -> str:
    out = ['<section id="licences"><h2>Data licences and attributions</h2>']
    if not licence.is_file():
        out.append(f"<p class=\"missing\">The licences of the embedded data are documented in "
                   f"<code>{_esc(shown)}</code> and the repository's README.md "
                   "(the file was not found when this page was built).</p></section>")
        return "\n".join(out)
    out.append(f'<div class="licence">{_markdown(licence.read_text(), licence.parent, start)}</div></section>')
    return "\n".join(out)


def _markdown(text: str, base: Path, start: Path) -> str:
    """Markdown → HTML with mistune (raw HTML escaped); relative links rebased from ``base`` to ``start``."""
    import mistune
    from urllib.parse import urlsplit

    def rebase(url: str) -> str:
        parts = urlsplit(url)
        if parts.scheme or parts.netloc or url.startswith(("#", "/")):
            return url
        return _href(base / parts.path, start) + (f"#{parts.fragment}" if parts.fragment else "")

    class Renderer(mistune.HTMLRenderer):
        def link(self, text: str, url: str, title: str | None = None) -> str:
            return super().link(text, rebase(url), title)

        def image(self, text: str, url: str, title: str | None = None) -> str:
            return super().image(text, rebase(url), title)

        def heading(self, text: str, level: int, **attrs: Any) -> str:
            return super().heading(text, min(level + 2, 6), **attrs)  # below the index's own h2

    md = mistune.create_markdown(escape=True, renderer=Renderer(escape=True), plugins=["table", "url", "strikethrough"])
    return str(md(text))


_CSS = """
body { font: 15px/1.5 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; color: #1f2328; margin: 0; background: #fff; }
main { max-width: 1100px; margin: 0 auto; padding: 16px 24px 48px; }
header { border-bottom: 2px solid #d0d7de; margin-bottom: 16px; }
h1 { font-size: 1.6em; margin: 0.6em 0 0.3em; }
h2 { font-size: 1.3em; border-bottom: 1px solid #d0d7de; padding-bottom: 4px; margin-top: 1.6em; }
h3 { font-size: 1.05em; margin: 1.2em 0 0.4em; }
.warning { background: #fff8c5; border: 1px solid #d4a72c; border-radius: 6px; padding: 10px 14px; }
.note, .small { color: #57606a; }
.small { font-size: 0.85em; }
.missing { color: #9a6700; }
.scroll { max-width: 100%; overflow-x: auto; }
table { border-collapse: collapse; margin: 6px 0; }
th, td { border: 1px solid #d0d7de; padding: 4px 10px; text-align: left; vertical-align: top; }
thead th, tfoot th { background: #f6f8fa; }
td.num, th.num { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
.label { border-radius: 4px; padding: 0 6px; font-size: 0.85em; white-space: nowrap; }
.label.real { background: #dafbe1; color: #116329; }
.label.flagged { background: #ffebe9; color: #a40e26; font-weight: 600; }
.label.none { background: #eaeef2; color: #57606a; }
.figures { display: grid; grid-template-columns: repeat(auto-fill, minmax(320px, 1fr)); gap: 16px; }
figure { margin: 0; min-width: 0; }
figure img { display: block; width: 100%; height: 260px; object-fit: contain; border: 1px solid #d0d7de; background: #fff; }
figcaption { font-size: 0.85em; color: #57606a; word-break: break-all; }
.licence table { font-size: 0.9em; }
.licence { overflow-wrap: anywhere; }
code { background: #f6f8fa; padding: 0 3px; border-radius: 3px; font-size: 0.92em; }
"""


def _index(project: str, parts: list[str]) -> str:
    intro = ("The default pipeline runs every stage on a small real sample embedded in the repository "
             "(a few tiles from public test data, a short pre-training, a few fine-tuning epochs), so that it "
             "finishes on a laptop. Its numbers show that the code runs end to end and how the "
             "initialisations compare on this sample; they are <strong>not comparable to the paper's</strong>, "
             "which pre-trains on a large multi-source corpus and fine-tunes on the full benchmarks.")
    return "\n".join([
        "<!DOCTYPE html>", '<html lang="en">', "<head>", '<meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">', f"<title>{_esc(project)}</title>",
        f"<style>{_CSS}</style>", "</head>", "<body><main>",
        f'<header><h1>{_esc(project)}</h1><p class="warning">{intro}</p>'
        '<p><a href="#key-numbers">Key numbers</a> · <a href="#stages">Stages</a> · <a href="#figures">Figures</a> · '
        '<a href="#licences">Data licences</a></p></header>',
        *parts, "</main></body></html>", "",
    ])


# ----------------------------------------------------------------------------- site
def build_site(cfg: SiteConfig) -> Path:
    """Render every ``reports_dir/*.ipynb`` to ``html_dir`` and write the index; returns its path.

    The pages share one stylesheet, ``html_dir/notebook.css``, instead of each inlining it.
    Everything is read and rendered in memory first, then written atomically file by file.

    Raises:
        ConfigError: ``reports_dir`` is missing or holds no notebook.
        SiteError: a notebook or results.json cannot be read (naming the file).
    """
    reports = resolve(cfg.reports_dir)
    html_dir, index = resolve(cfg.html_dir), resolve(cfg.index)
    if not reports.is_dir():
        raise ConfigError(f"site.reports_dir: {reports} is not a folder (run the pipeline's notebooks first)")
    notebooks = sorted(reports.glob("*.ipynb"))
    if not notebooks:
        raise ConfigError(f"site.reports_dir: no executed notebook (*.ipynb) in {reports}")
    start = index.parent
    exporter = _exporter()
    pages: dict[Path, str] = {}
    stages = []
    for ipynb in notebooks:
        nb = _read_notebook(ipynb)
        page = html_dir / f"{ipynb.stem}.html"
        title = _title(nb, ipynb.stem)
        pages[page] = _render_checked(exporter, nb, ipynb, _href(index, html_dir), CSS_FILE)
        stages.append({"stem": ipynb.stem, "title": title, "duration": _duration(nb), "href": _href(page, start)})
    parts = [
        _results_section(resolve(cfg.results), cfg.results),
        _stages_section(stages),
        _figures_section(resolve(cfg.figures_dir), start, cfg.figures_dir),
        _licence_section(resolve(cfg.licence), start, cfg.licence),
    ]
    text = _index(PROJECT, parts)
    pages[html_dir / CSS_FILE] = notebook_css(exporter)
    for page, body in pages.items():
        atomic_write_text(page, body)
    atomic_write_text(index, text)
    return index


def load_config(params: str | Path = "params.yaml", section: str = "site") -> SiteConfig:
    """The :class:`SiteConfig` of ``section`` in ``params`` (defaults when the section is absent).

    Raises:
        ConfigError: the file is missing or not a mapping, or the section has an unknown key or a bad value.
    """
    path = resolve(params)
    if not path.is_file():
        raise ConfigError(f"{path}: config file not found")
    loaded = yaml_load(path.read_text()) or {}
    if not isinstance(loaded, Mapping):
        raise ConfigError(f"{path}: expected a mapping at the top")
    data = loaded.get(section) or {}
    if not isinstance(data, Mapping):
        raise ConfigError(f"{path}: section {section!r} is not a mapping")
    return from_dict(SiteConfig, data, section)


def build_parser() -> argparse.ArgumentParser:
    """The command line."""
    ap = argparse.ArgumentParser(prog="python -m mssdf.reports.site", description=__doc__.splitlines()[0])
    ap.add_argument("--params", default="params.yaml", help="the parameters file (default params.yaml)")
    ap.add_argument("--section", default="site", help="its section holding the site's options (defaults when absent)")
    return ap


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        index = build_site(load_config(args.params, args.section))
    except (ConfigError, SiteError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"wrote {index}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
