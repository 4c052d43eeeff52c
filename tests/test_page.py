"""What the demo page reads from the service (lmrec.serve.describe): year, genres and grounded reasons in
/recommend, and the page's static files. In-process with FastAPI's TestClient; the page itself is
driven in a browser by tests/test_browser.py."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

pytest.importorskip("fastapi")
pytest.importorskip("httpx")

from fastapi.testclient import TestClient

from lmrec.models.base import FitOptions
from lmrec.runs import DataRecipe, train_run
from lmrec.serve import create_app
from tests.conftest import KeywordEncoder
from tests.test_serve import N_ITEMS, SASREC, genres, write_shop


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("page")
    shop = write_shop(root / "shop")
    rows = "".join(f"i{i},Title {i},{genres(i)},{1990 + i}\n" for i in range(N_ITEMS))
    (shop / "items.csv").write_text("item,title,genres,year\n" + rows)
    recipe = DataRecipe(dataset=str(shop))
    options = FitOptions(seed=0, text_encoder=KeywordEncoder("Low"))
    train_run(recipe, "ease", {}, root / "ease", root / "cache", options)
    text = {**SASREC, "item_repr": "text", "epochs": 20}
    train_run(recipe, "text-sasrec", text, root / "text", root / "cache", options)
    return {"ease": root / "ease", "text": root / "text", "cache": root / "cache"}


def client(runs: dict[str, Path], name: str, db: Path) -> TestClient:
    app = create_app(runs[name], db, runs["cache"], require_keys=False, text_encoder=KeywordEncoder("Low"))
    return TestClient(app)


def recommend(c: TestClient, **body: Any) -> list[dict[str, Any]]:
    r = c.post("/recommend", json=body)
    assert r.status_code == 200, r.text
    items: list[dict[str, Any]] = r.json()["items"]
    return items


def history(c: TestClient, user: str) -> list[str]:
    return [it["item"] for it in c.get(f"/users/{user}/history").json()["items"]]


def test_year_and_genres_always_reasons_when_asked(runs: dict[str, Path], tmp_path: Path) -> None:
    c = client(runs, "ease", tmp_path / "events.db")
    plain = recommend(c, user="u1", k=10)
    for it in plain:
        i = int(it["item"][1:])
        assert it["year"] == 1990 + i and it["genres"] == genres(i).split("|")
        assert it["because"] is None and it["cited"] is None
    explained = recommend(c, user="u1", k=10, explain=True)
    assert [it["item"] for it in explained] == [it["item"] for it in plain]  # explaining changes no ranking
    seen = set(history(c, "u1"))
    high = {f"i{i}" for i in range(10, 20)}  # u1 is odd: High items only
    for it in explained:
        assert set(it["cited"]) <= seen and it["item"] not in it["cited"] and len(it["cited"]) <= 2
        if it["cited"]:
            titles = " and ".join(f"Title {c[1:]}" for c in it["cited"])
            assert it["because"] == f"Because you liked {titles}."
        else:  # no user shares anything with the history: no reason is made up
            assert it["because"] == "Nothing in your history is like it: the model's score alone."
    # Co-occurrence ties the High items u1 is offered to u1's High items, and only those.
    cited_for_high = [it["cited"] for it in explained if it["item"] in high]
    assert cited_for_high and all(c and set(c) <= high for c in cited_for_high)
    assert all(not it["cited"] for it in explained if it["item"] not in high)


def test_cited_items_are_the_most_similar_of_the_history(runs: dict[str, Path], tmp_path: Path) -> None:
    """Against the run's own explainer similarity (co-occurrence in training for EASE), built apart."""
    c = client(runs, "ease", tmp_path / "events.db")
    run = c.app.state.service.live.run  # type: ignore[attr-defined]
    similarity = run.explainer().similarity
    items = run.dataset.items
    for user in ("u0", "u1", "u6"):
        seen = list(dict.fromkeys(history(c, user)))
        for it in recommend(c, user=user, k=10, explain=True):
            sims = similarity.pairwise(np.array([items.rows([it["item"], *seen])]))[0, 0, 1:]
            by_item = dict(zip(seen, sims.tolist(), strict=True))
            positive = sorted((s for s in by_item.values() if s > 0), reverse=True)
            assert [by_item[h] for h in it["cited"]] == positive[: len(it["cited"])]  # the best, best first
            assert len(it["cited"]) == min(2, len(positive))


