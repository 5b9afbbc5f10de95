"""Relevance feedback and region queries on the web page: the ``/refine`` routes (Flask test client) and the
page in headless Chromium (mark, refine, round shown, back to the first ranking, drag a box, keyboard only)."""

from __future__ import annotations

import os
import shutil
import threading
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from test_browser import _results, _thumbnails_loaded
from test_query import build_pipeline_state

from cbir.app.feedback import query_id_feedback
from cbir.app.server import create_app, load_engines, make_server
from cbir.search.feedback import FeedbackSettings

FEEDBACK = {"rounds": 3, "top_k": 10, "methods": ["rocchio", "svm"], "alpha": 1.0, "beta": 0.75, "gamma": 0.15,
            "svm_c": 1.0, "seed": 0, "max_queries": 1000}


@pytest.fixture(scope="module")
def site(tmp_path_factory, random_mobilenet_file):
    root = tmp_path_factory.mktemp("feedback_web_root")
    params = {**build_pipeline_state(root, random_mobilenet_file), "feedback": FEEDBACK}
    engines = load_engines(params, root, ["hsv_hist", "mobilenet_v2-gap"])
    app = create_app(params, root, engines=engines)
    return {"root": root, "params": params, "engines": engines, "app": app, "client": app.test_client()}


def ids(answer) -> list[str]:
    return [r["image_id"] for r in answer["results"]]


def test_refine_route_is_the_library_ranking(site):
    engine = site["engines"]["hsv_hist"]
    first = site["client"].get("/api/refine", query_string={"id": "red/0", "method": "hsv_hist"}).get_json()
    assert ids(first) == ids(engine.query_id("red/0")) and first["feedback"]["round"] == 0
    top = ids(first)
    query = [("id", "red/0"), ("method", "hsv_hist"), ("feedback", "svm"), ("round", "0"),
             (f"mark:{top[0]}", "relevant"), (f"mark:{top[1]}", "irrelevant"), (f"mark:{top[2]}", "")]
    second = site["client"].get("/api/refine", query_string=query).get_json()
    expected = query_id_feedback(engine, "red/0", [top[0]], [top[1]], FeedbackSettings.from_config(FEEDBACK, "svm"))
    assert ids(second) == ids(expected) and not {top[0], top[1]} & set(ids(second))
    assert second["feedback"] | {"round": None} == {"method": "svm", "requested": "svm", "round": None,
                                                   "relevant": [top[0]], "irrelevant": [top[1]], "note": ""}
    assert second["feedback"]["round"] == 1
    # the marks of earlier rounds come back as hidden fields and accumulate
    third = site["client"].get("/api/refine", query_string=[
        ("id", "red/0"), ("method", "hsv_hist"), ("feedback", "svm"), ("round", "1"), ("relevant", top[0]),
        ("irrelevant", top[1]), (f"mark:{ids(second)[0]}", "relevant")]).get_json()
    assert third["feedback"]["round"] == 2 and third["feedback"]["relevant"] == [top[0], ids(second)[0]]
    expected = query_id_feedback(engine, "red/0", [top[0], ids(second)[0]], [top[1]],
                                 FeedbackSettings.from_config(FEEDBACK, "svm"))
    assert ids(third) == ids(expected)


def test_refine_region_is_the_crop(site):
    engine = site["engines"]["hsv_hist"]
    answer = site["client"].get("/api/refine", query_string={"id": "blue/0", "method": "hsv_hist",
                                                             "box": "0,0,12,12", "box_size": "24x24"}).get_json()
    image = Image.open(site["root"] / "data/raw/toy/blue/0.png").convert("RGB")
    expected = engine.query_image(image.crop((0, 0, 24, 24)))  # the box on a 24x24 view of the 48x48 image
    assert ids(answer) == ids(expected) and answer["query"]["box"] == [0, 0, 12, 12]
    np.testing.assert_allclose([r["score"] for r in answer["results"]], [r["score"] for r in expected["results"]],
                               atol=1e-6)


@pytest.mark.parametrize("query, expected", [
    ({"method": "hsv_hist"}, "refine needs the id of a dataset image"),
    ({"id": "zz", "method": "hsv_hist"}, "image id 'zz' is not in the manifest"),
    ({"id": "red/0", "mark:nope": "relevant"}, "--relevant nope: no image with that id"),
    ({"id": "red/0", "feedback": "knn"}, "unknown feedback method 'knn'"),
    ({"id": "red/0", "box": "1,2,3"}, "give four integers"),
    ({"id": "red/0", "box": "0,0,60,10"}, "does not fit in the 48x48 image"),
    ({"id": "red/0", "box": "0,0,6,6", "box_size": "big"}, "box_size='big'"),
    ({"id": "red/0", "round": "x"}, "is not a round number"),
])
def test_refine_bad_requests_are_one_message(site, query, expected):
    response = site["client"].get("/api/refine", query_string=query)
    assert response.status_code == 400 and expected in response.get_json()["error"]
    page = site["client"].get("/refine", query_string=query)
    assert page.status_code == 400 and b'id="error"' in page.data


def test_page_has_marks_refine_and_region_controls(site):
    page = site["client"].get("/search", query_string={"id": "green/0", "method": "hsv_hist"}).data.decode()
    for needle in ('id="refine-form"', 'id="refine-button"', 'id="region-form"', 'name="mark:', 'id="round-number">0',
                   'id="feedback-select"'):
        assert needle in page
    assert 'id="first-ranking"' not in page  # already the first ranking


