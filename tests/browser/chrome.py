"""Headless Chromium through Selenium and the Debian chromium-driver, isolated and offline."""

from __future__ import annotations

import shutil
import tempfile
from typing import Any

FLAGS = [
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
    "--window-size=1280,1000",
]


def chromium_paths() -> tuple[str | None, str | None]:
    """``(chromium, chromedriver)`` executables, or None where missing."""
    return (shutil.which("chromium") or shutil.which("chromium-browser"), shutil.which("chromedriver"))


def start() -> Any:
    """A fresh headless Chromium (own user-data-dir) with browser console logging enabled."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    browser, driver = chromium_paths()
    opts = webdriver.ChromeOptions()
    opts.binary_location = browser or ""
    for flag in FLAGS:
        opts.add_argument(flag)
    opts.add_argument(f"--user-data-dir={tempfile.mkdtemp(prefix='hpr-chromium-')}")
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    return webdriver.Chrome(options=opts, service=Service(executable_path=driver))


def severe_console(driver: Any) -> list[str]:
    """Console messages of level SEVERE since the last call."""
    return [e["message"] for e in driver.get_log("browser") if e.get("level") == "SEVERE"]
