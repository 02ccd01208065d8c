"""report.html in headless Chromium: it renders (a screenshot that is not blank), its tables sort when a header is
clicked, and nothing on the page raises an error or writes to the console.

Errors are caught two ways, because neither alone is robust across Chromium versions:

1. A copy of the page gets a first <script> in <head> (before anything of ours runs) that records every `error`
   event (uncaught exceptions and, listening in the capture phase, images or scripts that fail to load) and every
   `console.error`/`console.warn` call. After the load event it clicks table headers, so that errors of the sorting
   code count too, and writes what it saw as JSON into a <pre>. `--dump-dom` prints the DOM once the page has
   loaded, and the test reads that <pre>: no dependence on Chromium's log format.
2. The screenshot of the real page is taken with `--enable-logging=stderr --v=0`, which prints each console
   message as `...:CONSOLE:<line>] "<message>", source: ...` (`CONSOLE(<line>)` in older versions). The page writes
   nothing to the console, so any such line fails the test.

Chromium is `chromium`, `chromium-browser`, `google-chrome` or `google-chrome-stable` on PATH. Where none is and we
are root on a machine with apt-get, the session fixture installs Debian's `chromium` (about a minute). Otherwise the
test fails and says how to install it: a skipped test would pass unseen.

The screenshot is kept at `.pytest_cache/d/visionbench-report/report.png`, beside the report.html it shows (in the
test's tmp_path when pytest's cache plugin is off); the test prints the path (`pytest -rP` shows it).
"""

from __future__ import annotations

import html as html_lib
import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
from PIL import Image

from visionbench import layout
from visionbench.report import write_report

BROWSERS = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
INSTALL_SECONDS = 500
RUN_SECONDS = 120
WINDOW = (1280, 2000)

# Runs before the page's own script: records errors, then sorts the per-run table by the `test` column (twice) and
# by `model`, clicks every header of every table, and leaves the results in <pre id="probe">.
PROBE = """
(function () {
  "use strict";
  var errors = [];
  window.addEventListener("error", function (event) {
    var target = event.target && event.target !== window ? event.target.outerHTML.slice(0, 80) : "";
    errors.push("error: " + (event.message || "resource failed to load " + target));
  }, true);
  window.addEventListener("unhandledrejection", function (event) { errors.push("rejection: " + event.reason); });
  ["error", "warn"].forEach(function (level) {
    var original = console[level];
    console[level] = function () {
      errors.push("console." + level + ": " + Array.prototype.join.call(arguments, " "));
      return original.apply(console, arguments);
    };
  });
  window.addEventListener("load", function () {
    var result = { errors: errors };
    try {
      var table = document.getElementById("runs");
      var heads = Array.prototype.slice.call(table.tHead.rows[0].cells);
      var column = function (name) {
        var j = heads.map(function (th) { return th.textContent; }).indexOf(name);
        return Array.prototype.map.call(table.tBodies[0].rows, function (row) { return row.cells[j].textContent; });
      };
      var click = function (name) {
        heads.filter(function (th) { return th.textContent === name; })[0].click();
        return column("run");
      };
      result.test_ascending = click("test");
      result.test_descending = click("test");
      click("model");
      result.models = column("model");
      result.aria = heads.filter(function (th) { return th.textContent === "model"; })[0].getAttribute("aria-sort");
      Array.prototype.forEach.call(document.querySelectorAll("table.sortable th"), function (th) { th.click(); });
      result.images = Array.prototype.map.call(document.images, function (img) { return img.naturalWidth; });
    } catch (e) {
      errors.push("probe: " + e);
    }
    var pre = document.createElement("pre");
    pre.id = "probe";
    pre.textContent = JSON.stringify(result);
    document.body.appendChild(pre);
  });
})();
"""


def _install_hint() -> str:
    return "install Chromium (Debian: `apt-get install chromium`) or put chromium/google-chrome on PATH"


@pytest.fixture(scope="session")
def chromium() -> str:
    """The Chromium binary; installed with apt-get where missing and we are root on a Debian-like machine."""
    found = next((shutil.which(name) for name in BROWSERS if shutil.which(name)), None)
    if found:
        return found
    if not (hasattr(os, "geteuid") and os.geteuid() == 0 and shutil.which("apt-get")):
        pytest.fail(f"no Chromium on PATH ({', '.join(BROWSERS)}) and not root with apt-get: {_install_hint()}")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for command in (["apt-get", "update", "-qq"], ["apt-get", "install", "-y", "-qq", "chromium"]):
        try:
            done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=INSTALL_SECONDS)
        except subprocess.TimeoutExpired:
            pytest.fail(f"`{' '.join(command)}` took over {INSTALL_SECONDS} s: {_install_hint()}")
        if done.returncode != 0:
            pytest.fail(f"`{' '.join(command)}` failed ({done.returncode}): {done.stderr.strip()[-500:]}")
    found = next((shutil.which(name) for name in BROWSERS if shutil.which(name)), None)
    if not found:
        pytest.fail(f"apt-get installed chromium but none of {', '.join(BROWSERS)} is on PATH")
    return found


