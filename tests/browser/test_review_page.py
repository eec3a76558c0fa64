"""The review page in a real headless Chromium (Debian's chromium and chromium-driver, Selenium from PyPI).

Skipped unless ``MENTALGLM_BROWSER=1`` (``.ci/browser.sh`` installs the browser and sets it); in that stage a
skip fails. Hostile text goes in through a post and through a model's explanation; nothing of it may run.
A screenshot is kept under ``MENTALGLM_ARTIFACTS`` (default: the test's temporary folder).
"""

from __future__ import annotations

import os
from dataclasses import replace
from pathlib import Path

import pytest

pytestmark = [pytest.mark.browser,
              pytest.mark.skipif(os.environ.get("MENTALGLM_BROWSER") != "1",
                                 reason="set MENTALGLM_BROWSER=1 with chromium and chromium-driver installed "
                                        "(.ci/browser.sh)")]

HOSTILE_POST = ("我不想活了<script>window.__pwned = 'post-script'</script>"
                "<img src=x onerror=\"window.__pwned='post-img'\">")
HOSTILE_EXPLANATION = "<img src=x onerror=\"window.__pwned='explanation'\"><b>加粗</b>"


@pytest.fixture(scope="module")
def floor(tmp_path_factory):
    from served import build_floor

    return build_floor(tmp_path_factory.mktemp("floor"))


@pytest.fixture
def browser():
    webdriver = pytest.importorskip("selenium.webdriver")
    options = webdriver.ChromeOptions()
    options.binary_location = os.environ.get("MENTALGLM_CHROMIUM", "/usr/bin/chromium")
    for argument in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                     "--window-size=1200,1400"):
        options.add_argument(argument)
    service = webdriver.ChromeService(executable_path=os.environ.get("MENTALGLM_CHROMEDRIVER", "/usr/bin/chromedriver"))
    driver = webdriver.Chrome(options=options, service=service)
    try:
        yield driver
    finally:
        driver.quit()


def _hostile_explanations(engine):
    """Make every explanation the model gives start with markup, as a model's text could."""
    for analyzer in engine.analyzers.values():
        original = analyzer.analyze_many

        def marked(posts, original=original):
            for prediction in original(posts):
                yield replace(prediction, explanation=HOSTILE_EXPLANATION + prediction.explanation)

        analyzer.analyze_many = marked


def test_a_reviewer_sees_label_probability_flag_explanation_and_evidence_and_nothing_runs(floor, browser, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ready
    from selenium.webdriver.support.ui import Select, WebDriverWait

    from served import LOW, serve

    with serve(floor) as served:
        served.wait_ready()
        _hostile_explanations(served.engine)
        browser.get(served.url + "/")
        wait = WebDriverWait(browser, 60)
        wait.until(lambda d: Select(d.find_element(By.ID, "task")).options)
        Select(browser.find_element(By.ID, "task")).select_by_visible_text("suicide-risk")
        browser.find_element(By.ID, "posts").send_keys(HOSTILE_POST + "\n" + LOW)
        browser.find_element(By.ID, "analyze").click()
        wait.until(ready.presence_of_all_elements_located((By.CSS_SELECTOR, "#results .result")))
        wait.until(lambda d: len(d.find_elements(By.CSS_SELECTOR, "#results .result")) == 2)
        artefacts = Path(os.environ.get("MENTALGLM_ARTIFACTS") or tmp_path)
        artefacts.mkdir(parents=True, exist_ok=True)
        browser.save_screenshot(str(artefacts / "review-page.png"))

        cards = browser.find_elements(By.CSS_SELECTOR, "#results .result")
        _, _, api = served.call("POST", "/v1/analyze", {"task": "suicide-risk", "posts": [HOSTILE_POST, LOW]})
        for card, prediction in zip(cards, api["predictions"]):
            assert card.find_element(By.CSS_SELECTOR, ".label").text == "、".join(prediction["labels"])
            probability = card.find_element(By.CSS_SELECTOR, ".probability").text
            assert f"= {prediction['probabilities']['高自杀风险']:.3f}" in probability
            assert "review band 0.3–0.6" in probability and "threshold" in probability
            assert bool(card.find_elements(By.CSS_SELECTOR, ".flag")) == prediction["needs_review"]
            assert f"decision: {prediction['decision']}" in card.text
            # the explanation and the post are shown as text, markup and all
            assert card.find_element(By.CSS_SELECTOR, ".explanation").text.startswith(HOSTILE_EXPLANATION)
            marks = [m.text for m in card.find_elements(By.CSS_SELECTOR, ".post mark")]
            assert set(marks) <= {e["quote"] for e in prediction.get("evidence") or []}
        assert cards[0].find_elements(By.CSS_SELECTOR, ".post mark")  # the high-risk post's evidence is marked
        assert cards[0].find_element(By.CSS_SELECTOR, ".post").text == HOSTILE_POST
        assert not browser.find_elements(By.CSS_SELECTOR, "#results img, #results script, #results b")
        assert browser.execute_script("return window.__pwned === undefined")
