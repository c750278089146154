"""The web inventory in headless Chromium (selenium): every page, the links between them, the search box.

Screenshots are test artifacts: saved under ``$SAFEGENE_TEST_ARTIFACTS/serve`` (default: the
session's temp folder). With ``SAFEGENE_UPDATE_SCREENSHOTS=1`` the inventory and vector pages'
screenshots also replace ``docs/img/serve-*.png`` (the README's images: regenerate deliberately).
Where ``SAFEGENE_REQUIRE_BROWSER=1`` (set by .ci/run), a missing Chromium fails instead of skipping.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import skip_or_fail
from tests.serve_fixtures import ROOT, Server

DOCS_IMG = ROOT / "docs" / "img"


@pytest.fixture(scope="module")
def browser() -> Iterator[object]:
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
    except ImportError:
        skip_or_fail("selenium is not installed (pip install -e '.[test]')", require="SAFEGENE_REQUIRE_BROWSER")
    binary = shutil.which("chromium") or shutil.which("chromium-browser")
    driver_path = shutil.which("chromedriver")
    if not binary or not driver_path:
        skip_or_fail("Chromium or chromedriver is missing (apt-get install chromium chromium-driver)",
                     require="SAFEGENE_REQUIRE_BROWSER")
    opts = webdriver.ChromeOptions()
    opts.binary_location = binary
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu", "--window-size=1280,900"):
        opts.add_argument(arg)
    driver = webdriver.Chrome(service=Service(driver_path), options=opts)
    driver.set_page_load_timeout(60)
    try:
        yield driver
    finally:
        driver.quit()


@pytest.fixture(scope="module")
def shots(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = os.environ.get("SAFEGENE_TEST_ARTIFACTS")
    out = Path(root) / "serve" if root else tmp_path_factory.mktemp("screenshots")
    out.mkdir(parents=True, exist_ok=True)
    return out


def _shot(driver: object, shots: Path, name: str, *, publish: bool = False) -> Path:
    path = shots / f"serve-{name}.png"
    driver.set_window_size(1280, 900)  # type: ignore[attr-defined]
    height = driver.execute_script("return document.body.scrollHeight")  # type: ignore[attr-defined]
    driver.set_window_size(1280, min(max(int(height) + 40, 600), 2400))  # type: ignore[attr-defined]
    assert driver.save_screenshot(str(path)), name  # type: ignore[attr-defined]
    assert path.stat().st_size > 10_000 and path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    if publish and os.environ.get("SAFEGENE_UPDATE_SCREENSHOTS") == "1":
        DOCS_IMG.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, DOCS_IMG / path.name)
    return path


def _search(driver: object, text: str) -> None:
    """Type ``text`` in the header's search box, press Enter and wait for the results page."""
    from selenium.common.exceptions import StaleElementReferenceException
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support.ui import WebDriverWait

    box = _css(driver, "#search-box")[0]
    box.clear()
    box.send_keys(text, Keys.ENTER)
    # From one results page to the next the URL already matches: the old page's heading can go
    # stale between finding it and reading it while the new page loads; the next poll reads the new one.
    WebDriverWait(driver, 30, ignored_exceptions=(StaleElementReferenceException,)).until(
        lambda d: "/search?q=" in d.current_url and text in d.find_element("css selector", "h1").text
        and d.execute_script("return document.readyState") == "complete")


def _follow(driver: object, selector: str, url_part: str) -> None:
    """Click the first link matching ``selector`` and wait until the browser is on a ``url_part`` page."""
    from selenium.webdriver.support.ui import WebDriverWait

    _css(driver, selector)[0].click()
    WebDriverWait(driver, 30).until(lambda d: url_part in d.current_url and d.execute_script("return document.readyState") == "complete")


def _css(driver: object, selector: str) -> list:
    from selenium.webdriver.common.by import By

    return driver.find_elements(By.CSS_SELECTOR, selector)  # type: ignore[attr-defined,no-any-return]