def _run(chromium: str, profile: Path, *args: str) -> subprocess.CompletedProcess:
    command = [
        chromium,
        "--headless",
        "--disable-gpu",
        "--no-sandbox",  # root in a container has no user namespace for the sandbox
        "--no-first-run",
        f"--user-data-dir={profile}",  # not the user's profile
        f"--window-size={WINDOW[0]},{WINDOW[1]}",
        *args,
    ]
    done = subprocess.run(command, capture_output=True, text=True, timeout=RUN_SECONDS)
    assert done.returncode == 0, f"{' '.join(command)}: exit {done.returncode}\n{done.stderr[-2000:]}"
    return done


@pytest.fixture
def shot_dir(request, tmp_path: Path) -> Path:
    cache = getattr(request.config, "cache", None)
    return cache.mkdir("visionbench-report") if cache is not None else tmp_path


def test_report_renders_in_headless_chromium_without_errors_and_sorts(
    chromium: str, experiment: Path, make_run, tmp_path: Path, shot_dir: Path
) -> None:
    cls = experiment / "20260101-100002-small_cnn-mnist"
    confusion = {"class_names": ["0", "1", "2"], "rows_true_cols_pred": [[9, 1, 0], [2, 8, 0], [0, 1, 9]]}
    (cls / layout.artifact(layout.CONFUSION_MATRIX)).write_text(json.dumps(confusion))
    make_run(experiment, "20260101-100500-small_cnn-mosaic", dataset="mosaic", metric="map", value=0.7,
             test_details={"per_class_ap": {"bag": 0.7, "shoe": None, "coat": 0.6}})  # fmt: skip
    reg = make_run(experiment, "20260101-100600-small_cnn-lens", dataset="lens", metric="mae", mode="min", value=0.1)
    (reg / layout.artifact(layout.PREDICTIONS, suffix=".csv")).write_text(
        "true,pred\n" + "".join(f"{i},{i + 0.1}\n" for i in range(20))
    )
    _, html = write_report([experiment], shot_dir)

    # 1. Errors and sorting, through the probe in a copy of the page.
    page = html.read_text()
    probe_page = tmp_path / "probe.html"
    probe_page.write_text(page.replace("<head>", f"<head>\n<script>{PROBE}</script>", 1))
    dom = _run(chromium, tmp_path / "profile", "--dump-dom", "--virtual-time-budget=5000", probe_page.as_uri()).stdout
    found = re.search(r'<pre id="probe">(.*?)</pre>', dom, flags=re.S)
    assert found, f"the probe left no result; DOM tail: {dom[-1500:]}"
    result = json.loads(html_lib.unescape(found.group(1)))
    assert result["errors"] == [], f"errors on the page: {result['errors']}"
    # curves of all 9 runs, a confusion matrix, per-class AP bars, predicted against true; all decoded
    assert all(width > 0 for width in result["images"]) and len(result["images"]) == 12, result["images"]
    by_test = [  # numeric order of `data-sort`; runs without a test value last in both directions, stable
        "20260101-100100-small_cnn-fashion-mnist",  # 85 %
        "20260101-100000-small_cnn-mnist",  # 90 %
        "20260101-100001-small_cnn-mnist",
        "20260101-100002-small_cnn-mnist",
    ]
    without = ["20260101-100200-resnet18-mnist", "20260101-100300-resnet18-fashion-mnist"]
    without += ["20260101-100400-vit_tiny-mnist"]
    # the map and mae runs have test values too: map 0.7 and mae 0.1 sort among the accuracies by value
    assert result["test_ascending"] == ["20260101-100600-small_cnn-lens", "20260101-100500-small_cnn-mosaic"] + [
        *by_test,
        *without,
    ], result["test_ascending"]
    assert result["test_descending"] == [*by_test[::-1], "20260101-100500-small_cnn-mosaic"] + [
        "20260101-100600-small_cnn-lens",
        *without,
    ], result["test_descending"]
    assert result["models"] == sorted(result["models"]) and result["aria"] == "ascending", result

    # 2. The real page: a screenshot, and no console line in Chromium's log.
    shot = shot_dir / "report.png"
    shot.unlink(missing_ok=True)
    done = _run(
        chromium, tmp_path / "profile", f"--screenshot={shot}", "--enable-logging=stderr", "--v=0", html.as_uri()
    )
    console = [line for line in done.stderr.splitlines() if re.search(r"CONSOLE[(:]", line)]
    assert not console, f"console messages: {console}"
    print(f"screenshot of {html}: {shot}")
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", f"{shot}: not a PNG"
    with Image.open(shot) as image:
        assert image.size == WINDOW, image.size
        colours = image.convert("RGB").getcolors(maxcolors=1 << 20)
    assert colours is None or len(colours) > 200, f"{shot}: {len(colours)} colours, a blank page?"
