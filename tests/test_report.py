"""``lmrec report``: two tiny runs (pop, and a SASRec that logs epochs), one HTML file, read back as
text and rendered in headless Chromium (selenium + Debian's chromium/chromedriver, as in
``tests/test_browser.py``; skips without them, fails with ``LMREC_REQUIRE_BROWSER=1`` as in CI)."""

from __future__ import annotations

import io
import json
import os
import re
import shutil
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("matplotlib", reason="the report needs matplotlib: pip install 'lmrec[plot]'")

from lmrec.cli import main
from lmrec.report.data import popularity_buckets, target_scores, valid_epochs
from tests.test_cli import N_USERS, write_shop

SASREC = ["dim=16", "inner=32", "layers=1", "max_len=12", "epochs=3", "batch_size=16"]
ODD_NAME = 'sas<i>rec&"x"'  # a run directory whose name must come out escaped


@pytest.fixture(scope="module")
def report(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("report")
    data = write_shop(root / "shop")
    cache = root / "cache"
    sets = [a for s in SASREC for a in ("--set", s)]
    for model, out, extra in (("pop", "pop", []), ("sasrec", ODD_NAME, sets)):
        args = ["train", "--dataset", str(data), "--model", model, "--out", str(root / out), "--quiet", *extra]
        assert main(["--cache-dir", str(cache), *args]) == 0
    out = root / "report.html"
    runs = [str(root / "pop"), str(root / ODD_NAME)]
    assert main(["--cache-dir", str(cache), "report", "--run", *runs, "--out", str(out)]) == 0
    return {"root": root, "cache": cache, "html": out, "pop": root / "pop", "sasrec": root / ODD_NAME}


def _cell_numbers(html: str, table_id: str) -> list[str]:
    table = re.search(f'<table id="{table_id}">(.*?)</table>', html, re.S)
    assert table, f"no table {table_id}"
    return re.findall(r"<td>(.*?)</td>", table.group(1), re.S)


def test_the_report_holds_every_section_and_the_run_metrics(report: dict[str, Path]) -> None:
    html = report["html"].read_text()
    for section in ("protocol", "metrics", "paired", "beyond", "by-history", "by-popularity", "training", "timing"):
        assert f'id="{section}"' in html, section
    assert 'id="diversity"' not in html  # no run holds a sweep: no section, no invented curve
    assert "http://" not in html and "https://" not in html  # nothing fetched from anywhere
    assert html.count('src="data:image/png;base64,') == 1  # the training curves, embedded
    cells = _cell_numbers(html, "metrics-table")
    assert cells[0] == "pop" and f"{N_USERS} users" in html


def test_metrics_agree_with_lmrec_evaluate(report: dict[str, Path], capsys: pytest.CaptureFixture[str]) -> None:
    html = report["html"].read_text()
    cells = _cell_numbers(html, "metrics-table")
    capsys.readouterr()
    assert main(["--cache-dir", str(report["cache"]), "evaluate", "--run", str(report["sasrec"]), "--json"]) == 0
    ndcg = json.loads(capsys.readouterr().out)["metrics"]["ndcg@10"]
    row = cells.index("sasrec")
    assert cells[row + 1].startswith(f"{ndcg:.4f} ")  # first metric column is ndcg@10, then its interval
    low, high = map(float, re.findall(r"\[([\d.]+), ([\d.]+)\]", cells[row + 1])[0])
    assert low <= ndcg <= high


def test_strings_are_escaped(report: dict[str, Path]) -> None:
    html = report["html"].read_text()
    assert "sas<i>rec" not in html
    assert "sas&lt;i&gt;rec&amp;&quot;x&quot;" in html


def test_a_stored_diversity_sweep_is_plotted(report: dict[str, Path], tmp_path: Path) -> None:
    rows = [
        {"method": "none", "value": None, "metrics": {"ndcg@10": 0.30, "ild": 0.40}},
        {"method": "mmr", "value": 0.7, "metrics": {"ndcg@10": 0.28, "ild": 0.55}},
    ]
    run = tmp_path / "pop"
    shutil.copytree(report["pop"], run)
    (run / "diversity.json").write_text(json.dumps({"rows": rows}))
    out = tmp_path / "r.html"
    assert main(["--cache-dir", str(report["cache"]), "report", "--run", str(run), "--out", str(out)]) == 0
    html = out.read_text()
    assert 'id="diversity"' in html and 'id="paired"' not in html  # one run: nothing to pair
    assert 'id="training"' not in html  # pop has no epochs


def test_runs_of_different_data_are_refused(report: dict[str, Path], tmp_path: Path) -> None:
    other = write_shop(tmp_path / "other")
    (other / "interactions.csv").write_text((other / "interactions.csv").read_text() + "newcomer,i1,999999\n")
    run = tmp_path / "run"
    cache = ["--cache-dir", str(report["cache"])]
    assert main([*cache, "train", "--dataset", str(other), "--model", "pop", "--out", str(run), "--quiet"]) == 0
    code = main([*cache, "report", "--run", str(report["pop"]), str(run), "--out", str(tmp_path / "x.html")])
    assert code == 2 and not (tmp_path / "x.html").exists()


def test_popularity_buckets_split_the_interaction_mass_in_thirds() -> None:
    popularity = np.array([50, 30, 10, 5, 5, 0])  # 100 interactions; item 5 never trained on
    buckets = dict(popularity_buckets(popularity, np.arange(6)))
    assert buckets["head"].tolist() == [True, False, False, False, False, False]  # 0..50 %: starts below 1/3
    assert buckets["torso"].tolist() == [False, True, False, False, False, False]  # starts at 50 %
    assert buckets["tail"].tolist() == [False, False, True, True, True, False]
    assert buckets["cold (no training interaction)"].tolist() == [False] * 5 + [True]


def test_target_scores_and_validation_epochs() -> None:
    hit, dcg = target_scores(np.array([0, 1, -1]))
    assert hit.tolist() == [1.0, 1.0, 0.0]
    assert dcg.tolist() == pytest.approx([1.0, 1 / np.log2(3), 0.0])
    assert valid_epochs({"losses": [1] * 5, "valid": [0.1] * 3}, eval_every=2) == [2, 4, 5]
    assert valid_epochs({"losses": [1] * 4, "valid": [0.1] * 4}, eval_every=1) == [1, 2, 3, 4]


# -- in a browser ----------------------------------------------------------------------------------

REQUIRED = os.environ.get("LMREC_REQUIRE_BROWSER") == "1"
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")
FLAGS = ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--window-size=1200,900")


@pytest.fixture(scope="module")
def browser(tmp_path_factory: pytest.TempPathFactory) -> Iterator[object]:
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
    except ImportError:
        if REQUIRED:
            pytest.fail("selenium is not installed")
        pytest.skip("selenium is not installed: pip install selenium")
    if not (CHROMIUM and CHROMEDRIVER):
        if REQUIRED:
            pytest.fail("chromium or chromedriver not found: run scripts/ci_browser.sh")
        pytest.skip("chromium or chromedriver not found: run scripts/ci_browser.sh")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in FLAGS:
        options.add_argument(flag)
    options.add_argument(f"--user-data-dir={tmp_path_factory.mktemp('chromium-profile')}")
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=options)
    try:
        yield driver
    finally:
        driver.quit()


