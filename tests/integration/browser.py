"""A real browser for page tests: Debian's headless Chromium driven by Selenium, offline.

    from tests.integration.browser import browser      # the fixture (module scope)

    def test_page(browser, gateway):
        browser.get(gateway.url + "/status/")
        browser.shot("overview")                       # PNG in the test's directory
        assert browser.console_errors() == []

Chromium runs with its background services off and every host unresolvable
(addresses too) but loopback and the mini-cluster's bridge, so a page can only
reach the servers the tests started.
Screenshots also go to $SHIFTER_SCREENSHOT_DIR when set (how docs/images/ is made).
"""
from __future__ import annotations

import os
import shutil

import pytest
from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By

from ci.harness.cluster import HOST_ADDRESS

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
WINDOW = (1280, 900)
ARGUMENTS = (
    "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--window-size=%d,%d" % WINDOW,
    "--disable-background-networking", "--disable-component-update", "--disable-sync", "--disable-default-apps",
    "--no-first-run", "--no-default-browser-check", "--disable-features=Translate,MediaRouter,OptimizationHints",
    f"--host-resolver-rules=MAP * ~NOTFOUND , EXCLUDE 127.0.0.1 , EXCLUDE {HOST_ADDRESS}",
)
SCREENSHOT_ENV = "SHIFTER_SCREENSHOT_DIR"


class Browser:
    """A Selenium Chrome driver plus what the tests ask of it."""

    def __init__(self, directory: str):
        os.environ["SE_OFFLINE"] = "true"          # Selenium Manager must not look for downloads
        options = webdriver.ChromeOptions()
        options.binary_location = CHROMIUM
        for argument in ARGUMENTS:
            options.add_argument(argument)
        options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
        self.driver = webdriver.Chrome(options=options, service=Service(CHROMEDRIVER))
        self.directory = directory
        self._errors: list[dict] = []

    def get(self, url: str) -> None:
        self.driver.get(url)

    def css(self, selector: str) -> list:
        return self.driver.find_elements(By.CSS_SELECTOR, selector)

    def console_errors(self) -> list[dict]:
        """Every SEVERE console entry (script errors, failed loads) since the browser started."""
        self._errors += [entry for entry in self.driver.get_log("browser") if entry["level"] == "SEVERE"]
        return list(self._errors)

    def shot(self, name: str, full_page: bool = True) -> str:
        """A PNG of the page; `full_page` grows the window to the page's height first."""
        if full_page:
            height, chrome = self.driver.execute_script(
                "return [document.documentElement.scrollHeight, window.outerHeight - window.innerHeight]")
            self.driver.set_window_size(WINDOW[0], max(WINDOW[1], min(int(height) + int(chrome), 4000)))
        path = os.path.join(self.directory, f"{name}.png")
        self.driver.save_screenshot(path)
        self.driver.set_window_size(*WINDOW)
        if os.environ.get(SCREENSHOT_ENV):
            shutil.copy(path, os.path.join(os.environ[SCREENSHOT_ENV], f"{name}.png"))
        return path

    def quit(self) -> None:
        self.driver.quit()


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    if not (os.path.exists(CHROMIUM) and os.path.exists(CHROMEDRIVER)):
        pytest.fail("chromium and chromium-driver are missing: run ci/setup")
    chromium = Browser(str(tmp_path_factory.mktemp("screenshots")))
    yield chromium
    chromium.quit()
