"""The demo page end to end in headless Chromium: a real uvicorn server on 127.0.0.1, a real browser.

The servers send a strict Content-Security-Policy (scripts, styles and images from the page's own
origin only), and every test ends by checking that the browser console logged no error: an inline
script, a blocked resource or a failed request would show there.

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
from contextlib import contextmanager
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
from tests.conftest import KeywordEncoder
from tests.test_serve import N_ITEMS, PER_USER, SASREC, genres, write_shop

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


CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self'; connect-src 'self'; "
    "object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
)


class StrictCSP:
    """Send ``CSP`` with every response, as a deployment would: the page must work under it."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        async def with_csp(message: Any) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", []), (b"content-security-policy", CSP.encode())]
            await send(message)

        await self.app(scope, receive, with_csp if scope["type"] == "http" else send)


def year(item: str) -> int:
    return 1990 + int(item[1:])


@pytest.fixture(scope="module")
def shop(tmp_path_factory: pytest.TempPathFactory) -> DataRecipe:
    """The service tests' shop (even users buy i0..i9, "Low"; odd ones i10..i19, "High"), with years."""
    directory = write_shop(tmp_path_factory.mktemp("shop") / "shop")
    rows = "".join(f"i{i},Title {i},{genres(i)},{year(f'i{i}')}\n" for i in range(N_ITEMS))
    (directory / "items.csv").write_text("item,title,genres,year\n" + rows)
    return DataRecipe(dataset=str(directory))


