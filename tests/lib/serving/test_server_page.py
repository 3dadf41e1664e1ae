"""The page at `/`, in headless Chromium: a person asks, sees the answer and its sources, rates it.

Needs Debian's chromium and chromedriver (`.ci/run` installs them); without them the test is
skipped with that reason, as the page is then a manual check.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.support import expected_conditions
from selenium.webdriver.support.ui import WebDriverWait

from tasks.lib.core.config import load_params
from tasks.lib.serving.bundle import load_bundle
from tasks.lib.serving.feedback import FeedbackStore
from tasks.lib.serving.registry import promote
from tasks.lib.serving.served import alias_version, load_served_bundle
from tasks.lib.serving.server import Champion, create_app
from tests.support.bundle import QUESTIONS, RAG, register_bundle, serving_project, sqlite_registry
from tests.support.serving import running

CHROMEDRIVER = shutil.which("chromedriver")
CHROMIUM = shutil.which("chromium")
pytestmark = pytest.mark.skipif(
    not (CHROMEDRIVER and CHROMIUM),
    reason="needs Debian's chromium and chromium-driver (apt-get install chromium chromium-driver)",
)


@pytest.fixture
def browser():
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in (
        "--headless=new",
        "--no-sandbox",
        "--disable-dev-shm-usage",
        "--window-size=1000,900",
    ):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    try:
        yield driver
    finally:
        driver.quit()


def test_the_page_asks_shows_the_sources_and_records_a_correction(
    browser, tmp_path: Path, parts, bundle_dir, monkeypatch: pytest.MonkeyPatch
) -> None:
    uri, experiment = sqlite_registry(tmp_path / "registry")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    from mlflow import MlflowClient

    client = MlflowClient(uri)
    version = register_bundle(client, experiment, parts, bundle_dir)[RAG]
    promote(client, RAG, version, by="test")
    params = load_params(serving_project(tmp_path / "project"))
    champion = Champion(
        lambda v: load_served_bundle(params, "champion", v),
        lambda: alias_version(params, "champion"),
    )
    store = FeedbackStore.open(params.feedback, params.project_dir)
    expected = load_bundle(bundle_dir).predict(QUESTIONS[:1])[0]
    wait = WebDriverWait(browser, 60)
    with running(create_app(champion, store, params.serve, params.bundle.batch_size)) as url:
        browser.get(url)
        wait.until(
            expected_conditions.text_to_be_present_in_element((By.ID, "served"), f"v{version}")
        )
        browser.find_element(By.ID, "question").send_keys(QUESTIONS[0])
        browser.find_element(By.ID, "ask").click()
        wait.until(expected_conditions.visibility_of_element_located((By.ID, "answer")))
        assert browser.find_element(By.ID, "answer").text == expected["answer"].strip()
        titles = [e.text for e in browser.find_elements(By.CSS_SELECTOR, ".source .title")]
        assert titles == [f"[{i}] {t}" for i, t in enumerate(expected["source_titles"], start=1)]
        browser.find_element(By.ID, "bad").click()
        browser.find_element(By.ID, "corrected").send_keys(
            "x" * (params.feedback.max_text_chars + 1)
        )
        browser.find_element(By.ID, "send").click()
        wait.until(expected_conditions.text_to_be_present_in_element((By.ID, "thanks"), "error:"))
        corrected = browser.find_element(By.ID, "corrected")
        corrected.clear()
        corrected.send_keys("Saturn")
        browser.find_element(By.ID, "send").click()
        wait.until(
            expected_conditions.text_to_be_present_in_element((By.ID, "thanks"), "Thank you")
        )
    rows = store.feedback_rows()  # the oversized correction was refused, and not stored
    assert [(row.good, row.correction, row.doc_id) for row in rows] == [
        (False, "Saturn", expected["sources"][0])
    ]
