"""The console page in a real browser: Debian's chromium headless, driven by Selenium through
Debian's chromium-driver, against a real ``flowcollect run --http`` process."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from tests.service.conftest import TOKEN, Api

pytestmark = pytest.mark.realtime

CHROMIUM = shutil.which("chromium")
DRIVER = shutil.which("chromedriver")


@pytest.fixture
def browser():  # type: ignore[no-untyped-def]
    if CHROMIUM is None or DRIVER is None:
        if os.environ.get("FLOWCOLLECT_REQUIRE_SERVERS"):
            pytest.fail("chromium and chromium-driver are needed (apt-get install chromium chromium-driver)")
        pytest.skip("chromium or chromium-driver not installed")
    webdriver = pytest.importorskip("selenium.webdriver")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--window-size=1400,1000"):
        options.add_argument(arg)
    driver = webdriver.Chrome(options=options, service=webdriver.ChromeService(executable_path=DRIVER))
    driver.set_page_load_timeout(15)
    try:
        yield driver
    finally:
        driver.quit()


@pytest.mark.slow  # a real browser or process for 8-15 s: make test-slow (CI) runs it
def test_the_console_shows_devices_and_values_and_pauses_a_context(
    tmp_path: Path, apis: list[Api], token_file: Path, browser
) -> None:
    from selenium.common.exceptions import StaleElementReferenceException
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions
    from selenium.webdriver.support.wait import WebDriverWait

    def text(element_id: str) -> str:
        # Read in one script call: the page re-renders its tables every second.
        return str(browser.execute_script(f"return document.getElementById('{element_id}').innerText"))

    def click(selector: str) -> None:
        for _ in range(20):
            try:
                browser.find_element(By.CSS_SELECTOR, selector).click()
                return
            except StaleElementReferenceException:
                continue
        pytest.fail(f"{selector} kept being replaced")

    api = Api(tmp_path, "--http", "127.0.0.1:0", "--token-file", str(token_file))
    apis.append(api)
    browser.get(api.url + "/")
    wait = WebDriverWait(browser, 10)
    wait.until(lambda d: "plc" in text("readers"))
    wait.until(lambda d: "temp_1" in text("values"))
    readers = text("readers")
    assert "modbus+tcp://127.0.0.1:" in readers and "ok" in readers
    assert "csv:out/api.csv" in text("writers")
    wait.until(lambda d: "live" in text("live"))

    # The filter narrows the values (served a page at a time by the API).
    browser.find_element(By.ID, "filter").send_keys("pump")
    wait.until(lambda d: "temp_1" not in text("values"))
    assert "pump_speed" in text("values")
    # One page holds every match: no page to go back or on to (the next page used to be empty).
    assert not browser.find_element(By.ID, "prev").is_enabled()
    assert not browser.find_element(By.ID, "next").is_enabled()

    # Pause from the page: the token is asked once, then the context is paused for real.
    click("#context-1 button[data-action=pause]")
    prompt = wait.until(expected_conditions.alert_is_present())
    prompt.send_keys(TOKEN)
    prompt.accept()
    wait.until(lambda d: "paused" in text("context-1"))
    assert api.get("/api/v1/contexts/1")["state"] == "paused"
    click("#context-1 button[data-action=resume]")  # no prompt now
    wait.until(lambda d: "running" in text("context-1"))
    assert api.get("/api/v1/contexts/1")["state"] == "running"
    # A device's health is now: errors while a variable fails, ok again once none does.
    failing = {
        "id": 20,
        "interval_ms": 200,
        "duration_s": None,
        "variables": [{"id": 5, "address": "holding:60000:uint16", "reader": "plc"}],
    }
    assert api.post("/api/v1/contexts", failing, token=TOKEN)[0] == 201

    def health() -> str:
        cells = "document.querySelectorAll('#readers tbody td:nth-child(3)')"
        return str(browser.execute_script(f"return Array.from({cells}, (c) => c.innerText).join()"))

    wait.until(lambda d: health() == "errors")
    assert api.post("/api/v1/contexts/20/stop", token=TOKEN)[0] == 200
    wait.until(lambda d: health() == "ok")
    assert api.get("/api/v1/status")["readers"]["plc"]["last_error"]["context"] == 20  # still shown
    shot = tmp_path / "console.png"
    assert browser.save_screenshot(str(shot)) and shot.stat().st_size > 10_000
    if os.environ.get("FLOWCOLLECT_SCREENSHOTS"):  # regenerate the docs' picture
        shutil.copy(shot, Path(__file__).resolve().parents[2] / "docs" / "img" / "console.png")
    assert api.stop() == 0
