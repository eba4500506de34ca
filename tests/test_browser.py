"""A real browser opens a rendered report: table and plots present, no console errors, a screenshot kept."""
from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from pipeline.report.render import write_report

DATA = Path(__file__).parent / "data"
pytestmark = pytest.mark.browser


def test_report_in_headless_chromium(tmp_path: Path) -> None:
    webdriver = pytest.importorskip("selenium.webdriver")
    chromium = shutil.which("chromium")
    driver_bin = shutil.which("chromedriver")
    if not (chromium and driver_bin):
        pytest.skip("apt-get install chromium chromium-driver (./setup.sh --test)")
    run_dir = tmp_path / "runs" / "run-real"
    run_dir.mkdir(parents=True)
    shutil.copy(DATA / "results-real.json", run_dir / "results.json")
    shutil.copy(DATA / "metadata-real.json", run_dir / "metadata.json")
    out = write_report(run_dir, tmp_path / "reports")

    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By

    opts = webdriver.ChromeOptions()
    opts.binary_location = chromium
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 f"--user-data-dir={tmp_path / 'profile'}", "--window-size=1280,2400"):
        opts.add_argument(flag)
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(driver_bin), options=opts)
    try:
        driver.get((out / "index.html").as_uri())
        rows = driver.find_elements(By.CSS_SELECTOR, "#candidates tr")
        assert len(rows) >= 3  # header, baseline, at least one candidate
        for plot in ("plot-boot", "plot-cpu", "plot-tradeoff", "plot-timeline", "plot-latency"):
            svg = driver.find_element(By.CSS_SELECTOR, f"#{plot} svg")
            assert svg.size["width"] > 100 and svg.size["height"] > 50
        assert "regression" in driver.find_element(By.ID, "headline").text.lower()
        errors = [e for e in driver.get_log("browser") if e["level"] == "SEVERE"]
        assert errors == []
        # Tests write only under tmp; KPIPE_SCREENSHOTS names a folder to keep the picture in.
        driver.save_screenshot(str(tmp_path / "report.png"))
        keep = os.environ.get("KPIPE_SCREENSHOTS")
        if keep:
            Path(keep).mkdir(parents=True, exist_ok=True)
            shutil.copy(tmp_path / "report.png", Path(keep) / "browser-test.png")
        driver.get((tmp_path / "reports" / "index.html").as_uri())
        assert driver.find_elements(By.CSS_SELECTOR, "#runs tr a")
    finally:
        driver.quit()
