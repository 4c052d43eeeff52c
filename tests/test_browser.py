"""The demo page end to end in headless Chromium: a real uvicorn server on 127.0.0.1, a real browser.

Needs selenium (``pip install selenium``) and Debian's ``chromium`` and ``chromium-driver``
(``scripts/ci_browser.sh`` installs them); skips, saying which is missing, without them — or,
with ``LMREC_REQUIRE_BROWSER=1`` (CI), fails when the browser or its driver is missing.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")
pytest.importorskip("selenium", reason="selenium is not installed: pip install selenium")

import uvicorn
from selenium import webdriver
from selenium.common.exceptions import StaleElementReferenceException
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys
from selenium.webdriver.remote.webdriver import WebDriver
from selenium.webdriver.support.ui import WebDriverWait

from lmrec.models.base import FitOptions
from lmrec.runs import DataRecipe, train_run
from lmrec.serve import create_app
from tests.test_serve import PER_USER, write_shop

# In CI (LMREC_REQUIRE_BROWSER=1, after scripts/ci_browser.sh) a missing browser fails instead of skipping.
REQUIRED = os.environ.get("LMREC_REQUIRE_BROWSER") == "1"
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")
_MISSING = " and ".join(name for name, path in (("chromium", CHROMIUM), ("chromedriver", CHROMEDRIVER)) if not path)
pytestmark = pytest.mark.skipif(
    bool(_MISSING) and not REQUIRED, reason=f"{_MISSING} not found: run scripts/ci_browser.sh"
)

WAIT = 15.0  # seconds for the page to react; generous for a busy 2-core machine
FLAGS = (
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--window-size=1200,900",
)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, str]]:
    """The service on a free loopback port, in a thread; yields (base URL, a read+write key)."""
    root = tmp_path_factory.mktemp("browser")
    recipe = DataRecipe(dataset=str(write_shop(root / "shop")))
    train_run(recipe, "ease", {}, root / "run", root / "cache", FitOptions(seed=0))
    app = create_app(root / "run", root / "events.db", root / "cache", require_keys=True)
    _, key = app.state.service.store.create_key(["read", "write"])
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    srv = uvicorn.Server(uvicorn.Config(app, log_level="warning", access_log=False))
    thread = threading.Thread(target=srv.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not srv.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("the service did not start")
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port}", key
    finally:
        srv.should_exit = True
        thread.join(timeout=10)
        sock.close()


@pytest.fixture(scope="module")
def browser(tmp_path_factory: pytest.TempPathFactory) -> Iterator[WebDriver]:
    if _MISSING:
        pytest.fail(f"{_MISSING} not found: run scripts/ci_browser.sh")
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for flag in FLAGS:
        options.add_argument(flag)
    options.add_argument(f"--user-data-dir={tmp_path_factory.mktemp('chromium-profile')}")
    driver = webdriver.Chrome(service=Service(executable_path=str(CHROMEDRIVER)), options=options)
    try:
        yield driver
    finally:
        driver.quit()


def wait_for(driver: WebDriver, condition: Any, message: str) -> Any:
    """Poll `condition` until it holds; an element replaced mid-read by a re-render just means poll again."""
    wait = WebDriverWait(driver, WAIT, poll_frequency=0.1, ignored_exceptions=[StaleElementReferenceException])
    return wait.until(lambda d: condition(d), message)


def items(driver: WebDriver, list_id: str) -> list[str]:
    """The data-item of each entry, read in one script call so a re-render cannot leave a stale element."""
    script = "return Array.from(document.querySelectorAll(arguments[0])).map(li => li.dataset.item || '');"
    return list(driver.execute_script(script, f"#{list_id} li"))


def open_user(driver: WebDriver, base: str, key: str, user: str) -> None:
    """Load the page, enter the key and the user, ask for recommendations, wait for both lists."""
    driver.get(base + "/")
    wait_for(driver, lambda d: "ease" in d.find_element(By.ID, "info").text, "the page did not read /health")
    key_field = driver.find_element(By.ID, "key")
    key_field.clear()  # the page keeps the last key in localStorage
    key_field.send_keys(key)
    field = driver.find_element(By.ID, "user")
    field.clear()
    field.send_keys(user)
    driver.find_element(By.CSS_SELECTOR, "#query button[type=submit]").click()
    wait_for(driver, lambda d: items(d, "recs") and items(d, "history"), "no recommendations or history shown")


def post(base: str, key: str, path: str, body: Any) -> Any:
    request = urllib.request.Request(
        base + path,
        data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json", "Authorization": f"Bearer {key}"},
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.loads(response.read())


def test_choose_a_user_and_click_a_recommendation(server: tuple[str, str], browser: WebDriver, tmp_path: Path) -> None:
    base, key = server
    open_user(browser, base, key, "u0")
    recs = browser.find_elements(By.CSS_SELECTOR, "#recs li")
    assert len(recs) == 10
    assert all(li.text.startswith("Title ") for li in recs)  # titles, not bare IDs
    history = items(browser, "history")
    assert len(history) == PER_USER and browser.find_element(By.ID, "hlen").text == f"({PER_USER}, newest first)"
    assert not set(items(browser, "recs")) & set(history)
    # The datalist of users came in once the key was entered.
    options = browser.find_elements(By.CSS_SELECTOR, "#users option")
    assert "u0" in [o.get_attribute("value") for o in options]
    browser.save_screenshot(str(tmp_path / "before.png"))

    clicked = items(browser, "recs")[0]
    recs[0].click()
    wait_for(browser, lambda d: items(d, "history")[:1] == [clicked], "the click did not reach the history")
    wait_for(browser, lambda d: clicked not in items(d, "recs"), "the clicked item is still recommended")
    assert "sent a click" in browser.find_element(By.ID, "status").text
    first = browser.find_element(By.CSS_SELECTOR, "#history li")
    assert "click" in first.text and first.text.startswith(f"Title {clicked[1:]}")
    assert len(items(browser, "history")) == PER_USER + 1 and len(items(browser, "recs")) == 10
    browser.save_screenshot(str(tmp_path / "after.png"))


def test_diversity_slider_reranks(server: tuple[str, str], browser: WebDriver, tmp_path: Path) -> None:
    base, key = server
    open_user(browser, base, key, "u1")
    assert json.loads(browser.find_element(By.ID, "recs").get_attribute("data-request") or "{}") == {
        "user": "u1",
        "k": 10,
    }
    plain = items(browser, "recs")
    rendered = browser.find_element(By.ID, "recs").get_attribute("data-rendered")

    slider = browser.find_element(By.ID, "diversity")
    slider.click()  # the middle of the track: 50
    for _ in range(4):
        slider.send_keys(Keys.ARROW_RIGHT)  # each step is 5: diversity 70, so λ = 0.3
    wait_for(browser, lambda d: d.find_element(By.ID, "lam").text == "MMR λ = 0.30", "the slider label did not follow")

    def sent(d: WebDriver) -> dict[str, Any]:
        return json.loads(d.find_element(By.ID, "recs").get_attribute("data-request") or "{}")

    wait_for(browser, lambda d: sent(d).get("rerank", {}).get("lam") == 0.3, "no re-ranked request at λ = 0.3")
    request = sent(browser)
    assert request["rerank"] == {"method": "mmr", "lam": 0.3, "similarity": "genre"}
    assert browser.find_element(By.ID, "recs").get_attribute("data-rendered") != rendered
    assert "re-ranked: MMR λ 0.3, genre similarity" in browser.find_element(By.ID, "reranked").text
    # The page shows what the service answers for that request, and it is not the model's order.
    shown = items(browser, "recs")
    assert shown == [it["item"] for it in post(base, key, "/recommend", request)["items"]]
    assert shown != plain and shown[0] == plain[0]  # MMR keeps the most relevant item first
    browser.save_screenshot(str(tmp_path / "diverse.png"))

    for _ in range(14):
        slider.send_keys(Keys.ARROW_LEFT)  # back to 0: no re-ranking
    wait_for(browser, lambda d: "rerank" not in sent(d), "moving the slider to 0 did not turn re-ranking off")
    assert browser.find_element(By.ID, "lam").text == "off (model order)"
    assert browser.find_element(By.ID, "reranked").text == ""
    assert items(browser, "recs") == plain