def test_reasons_read_live_titles_and_fields(runs: dict[str, Path], tmp_path: Path) -> None:
    c = client(runs, "ease", tmp_path / "events.db")
    first = recommend(c, user="u1", k=1, explain=True)[0]
    cited = first["cited"][0]
    item = first["item"]
    # A title, year and genres set with PUT /items win over the catalog's.
    assert c.put("/items", json=[{"item": cited, "title": "Renamed"}]).status_code == 200
    assert c.put("/items", json=[{"item": item, "year": "2020", "genres": "Drama|War"}]).status_code == 200
    again = recommend(c, user="u1", k=1, explain=True)[0]
    assert again["cited"][0] == cited and again["because"].startswith("Because you liked Renamed")
    assert again["year"] == 2020 and again["genres"] == ["Drama", "War"]
    # A history of nothing the model can read has nothing to cite.
    assert c.put("/items", json=[{"item": "fresh", "title": "Fresh"}]).status_code == 200
    anonymous = recommend(c, history=["fresh"], k=3, explain=True)
    assert all(it["because"] == "No history to compare it with yet." and it["cited"] == [] for it in anonymous)
    # An ad-hoc history is cited like a user's.
    adhoc = recommend(c, history=["i11", "i13"], k=3, explain=True)
    assert adhoc[0]["cited"] and set(adhoc[0]["cited"]) <= {"i11", "i13"}


def test_text_model_explains_an_item_added_at_serve_time(runs: dict[str, Path], tmp_path: Path) -> None:
    c = client(runs, "text", tmp_path / "events.db")
    new = {"item": "new-low", "title": "Fresh", "genres": ["Low"], "year": 2024}
    assert c.put("/items", json=[new]).status_code == 200
    out = {it["item"]: it for it in recommend(c, user="u0", k=N_ITEMS, explain=True)}
    added = out["new-low"]
    assert added["year"] == 2024 and added["genres"] == ["Low"] and added["title"] == "Fresh"
    assert added["cited"] and set(added["cited"]) <= set(history(c, "u0"))
    assert added["because"].startswith("Because you liked Title ")


def test_page_files_and_config(runs: dict[str, Path], tmp_path: Path) -> None:
    c = client(runs, "ease", tmp_path / "events.db")
    page = c.get("/").text
    assert '<script src="/static/app.js"' in page and "<script>" not in page and " on" + "click=" not in page
    assert "style=" not in page  # styles come from page.css
    for name, media in (("app.js", "text/javascript"), ("page.css", "text/css"), ("favicon.svg", "image/svg+xml")):
        r = c.get(f"/static/{name}")
        assert r.status_code == 200 and r.headers["content-type"].startswith(media) and r.content
        assert f"/static/{name}" in page
    assert c.get("/static/index.html").status_code == 404  # only the listed files
    assert c.get("/static/..%2Fpage.py").status_code == 404
    assert c.get("/page/config").json() == {"keys": False}
    keyed = TestClient(create_app(runs["ease"], tmp_path / "keyed.db", runs["cache"], require_keys=True))
    assert keyed.get("/page/config").json() == {"keys": True}
    assert keyed.get("/static/app.js").status_code == 200  # public, like the page
    schema = c.get("/openapi.json").json()["components"]["schemas"]
    assert {"year", "genres", "because", "cited"} <= set(schema["ScoredItem"]["properties"])
    assert "explain" in schema["RecommendRequest"]["properties"]