def test_family_to_vector_to_patched_model_to_audit_event(browser: object, demo_server: Server, shots: Path) -> None:
    d = browser
    d.get(demo_server.url + "/")  # type: ignore[attr-defined]
    assert "Inventory by family" in d.page_source and "llama" in d.title.lower() + d.page_source  # type: ignore[attr-defined]
    _shot(d, shots, "inventory", publish=True)
    _follow(d, "section.family h2 a", "/families/")
    assert "Family llama" in _css(d, "h1")[0].text
    assert len(_css(d, "a.model-link")) >= 8
    _shot(d, shots, "family")
    _follow(d, "a.vector-link", "/vectors/")
    assert _css(d, "h1")[0].text == "Vector llama-s0-quick-safety"
    bars = _css(d, "#layer-chart svg rect.bar")
    assert len(bars) == 2 and _css(d, "#layer-chart svg rect.selected")
    assert "llama-s0-aligned" in _css(d, "#provenance")[0].text and "llama-s0-degraded" in _css(d, "#provenance")[0].text
    assert len(_css(d, "#patched a.patched-link")) == 4
    _shot(d, shots, "vector", publish=True)
    patched_name = _css(d, "#patched a.patched-link")[0].text
    _follow(d, "#patched a.patched-link", "/models/")
    assert patched_name in _css(d, "h1")[0].text and "(patched)" in _css(d, "h1")[0].text
    lineage = _css(d, "#lineage")[0].text
    assert "llama-s0-aligned" in lineage and "llama-s0-degraded" in lineage and "llama-s0-quick-safety" in lineage
    _shot(d, shots, "model")
    _follow(d, "a.event-link", "/audit/")
    assert "Audit event #" in _css(d, "h1")[0].text and "patch" in _css(d, "h1")[0].text
    assert "chain verified" in _css(d, "#chain-badge")[0].text
    _shot(d, shots, "event")


def test_audit_timeline_filters_and_badge(browser: object, demo_server: Server, shots: Path) -> None:
    from selenium.webdriver.support.ui import WebDriverWait

    d = browser
    d.get(demo_server.url + "/audit")  # type: ignore[attr-defined]
    badge = _css(d, "#chain-badge")[0]
    assert "chain verified" in badge.text and "8 events" in badge.text and badge.is_displayed()
    assert len(_css(d, "#events a.event-link")) == 8
    _shot(d, shots, "audit")
    box = _css(d, "form.filters input[name=kind]")[0]
    box.send_keys("patch")
    box.submit()
    WebDriverWait(d, 30).until(lambda drv: "kind=patch" in drv.current_url)
    kinds = [row.text.split()[1] for row in _css(d, "#events tr")[1:]]
    assert kinds == ["patch"] * 4 and "kind=patch" in d.current_url  # type: ignore[attr-defined]


def test_search_box_finds_by_name_hash_prefix_and_family(browser: object, demo_server: Server, shots: Path) -> None:
    d = browser
    d.get(demo_server.url + "/")  # type: ignore[attr-defined]
    _search(d, "quick-safety")
    assert [a.text for a in _css(d, "#found-vectors a")] == ["llama-s0-quick-safety"]
    _shot(d, shots, "search")
    _follow(d, "#found-vectors a", "/vectors/")
    vec_hash = _css(d, "p.hash")[0].text
    _search(d, vec_hash[:10])
    assert [a.text for a in _css(d, "#found-vectors a")] == ["llama-s0-quick-safety"]
    _search(d, "LlamaForCausalLM")
    assert [a.text for a in _css(d, "#found-families a")] == ["llama"]


def test_unknown_pages_say_what_is_missing(browser: object, demo_server: Server) -> None:
    d = browser
    d.get(demo_server.url + "/vectors/no-such-vector")  # type: ignore[attr-defined]
    assert "404 · NOT_FOUND" in _css(d, "h1")[0].text
    assert "no vector matches 'no-such-vector'" in _css(d, "#error-message")[0].text