def test_the_report_renders_in_chromium(report: dict[str, Path], browser: object) -> None:
    from PIL import Image
    from selenium.webdriver.common.by import By
    from selenium.webdriver.remote.webdriver import WebDriver

    assert isinstance(browser, WebDriver)
    browser.get_log("browser")
    browser.get(report["html"].as_uri())
    assert browser.title.startswith("lmrec report")
    for table in ("metrics-table", "paired-table", "history-table", "popularity-table", "timing-table"):
        rows = browser.find_elements(By.CSS_SELECTOR, f"#{table} tbody tr")
        assert rows, f"{table} has no rows"
    metric_rows = [r.text for r in browser.find_elements(By.CSS_SELECTOR, "#metrics-table tbody tr")]
    assert [r.split()[0] for r in metric_rows] == ["pop", "sasrec"]
    # The embedded plot decoded: an image with a real size, not a broken-image icon.
    plot = browser.find_element(By.ID, "training-plot")
    assert browser.execute_script("return arguments[0].complete && arguments[0].naturalWidth", plot) > 300
    shot = Image.open(io.BytesIO(browser.get_screenshot_as_png())).convert("L")
    low, high = shot.getextrema()
    assert high - low > 100  # text and lines on a background, not a blank page
    assert sum(1 for count in shot.histogram() if count) > 10  # many grey levels: anti-aliased text
    assert [e["message"] for e in browser.get_log("browser") if e["level"] == "SEVERE"] == []