# ------------------------------------------------------------------------------------------- Chromium


@pytest.fixture(scope="module")
def server(site):
    httpd = make_server(site["app"], "127.0.0.1", 0)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_port}"
    httpd.shutdown()
    httpd.server_close()
    thread.join(timeout=10)


@pytest.fixture(scope="module")
def browser():
    from test_browser import chromium

    driver = chromium("1400,1000")
    yield driver
    driver.quit()


@pytest.mark.slow
def test_mark_refine_back_and_region_in_chromium(site, server, browser, tmp_path):
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support.ui import WebDriverWait

    from selenium.common.exceptions import StaleElementReferenceException

    # the page re-renders its results and counters after each request: an element found just before is retried
    wait = WebDriverWait(browser, 30, ignored_exceptions=(StaleElementReferenceException,))
    engine = site["engines"]["hsv_hist"]
    settings = FeedbackSettings.from_config(FEEDBACK, "rocchio")
    browser.get(f"{server}/search?id=red/0&method=hsv_hist")
    first = [r["image_id"] for r in _results(browser)]
    assert first == ids(engine.query_id("red/0"))
    assert browser.find_element(By.ID, "round-number").text == "0"

    # 1. mark with the mouse (the 1st relevant, the 2nd not), refine: the library's ranking for those marks
    browser.find_element(By.CSS_SELECTOR, "#results li.result:nth-child(1) input.mark-relevant").click()
    browser.find_element(By.CSS_SELECTOR, "#results li.result:nth-child(2) input.mark-irrelevant").click()
    assert "marked-relevant" in browser.find_element(By.CSS_SELECTOR, "#results li.result:nth-child(1)"
                                                     ).get_attribute("class")
    browser.find_element(By.ID, "refine-button").click()
    wait.until(lambda b: b.find_element(By.ID, "round-number").text == "1")
    round1 = [r["image_id"] for r in _results(browser)]
    assert round1 == ids(query_id_feedback(engine, "red/0", [first[0]], [first[1]], settings))
    assert not {first[0], first[1]} & set(round1) and round1 != first[2:12]
    wait.until(_thumbnails_loaded)
    shots = [tmp_path / "feedback.png"]
    if os.environ.get("CBIR_SCREENSHOT_DIR"):
        shots.append(Path(os.environ["CBIR_SCREENSHOT_DIR"]) / "feedback_round1.png")
    browser.save_screenshot(str(shots[0]))
    for extra in shots[1:]:
        extra.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(shots[0], extra)

    # 2. keyboard only: focus the 1st result's "not" mark, select it with space, tab on to Refine, press enter
    mark = browser.find_element(By.CSS_SELECTOR, "#results li.result:nth-child(1) input.mark-irrelevant")
    browser.execute_script("arguments[0].focus();", mark)
    ActionChains(browser).send_keys(Keys.SPACE).perform()
    assert mark.is_selected()
    browser.execute_script("document.getElementById('refine-button').focus();")
    ActionChains(browser).send_keys(Keys.ENTER).perform()
    wait.until(lambda b: b.find_element(By.ID, "round-number").text == "2")
    round2 = [r["image_id"] for r in _results(browser)]
    assert round2 == ids(query_id_feedback(engine, "red/0", [first[0]], [first[1], round1[0]], settings))
    assert "2 irrelevant" in browser.find_element(By.ID, "feedback-status").text

    # 3. one click back to the first ranking
    browser.find_element(By.ID, "first-ranking").click()
    wait.until(lambda b: b.find_element(By.ID, "round-number").text == "0")
    assert [r["image_id"] for r in _results(browser)] == first

    # 4. drag a box on the query image: the region's ranking (the box in the shown image's pixels)
    wait.until(_thumbnails_loaded)
    frame = browser.find_element(By.ID, "query-image")
    size = browser.execute_script("var i = document.getElementById('query-image');"
                                  "return [i.naturalWidth, i.naturalHeight, i.clientWidth, i.clientHeight];")
    scale = min(size[2] / size[0], size[3] / size[1])
    # from the content's top-left corner to its centre (offsets are from the element's centre)
    ActionChains(browser).move_to_element_with_offset(frame, -int(size[0] * scale / 2) + 2,
                                                      -int(size[1] * scale / 2) + 2) \
        .click_and_hold().move_by_offset(int(size[0] * scale / 2) - 2, int(size[1] * scale / 2) - 2) \
        .release().perform()
    box = [int(browser.find_element(By.ID, f"box-{n}").get_attribute("value")) for n in ("x0", "y0", "x1", "y1")]
    assert box[0] <= 1 and box[1] <= 1 and abs(box[2] - size[0] / 2) <= 2 and abs(box[3] - size[1] / 2) <= 2
    assert browser.find_element(By.ID, "box-overlay").is_displayed()
    browser.find_element(By.ID, "region-button").click()
    wait.until(lambda b: b.find_elements(By.ID, "query-region"))
    region = [r["image_id"] for r in _results(browser)]
    full = Image.open(site["root"] / "data/raw/toy/red/0.png").convert("RGB")
    sx, sy = full.width / size[0], full.height / size[1]
    crop = full.crop((int(box[0] * sx), int(box[1] * sy), round(box[2] * sx), round(box[3] * sy)))
    assert region == ids(engine.query_image(crop))
    assert browser.find_element(By.ID, "query-region").text == "region " + ",".join(map(str, box))
