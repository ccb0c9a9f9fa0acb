"""The course in a real browser: JupyterLab serves a lesson, headless Chromium runs it, a
slider moves, and the figure and readout must change.

"Error displaying widget" is the commonest way a Jupyter course breaks for a learner, and
only a browser sees it. Uses Debian's chromium (never a downloaded browser) through
Playwright's ``executable_path`` (the ``browser`` fixture in conftest.py); the README test
command installs it when missing.
Failures save a screenshot under ``tests/artifacts/``.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from conftest import free_port

ROOT = Path(__file__).resolve().parent.parent
ARTIFACTS = ROOT / "tests" / "artifacts"
TOKEN = "gradflow-browser-test"
ERROR_OUTPUT = ".jp-OutputArea-output[data-mime-type='application/vnd.jupyter.error']"
pytestmark = [pytest.mark.browser, pytest.mark.slow]


def widget_notebooks() -> list[Path]:
    """Lessons and solutions that display the course's ipywidgets explorers."""
    found = []
    for folder in ("notebooks", "solutions"):
        for path in sorted((ROOT / folder).glob("*.ipynb")):
            if "gradflow_lessons.widgets" in path.read_text(encoding="utf-8"):
                found.append(path)
    return found


@pytest.fixture(scope="module")
def jupyterlab(tmp_path_factory):
    """A JupyterLab server on a free localhost port, serving a scratch copy of the course
    (autosave must not touch the committed notebooks). Always stopped afterwards."""
    site = tmp_path_factory.mktemp("lab")
    for folder in ("notebooks", "solutions"):
        shutil.copytree(ROOT / folder, site / folder)
    port = free_port()
    log = open(site / "server.log", "w")
    server = subprocess.Popen(
        [sys.executable, "-m", "jupyter", "lab", "--no-browser", f"--port={port}",
         "--ServerApp.ip=127.0.0.1", f"--ServerApp.token={TOKEN}", f"--ServerApp.root_dir={site}",
         "--allow-root", "--LabApp.expose_app_in_browser=True", "--LabApp.news_url=None"],
        stdout=log, stderr=subprocess.STDOUT,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 90
        while True:
            if server.poll() is not None:
                pytest.fail(f"JupyterLab exited with {server.returncode}; see {site / 'server.log'}")
            try:
                urllib.request.urlopen(f"{base}/api/status?token={TOKEN}", timeout=2)
                break
            except OSError:
                if time.monotonic() > deadline:
                    pytest.fail(f"JupyterLab did not answer in 90 s; see {site / 'server.log'}")
                time.sleep(0.5)
        yield base
    finally:
        server.terminate()
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()
        log.close()


def open_and_run_all(page, url: str) -> None:
    page.goto(url)
    page.wait_for_function("window.jupyterapp !== undefined", timeout=90_000)
    page.wait_for_selector(".jp-NotebookPanel:not(.lm-mod-hidden) .jp-Notebook", timeout=90_000)
    try:  # JupyterLab may ask which kernel to start
        page.click(".jp-Dialog .jp-mod-accept", timeout=5_000)
    except Exception:
        pass
    idle = ("() => { const s = document.querySelector('.jp-Notebook-ExecutionIndicator');"
            " return s && s.getAttribute('data-status') === 'idle'; }")
    page.wait_for_function(idle, timeout=90_000)
    page.evaluate("() => { window.jupyterapp.commands.execute('notebook:run-all-cells'); }")
    # Every code cell gets a number once run; none may still show [*].
    page.wait_for_function(
        "() => { const p = [...document.querySelectorAll("
        "'.jp-NotebookPanel:not(.lm-mod-hidden) .jp-CodeCell .jp-InputArea-prompt')];"
        " return p.length > 0 && p.every(e => /\\[\\d+\\]/.test(e.textContent)); }",
        timeout=180_000,
    )
    page.wait_for_function(idle, timeout=60_000)


def wait_until(page, failure: str, predicate: str, arg, seconds: float) -> None:
    from playwright.sync_api import TimeoutError as PlaywrightTimeout

    try:
        page.wait_for_function(predicate, arg=arg, timeout=seconds * 1000)
    except PlaywrightTimeout:
        raise AssertionError(failure) from None


@pytest.mark.parametrize("notebook", widget_notebooks(), ids=lambda p: p.name)
def test_lesson_widgets_render_and_redraw_when_a_slider_moves(jupyterlab, browser, notebook):
    relative = notebook.relative_to(ROOT).as_posix()
    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    # A workspace of its own, reset: JupyterLab would otherwise reopen the earlier lessons'
    # tabs, and their cells would answer the selectors below.
    url = f"{jupyterlab}/lab/workspaces/{notebook.stem}/tree/{relative}?reset&token={TOKEN}"
    try:
        open_and_run_all(page, url)
        panel = page.locator(".jp-NotebookPanel:not(.lm-mod-hidden)")
        assert page.locator("text=Error displaying widget").count() == 0
        assert panel.locator(ERROR_OUTPUT).count() == 0, "a cell raised in the browser"
        slider = panel.locator(".widget-slider").first
        slider.wait_for(timeout=30_000)
        area = panel.locator(".jp-OutputArea-output", has=page.locator(".widget-slider")).first
        readout = area.locator(".widget-readout").first
        figure = area.locator("img").first
        # JupyterLab skips rendering cells out of view: bring the explorer on screen first.
        area.scroll_into_view_if_needed(timeout=30_000)
        figure.wait_for(timeout=30_000)
        before = (readout.inner_text(), figure.get_attribute("src"))
        handle = slider.locator(".noUi-handle").first
        # One notch towards the side with room: a dashboard's step slider ends at its maximum.
        at_max = handle.get_attribute("aria-valuenow") == handle.get_attribute("aria-valuemax")
        key = "ArrowLeft" if at_max else "ArrowRight"
        handle.focus()
        page.keyboard.press(key)
        wait_until(page, f"the slider's readout did not change after pressing {key}",
                   "([el, old]) => el.innerText !== old", [readout.element_handle(), before[0]], 15)
        wait_until(page, "the figure was not redrawn within 30 s of moving the slider",
                   "([area, old]) => { const i = area.querySelector('img'); return i && i.src !== old; }",
                   [area.element_handle(), before[1]], 30)
        assert page.locator("text=Error displaying widget").count() == 0
    except BaseException:
        ARTIFACTS.mkdir(exist_ok=True)
        shot = ARTIFACTS / f"{notebook.stem}.png"
        page.screenshot(path=str(shot), full_page=True)
        print(f"screenshot of the failure: {shot}")
        raise
    finally:
        page.close()


def test_there_is_a_lesson_with_widgets_to_test():
    assert widget_notebooks(), "no notebook imports gradflow_lessons.widgets"
