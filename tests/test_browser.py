"""The web page in a real browser: Debian's headless Chromium driven by Selenium, server on loopback.

Needs ``apt-get install -y chromium chromium-driver`` (the Debian packages; never a downloaded
browser). Without them the test is skipped with that instruction, and fails under CI.
"""

from __future__ import annotations

import os
import shutil
import threading
from pathlib import Path

import pytest
from test_query import build_pipeline_state, colour_png

from cbir.app.server import create_app, load_engines, make_server

pytestmark = pytest.mark.slow

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
CHROMIUM_FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync", "--no-first-run")


def _require_browser():
    missing = [str(p) for p in (CHROMIUM, CHROMEDRIVER) if not p.exists()]
    try:
        import selenium  # noqa: F401
    except ImportError:
        missing.append("the selenium Python package")
    if missing:
        pytest.fail(f"missing {', '.join(missing)}: run `make setup` (apt-get install -y chromium "
                    "chromium-driver; pip install -e '.[test]')")


@pytest.fixture(scope="module")
def server(tmp_path_factory, random_mobilenet_file):
    root = tmp_path_factory.mktemp("browser_root")
    params = build_pipeline_state(root, random_mobilenet_file)
    engines = load_engines(params, root)
    app = create_app(params, root, engines=engines)
    httpd = make_server(app, "127.0.0.1", 0)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield {"url": f"http://127.0.0.1:{httpd.server_port}", "engines": engines, "root": root}
    httpd.shutdown()
    httpd.server_close()
    thread.join(timeout=10)


def chromium(window_size: str = "1400,900"):
    """A headless Chromium driven by selenium (loopback only, whatever the environment's proxy says)."""
    _require_browser()
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for flag in CHROMIUM_FLAGS:
        options.add_argument(flag)
    options.add_argument(f"--window-size={window_size}")
    options.add_argument("--no-proxy-server")
    driver = webdriver.Chrome(service=Service(executable_path=str(CHROMEDRIVER)), options=options)
    driver.set_page_load_timeout(60)
    return driver


@pytest.fixture(scope="module")
def browser():
    driver = chromium()
    yield driver
    driver.quit()


def _submit(browser, path: Path, method: str):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select

    browser.find_element(By.ID, "image-input").send_keys(str(path))
    Select(browser.find_element(By.ID, "method-select")).select_by_value(method)
    browser.find_element(By.ID, "search-button").click()


def _results(browser) -> list[dict]:
    from selenium.webdriver.common.by import By

    return [{"image_id": li.get_attribute("data-image-id"), "rank": int(li.get_attribute("data-rank")),
             "score": float(li.get_attribute("data-score")), "text": li.text}
            for li in browser.find_elements(By.CSS_SELECTOR, "#results li.result")]


def _thumbnails_loaded(browser) -> bool:
    return browser.execute_script(
        "return Array.from(document.images).every(i => i.complete && i.naturalWidth > 0);")


def test_upload_bad_upload_and_click_in_chromium(server, browser, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as EC
    from selenium.webdriver.support.ui import WebDriverWait

    from selenium.common.exceptions import StaleElementReferenceException

    # the page re-renders its results and counters after each request: an element found just before is retried
    wait = WebDriverWait(browser, 30, ignored_exceptions=(StaleElementReferenceException,))
    query = colour_png(tmp_path / "greenish.png", (60, 190, 80), seed=5, size=80)
    browser.get(server["url"] + "/")
    assert "Content-based image retrieval" in browser.title + browser.page_source

    # 1. upload an image: ten results, in the query engine's order, with rank, score and label shown
    _submit(browser, query, "mobilenet_v2-gap")
    wait.until(EC.presence_of_element_located((By.ID, "results")))
    shown = _results(browser)
    expected, _ = server["engines"]["mobilenet_v2-gap"].query_path(query)
    assert len(shown) == 10
    assert [r["image_id"] for r in shown] == [e["image_id"] for e in expected["results"]]
    assert [r["rank"] for r in shown] == list(range(1, 11))
    assert [r["score"] for r in shown] == pytest.approx([e["score"] for e in expected["results"]], abs=1e-6)
    for r, e in zip(shown, expected["results"]):
        assert f"#{e['rank']}" in r["text"] and f"{e['score']:.3f}" in r["text"] and e["label"] in r["text"]
    wait.until(_thumbnails_loaded)
    shots = [tmp_path / "results.png"]
    if os.environ.get("CBIR_SCREENSHOT_DIR"):
        shots.append(Path(os.environ["CBIR_SCREENSHOT_DIR"]) / "query_results.png")
    browser.save_screenshot(str(shots[0]))
    assert shots[0].stat().st_size > 10_000
    for extra in shots[1:]:
        extra.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(shots[0], extra)

    # 2. a non-image: a readable message, no results
    bad = tmp_path / "notes.txt"
    bad.write_text("certainly not a picture\n")
    _submit(browser, bad, "hsv_hist")
    error = wait.until(EC.visibility_of_element_located((By.ID, "error")))
    assert "cannot use image notes.txt: not_an_image" in error.text
    assert browser.find_elements(By.CSS_SELECTOR, "#results li.result") == []
    if len(shots) > 1:
        browser.save_screenshot(str(shots[1].with_name("query_error.png")))

    # 3. the server keeps serving: another upload works, then clicking a result queries with it
    _submit(browser, query, "hsv_hist")
    wait.until(EC.presence_of_element_located((By.ID, "results")))
    shown = _results(browser)
    expected, _ = server["engines"]["hsv_hist"].query_path(query)
    assert [r["image_id"] for r in shown] == [e["image_id"] for e in expected["results"]]
    assert browser.find_elements(By.ID, "error") == []
    target = shown[2]["image_id"]
    browser.find_element(By.CSS_SELECTOR, "#results li.result:nth-child(3) a").click()
    wait.until(lambda b: b.find_element(By.ID, "query").get_attribute("data-image-id") == target)
    clicked = _results(browser)
    assert clicked[0]["image_id"] == target and clicked[0]["score"] == pytest.approx(1.0, abs=1e-5)
    expected = server["engines"]["hsv_hist"].query_id(target)
    assert [r["image_id"] for r in clicked] == [e["image_id"] for e in expected["results"]]
