"""Headless Chromium for tests of lrptool's HTML pages: Debian's ``chromium`` and ``chromedriver``
(``make browser-deps``) driven through Selenium; nothing is downloaded.

    with browser() as page:
        page.open(path)                 # a local HTML file; waits until it has loaded
        page.run("return document.title")
        page.screenshot(tmp_path / "page.png")
        assert page.console_errors() == []

Without the browser the test is skipped with the reason — and fails where
``LRPTOOL_REQUIRE_BROWSER`` is set (CI).
"""

import contextlib
import os
import pathlib
import shutil
import tempfile
import time

import pytest

CHROMIUM = os.environ.get("LRPTOOL_CHROMIUM", "/usr/bin/chromium")
CHROMEDRIVER = os.environ.get("LRPTOOL_CHROMEDRIVER", "/usr/bin/chromedriver")
FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--disable-dev-shm-usage", "--window-size=1280,900")


def missing():
    """Why no browser can be driven here, or None."""
    try:
        import selenium  # noqa: F401
    except ImportError:
        return "the selenium package is not installed (pip install -e '.[test]')"
    for path in (CHROMIUM, CHROMEDRIVER):
        if not (os.path.isfile(path) and os.access(path, os.X_OK)):
            return f"{path} not found (make browser-deps installs Debian's chromium and chromium-driver)"
    return None


def require_browser():
    reason = missing()
    if reason:
        if os.environ.get("LRPTOOL_REQUIRE_BROWSER"):
            pytest.fail(f"headless Chromium is required here: {reason}")
        pytest.skip(reason)


class Page:
    def __init__(self, driver):
        self.driver = driver

    def open(self, path, timeout=30):
        """Load a local HTML file and wait until the document and its images have loaded."""
        self.driver.get(pathlib.Path(path).resolve().as_uri())
        deadline = time.monotonic() + timeout
        while self.run("return document.readyState") != "complete":
            if time.monotonic() > deadline:
                raise TimeoutError(f"{path} did not finish loading in {timeout} s")
            time.sleep(0.05)
        return self

    def run(self, script, *args):
        """Evaluate JavaScript in the page (a function body: ``return …`` gives the value)."""
        return self.driver.execute_script(script, *args)

    def wait_for(self, script, timeout=10):
        """Wait until ``script`` returns something true; returns it."""
        deadline = time.monotonic() + timeout
        while True:
            value = self.run(script)
            if value or time.monotonic() > deadline:
                return value
            time.sleep(0.05)

    def console_errors(self):
        """The console messages of level SEVERE since the last call (errors, failed loads)."""
        return [entry["message"] for entry in self.driver.get_log("browser") if entry.get("level") == "SEVERE"]

    def screenshot(self, path):
        """A PNG of the whole page: the viewport is set to the page's full width and height first."""
        width, height = self.run("var e = document.documentElement; return [e.scrollWidth, e.scrollHeight];")
        self.driver.execute_cdp_cmd("Emulation.setDeviceMetricsOverride", {
            "width": max(1280, int(width)), "height": min(max(400, int(height)), 8000), "deviceScaleFactor": 1,
            "mobile": False})
        self.driver.save_screenshot(str(path))
        self.driver.execute_cdp_cmd("Emulation.clearDeviceMetricsOverride", {})
        return path


@contextlib.contextmanager
def browser():
    """A fresh headless Chromium (own profile folder) as a ``Page``; skips when there is none."""
    require_browser()
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    profile = tempfile.mkdtemp(prefix="lrptool-chromium-")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in FLAGS:
        options.add_argument(flag)
    options.add_argument(f"--user-data-dir={profile}")
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=options)
    try:
        yield Page(driver)
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)