@contextmanager
def running(app: Any) -> Iterator[str]:
    """``app`` served by uvicorn on a free loopback port, in a thread; yields its base URL."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    srv = uvicorn.Server(uvicorn.Config(StrictCSP(app), log_level="warning", access_log=False))
    thread = threading.Thread(target=srv.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not srv.started:  # start-up, not synchronisation with the page
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("the service did not start")
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        srv.should_exit = True
        thread.join(timeout=10)
        sock.close()


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, shop: DataRecipe) -> Iterator[tuple[str, str]]:
    """An EASE run behind API keys; yields (base URL, a read+write key)."""
    root = tmp_path_factory.mktemp("browser")
    train_run(shop, "ease", {}, root / "run", root / "cache", FitOptions(seed=0))
    app = create_app(root / "run", root / "events.db", root / "cache", require_keys=True)
    _, key = app.state.service.store.create_key(["read", "write"])
    with running(app) as base:
        yield base, key


@pytest.fixture(scope="module")
def text_server(tmp_path_factory: pytest.TempPathFactory, shop: DataRecipe) -> Iterator[str]:
    """A text-SASRec run (items read from their text only, by a fake encoder that sees "Low"), keys off."""
    root = tmp_path_factory.mktemp("browser-text")
    encoder = KeywordEncoder("Low")
    config = {**SASREC, "item_repr": "text", "epochs": 20}
    train_run(shop, "text-sasrec", config, root / "run", root / "cache", FitOptions(seed=0, text_encoder=encoder))
    app = create_app(root / "run", root / "events.db", root / "cache", require_keys=False, text_encoder=encoder)
    with running(app) as base:
        yield base


@pytest.fixture(scope="module")
def browser(tmp_path_factory: pytest.TempPathFactory) -> Iterator[WebDriver]:
    if _MISSING:
        pytest.fail(f"{_MISSING} not found: run scripts/ci_browser.sh")
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for flag in FLAGS:
        options.add_argument(flag)
    options.add_argument(f"--user-data-dir={tmp_path_factory.mktemp('chromium-profile')}")
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
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


def rendered_for(driver: WebDriver, user: str) -> bool:
    """Whether the recommendations on show answer a request for ``user`` (not an earlier one)."""
    request = driver.find_element(By.ID, "recs").get_attribute("data-request") or "{}"
    return json.loads(request).get("user") == user and bool(items(driver, "recs"))


def load(driver: WebDriver, base: str) -> None:
    """Open the page with an empty console log (the log is read and cleared by ``console_errors``)."""
    driver.get_log("browser")
    driver.get(base + "/")


def console_errors(driver: WebDriver) -> list[str]:
    """SEVERE browser-console entries since the last read: script errors, CSP refusals, failed requests."""
    return [e["message"] for e in driver.get_log("browser") if e["level"] == "SEVERE"]


def open_user(driver: WebDriver, base: str, key: str, user: str) -> None:
    """Load the page, enter the key and the user, ask for recommendations, wait for both lists."""
    load(driver, base)
    wait_for(driver, lambda d: "ease" in d.find_element(By.ID, "info").text, "the page did not read /health")
    key_field = driver.find_element(By.ID, "key")
    key_field.clear()  # the page keeps the last key in localStorage
    key_field.send_keys(key)
    field = driver.find_element(By.ID, "user")
    field.clear()
    field.send_keys(user)
    driver.find_element(By.CSS_SELECTOR, "#query button[type=submit]").click()
    wait_for(driver, lambda d: rendered_for(d, user) and items(d, "history"), "no recommendations or history shown")


def post(base: str, key: str | None, path: str, body: Any) -> Any:
    headers = {"Content-Type": "application/json"} | ({"Authorization": f"Bearer {key}"} if key else {})
    request = urllib.request.Request(base + path, data=json.dumps(body).encode(), headers=headers)
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.loads(response.read())


def shown(driver: WebDriver) -> list[dict[str, Any]]:
    """Each recommendation as the page shows it: data attributes, and the text of its parts."""
    script = """return Array.from(document.querySelectorAll('#recs li')).map(li => ({
        item: li.dataset.item, year: li.dataset.year, genres: JSON.parse(li.dataset.genres),
        cited: JSON.parse(li.dataset.cited), text: li.innerText, new: li.classList.contains('new'),
        facts: (li.querySelector('.facts') || {}).textContent || '',
        why: (li.querySelector('.why') || {}).textContent || ''}));"""
    return list(driver.execute_script(script))


def pick(driver: WebDriver, user: str) -> None:
    """Click the offered user's button and wait for that user's recommendations and history."""
    driver.find_element(By.CSS_SELECTOR, f"#pick button[data-user='{user}']").click()
    wait_for(driver, lambda d: rendered_for(d, user) and items(d, "history"), f"picking {user} showed nothing")


def offered(driver: WebDriver) -> list[str]:
    """The users offered as buttons, in order."""
    script = "return Array.from(document.querySelectorAll('#pick button')).map(b => b.dataset.user);"
    return list(driver.execute_script(script))


def pick_state(driver: WebDriver) -> str:
    """Where the users to pick from stand: loading, need-key, ready or error."""
    return driver.find_element(By.ID, "pick").get_attribute("data-state") or ""


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
    assert console_errors(browser) == []


def test_diversity_slider_reranks(server: tuple[str, str], browser: WebDriver, tmp_path: Path) -> None:
    base, key = server
    open_user(browser, base, key, "u1")
    assert json.loads(browser.find_element(By.ID, "recs").get_attribute("data-request") or "{}") == {
        "user": "u1",
        "k": 10,
        "explain": True,
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
    assert console_errors(browser) == []


def test_users_offered_and_recommendations_explained(
    server: tuple[str, str], browser: WebDriver, tmp_path: Path
) -> None:
    base, key = server
    load(browser, base)
    browser.execute_script("localStorage.clear();")  # no key kept from another test
    load(browser, base)
    # Behind keys the page says what it needs instead of failing a request; with a key, users are offered.
    wait_for(browser, lambda d: pick_state(d) == "need-key", "no hint that a key is needed")
    assert "API key" in browser.find_element(By.ID, "pick").text and not items(browser, "recs")
    browser.find_element(By.ID, "key").send_keys(key + Keys.TAB)  # leaving the field is a change
    wait_for(browser, lambda d: pick_state(d) == "ready", "no users offered")
    assert offered(browser) == [f"u{i}" for i in range(8)]  # the run's first users, in its order

    pick(browser, "u3")
    assert browser.find_element(By.ID, "user").get_attribute("value") == "u3"
    assert browser.find_element(By.CSS_SELECTOR, "#pick button.chosen").get_attribute("data-user") == "u3"
    history = set(items(browser, "history"))
    recs = shown(browser)
    assert len(recs) == 10 and len(history) == PER_USER
    for rec in recs:  # year and genres from the catalog, a reason citing only the user's history
        item = rec["item"]
        assert rec["year"] == str(year(item)) and rec["facts"].startswith(f"{year(item)} · ")
        assert rec["genres"] == genres(int(item[1:])).split("|") and ", ".join(rec["genres"]) in rec["facts"]
        assert rec["why"] and set(rec["cited"]) <= history and item not in rec["cited"]
        assert all(f"Title {c[1:]}" in rec["why"] for c in rec["cited"])
    # u3 buys High items: the two High items left to recommend come first, each explained by High items.
    high = [f"i{i}" for i in range(10, 20)]
    assert {r["item"] for r in recs[:2]} <= set(high)
    assert all(r["cited"] and set(r["cited"]) <= set(high) for r in recs[:2])
    # The page shows the service's reasons, word for word.
    answer = post(base, key, "/recommend", {"user": "u3", "k": 10, "explain": True})["items"]
    assert [r["why"] for r in recs] == [it["because"] for it in answer]
    assert [r["cited"] for r in recs] == [it["cited"] for it in answer]
    browser.save_screenshot(str(tmp_path / "explained.png"))

    pick(browser, "u4")  # another pick replaces the list
    assert set(items(browser, "history")) != history and shown(browser)[0]["cited"]
    assert console_errors(browser) == []


def test_new_item_recommended_at_once_by_a_text_model(text_server: str, browser: WebDriver, tmp_path: Path) -> None:
    base = text_server
    load(browser, base)
    # Without keys the page opens with users to pick, nothing typed.
    wait_for(browser, lambda d: pick_state(d) == "ready", "no users offered")
    wait_for(browser, lambda d: "text-sasrec" in d.find_element(By.ID, "info").text, "the page did not read /health")
    assert offered(browser)[:2] == ["u0", "u1"]
    pick(browser, "u0")  # u0 buys Low items
    before = items(browser, "recs")
    assert "new-fresh-arrival" not in before

    browser.find_element(By.ID, "new-title").send_keys("Fresh arrival")
    browser.find_element(By.ID, "new-genres").send_keys("Low")
    browser.find_element(By.ID, "new-year").send_keys("2024")
    browser.find_element(By.CSS_SELECTOR, "#add button[type=submit]").click()
    note = browser.find_element(By.ID, "added")
    wait_for(browser, lambda d: note.get_attribute("data-state") in ("done", "error"), "adding the item did not finish")
    assert note.get_attribute("data-state") == "done", note.text
    assert note.get_attribute("data-item") == "new-fresh-arrival" and note.get_attribute("data-recommendable") == "true"
    rank = int(note.get_attribute("data-rank") or 0)
    assert 1 <= rank <= 10 and f"#{rank} for u0" in note.text and "text-sasrec scores it from its text" in note.text
    # It is in u0's list now, marked new, with its year, genres and a reason from u0's history.
    wait_for(browser, lambda d: "new-fresh-arrival" in items(d, "recs"), "the new item is not recommended")
    recs = shown(browser)
    new = recs[rank - 1]
    assert new["item"] == "new-fresh-arrival" and new["new"] and "new" in new["text"]
    assert new["year"] == "2024" and new["genres"] == ["Low"] and new["facts"].startswith("2024 · Low · ")
    history = set(items(browser, "history"))
    assert new["cited"] and set(new["cited"]) <= history and new["why"].startswith("Because you liked Title ")
    assert [r["item"] for r in recs if r["new"]] == ["new-fresh-arrival"]
    # What the service says: the model read the new text and ranks the item where the page shows it.
    answer = post(base, None, "/recommend", {"user": "u0", "k": 10})["items"]
    assert [it["item"] for it in answer] == [r["item"] for r in recs]
    browser.save_screenshot(str(tmp_path / "added.png"))
    assert console_errors(browser) == []
