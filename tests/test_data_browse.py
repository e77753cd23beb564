"""``actgen-data browse`` in a real headless browser: the system's Chromium (Debian packages
chromium + chromium-driver; `.ci/run` installs them), driven by Selenium. The page is opened
from disk (no server): every thumbnail loads, a class filter changes what is shown, a click
shows the provenance, and a screenshot is taken."""
from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from actgen.sharing.cli import main

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")


def _browser(tmp_path):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    if not (CHROMIUM and CHROMEDRIVER):
        pytest.fail("the browser test needs Chromium and ChromeDriver: apt-get install chromium chromium-driver "
                    "(.ci/run does)")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--no-first-run", "--window-size=1200,900", f"--user-data-dir={tmp_path / 'profile'}"):
        options.add_argument(flag)
    return webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=options)


@pytest.mark.slow
def test_the_gallery_loads_filters_and_shows_provenance(build_config, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select

    from actgen.builder.pipeline import run

    data = tmp_path / "shards"
    run(build_config("budget=8", "schedule.enabled=false", output=data))
    gallery = tmp_path / "gallery"
    result = CliRunner().invoke(main, ["browse", str(data), str(gallery)])
    assert result.exit_code == 0, result.output
    expected = json.loads((gallery / "index.html").read_text().split('id="data">')[1].split("</script>")[0])
    per_class = {}
    for row in expected:
        per_class[row["class"]] = per_class.get(row["class"], 0) + 1
    driver = _browser(tmp_path)
    try:
        driver.get((gallery / "index.html").as_uri())
        deadline = time.monotonic() + 30
        while True:       # every thumbnail decoded (naturalWidth > 0)
            loaded = driver.execute_script(
                "return [...document.images].filter(i => i.complete && i.naturalWidth > 0).length")
            if loaded == len(expected) or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        assert loaded == len(expected) == 8
        visible = lambda: [c for c in driver.find_elements(By.CLASS_NAME, "card") if c.is_displayed()]  # noqa: E731
        assert len(visible()) == 8
        name, count = min(per_class.items(), key=lambda kv: kv[1])
        Select(driver.find_element(By.ID, "f-class")).select_by_value(name)
        assert len(visible()) == count < 8
        assert driver.find_element(By.ID, "count").text == f"{count} of 8 images"
        visible()[0].click()
        shown = driver.find_element(By.ID, "detail").text
        assert '"class_name": "' + name + '"' in shown and '"generator"' in shown
        Select(driver.find_element(By.ID, "f-class")).select_by_value("all")
        assert driver.save_screenshot(str(tmp_path / "gallery.png"))
        assert (tmp_path / "gallery.png").stat().st_size > 1000
    finally:
        driver.quit()


def test_browse_refuses_an_existing_gallery_and_a_non_data_set(build_config, tmp_path):
    from actgen.builder.pipeline import run

    data = tmp_path / "shards"
    run(build_config("budget=2", output=data))
    assert CliRunner().invoke(main, ["browse", str(data), str(tmp_path / "g")]).exit_code == 0
    again = CliRunner().invoke(main, ["browse", str(data), str(tmp_path / "g")])
    assert again.exit_code == 2 and "already here" in again.stderr
    none = CliRunner().invoke(main, ["browse", str(tmp_path), str(tmp_path / "h")])
    assert none.exit_code == 2 and "index.json" in none.stderr
    page = (tmp_path / "g" / "index.html").read_text()
    assert "</script" not in page.split('id="data">')[1].split("</script>")[0]   # data cannot close its element
    assert str(tmp_path) not in page
    assert Path(tmp_path / "g" / "thumbs").is_dir()


@pytest.mark.slow
def test_the_gallery_pages_and_keeps_to_a_budget(tmp_path, write_digit_shards):
    """A thumbnail budget by default (--all overrides), and pages that load only their images."""
    from selenium.webdriver.common.by import By

    data = write_digit_shards(tmp_path / "d", n=25)
    assert CliRunner().invoke(main, ["browse", str(data), str(tmp_path / "g"), "--limit", "12"]).exit_code == 0
    assert len(list((tmp_path / "g" / "thumbs").iterdir())) == 12
    result = CliRunner().invoke(main, ["browse", str(data), str(tmp_path / "all"), "--all", "--page-size", "10"])
    assert result.exit_code == 0 and len(list((tmp_path / "all" / "thumbs").iterdir())) == 25
    driver = _browser(tmp_path)
    try:
        driver.get((tmp_path / "all" / "index.html").as_uri())
        shown = lambda: [c for c in driver.find_elements(By.CLASS_NAME, "card") if c.is_displayed()]  # noqa: E731
        requested = lambda: driver.execute_script("return [...document.images].filter(i => i.src).length")  # noqa: E731
        assert len(shown()) == 10 and requested() == 10          # page 1 only, and only its images asked for
        assert driver.find_element(By.ID, "page").text == "page 1 of 3"
        driver.find_element(By.ID, "next").click()
        driver.find_element(By.ID, "next").click()
        assert len(shown()) == 5 and driver.find_element(By.ID, "page").text == "page 3 of 3"
        assert driver.find_element(By.ID, "next").get_attribute("disabled") is not None
        assert requested() == 25
    finally:
        driver.quit()


def test_browse_says_it_takes_a_folder_when_given_a_url(tmp_path):
    from click.testing import CliRunner

    from actgen.sharing.cli import main

    result = CliRunner().invoke(main, ["browse", "s3://bucket/sets/round-1", str(tmp_path / "gallery")])
    assert result.exit_code == 2 and "is a URL; browse takes a local folder" in result.output, result.output
    assert "not found" not in result.output and not (tmp_path / "gallery").exists()
