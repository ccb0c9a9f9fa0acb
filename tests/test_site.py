"""The course as a static site: it builds from the committed notebooks, and in headless
Chromium every page loads without console errors, every figure shows with its alt text,
every internal link resolves, and live widgets appear as pictures with a note."""

from __future__ import annotations

import functools
import http.server
import threading
import urllib.parse
from pathlib import Path

import nbformat
import pytest

from gradflow_lessons.tooling import site
from gradflow_lessons.tooling.syllabus import LESSONS

ROOT = Path(__file__).resolve().parent.parent


def test_a_live_widget_becomes_its_saved_picture_and_a_note():
    nb = nbformat.read(ROOT / "notebooks" / "02_vanishing_gradients.ipynb", as_version=4)
    assert site.static_widgets(nb) >= 1
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs]
    assert not any(site.WIDGET_VIEW in o.get("data", {}) for o in outputs)
    note = next(i for i, o in enumerate(outputs) if o.get("data", {}).get("text/markdown") == site.LIVE_NOTE)
    assert "image/png" in outputs[note - 1]["data"], "the picture comes before the note"


def test_alt_text_survives_into_the_page_html():
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(outputs=[nbformat.v4.new_output(
        "display_data", data={"image/png": "iVBORw0KGgo="}, metadata={"image/png": {"alt": 'a "plot"'}})])])
    assert site.carry_alt_text(nb) == 1
    assert nb.cells[0].outputs[0]["data"] == {
        "text/html": '<img src="data:image/png;base64,iVBORw0KGgo=" alt="a &quot;plot&quot;" />'}


def test_notebook_links_in_markdown_outputs_point_at_pages():
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(outputs=[nbformat.v4.new_output(
        "display_data", data={"text/markdown": "[01](01_x.ipynb) and [ex](../exercises/01_y.ipynb)"})])])
    assert site.output_links(nb) == 1
    rewritten = nb.cells[0].outputs[0]["data"]["text/markdown"]
    assert rewritten == "[01](01_x.html) and [ex](../solutions/01_y.html)"


def test_the_home_page_is_the_course_map_in_course_order():
    home = site.home_page(ROOT)
    written = [lesson for lesson in LESSONS if lesson.is_written(ROOT)]
    positions = [home.index(f"notebooks/{Path(lesson.notebook).stem}\n") for lesson in written]
    assert positions == sorted(positions)
    assert all(lesson.title in home for lesson in written)


@pytest.fixture(scope="module")
def served_site(tmp_path_factory):
    pytest.importorskip("myst_nb", reason="the site extra is not installed")
    out = tmp_path_factory.mktemp("site")
    index = site.build(ROOT, out)
    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args):  # no line per request in the test log
            pass

    handler = functools.partial(Quiet, directory=str(index.parent))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield index.parent, f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()


@pytest.mark.slow
@pytest.mark.browser
def test_every_page_loads_cleanly_with_its_figures_and_working_links(served_site, browser):
    html_dir, base = served_site
    pages = sorted(p.relative_to(html_dir).as_posix() for p in html_dir.glob("*/*.html")
                   if p.parent.name in ("notebooks", "solutions")) + ["index.html"]
    assert len(pages) >= len([lesson for lesson in LESSONS if lesson.is_written(ROOT)]) + 1
    page = browser.new_page()
    errors: list[str] = []
    page.on("console", lambda m: errors.append(f"{page.url}: {m.text}") if m.type == "error" else None)
    page.on("pageerror", lambda e: errors.append(f"{page.url}: {e}"))
    broken_images, missing_alt, broken_links = [], [], []
    for name in pages:
        page.goto(f"{base}/{name}", wait_until="load")
        images = page.eval_on_selector_all(
            "article img", "els => els.map(e => [e.currentSrc.slice(0, 60), e.naturalWidth, e.alt])")
        broken_images += [f"{name}: {src}" for src, width, _ in images if width == 0]
        missing_alt += [f"{name}: {src}" for src, _, alt in images if not alt or alt.endswith(".png")]
        for href in page.eval_on_selector_all("a[href]", "els => els.map(e => e.getAttribute('href'))"):
            target = urllib.parse.urlparse(urllib.parse.urljoin(f"{base}/{name}", href))
            if target.netloc != urllib.parse.urlparse(base).netloc:
                continue  # external: not ours to check offline
            path = html_dir / urllib.parse.unquote(target.path).lstrip("/")
            if not (path.is_file() or (path / "index.html").is_file()):
                broken_links.append(f"{name}: {href}")
    page.close()
    assert not errors, errors[:10]
    assert not broken_images, broken_images[:10]
    assert not missing_alt, missing_alt[:10]
    assert not broken_links, broken_links[:60]


@pytest.mark.slow
@pytest.mark.browser
def test_widget_lessons_show_a_picture_and_say_the_live_version_needs_jupyterlab(served_site, browser):
    html_dir, base = served_site
    page = browser.new_page()
    page.goto(f"{base}/notebooks/02_vanishing_gradients.html", wait_until="load")
    assert page.get_by_text("to move its controls").count() >= 1
    assert page.locator("article img").count() >= 1
    page.close()
