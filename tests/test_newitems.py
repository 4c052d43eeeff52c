"""Items known only by their text, added to a run for one request (``lmrec recommend --new-item``)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from lmrec.cli import main
from lmrec.errors import LmrecError
from lmrec.models.base import FitOptions
from lmrec.newitems import NewItem, parse_new_item, with_text_items
from lmrec.runs import DataRecipe, open_run, train_run
from tests.conftest import KeywordEncoder
from tests.test_serve import N_ITEMS, SASREC, genres, write_shop


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The service tests' shop (even users buy Low items i0..i9, odd ones High i10..i19): a
    text-SASRec reading items from text only (a fake encoder that sees "Low"), and an EASE."""
    root = tmp_path_factory.mktemp("newitems")
    directory = write_shop(root / "shop")
    rows = "".join(f"i{i},Title {i},{genres(i)}\n" for i in range(N_ITEMS))
    (directory / "items.csv").write_text("item,title,genres\n" + rows)
    recipe, cache = DataRecipe(dataset=str(directory)), root / "cache"
    options = FitOptions(seed=0, text_encoder=KeywordEncoder("Low"))
    train_run(recipe, "text-sasrec", {**SASREC, "item_repr": "text", "epochs": 20}, root / "text", cache, options)
    train_run(recipe, "ease", {}, root / "ease", cache, FitOptions(seed=0))
    return {"text": root / "text", "ease": root / "ease", "cache": cache}


def test_parse_new_item() -> None:
    assert parse_new_item(" Fresh | Low, Even ,", 2) == NewItem("new-2", "Fresh", ["Low", "Even"])
    assert parse_new_item("Only a title", 1) == NewItem("new-1", "Only a title", [])
    with pytest.raises(LmrecError, match="non-empty title"):
        parse_new_item("|Low", 1)


def test_a_text_model_ranks_a_new_item_by_its_text(runs: dict[str, Path]) -> None:
    run = open_run(runs["text"], runs["cache"])
    items = [NewItem("new-1", "Fresh arrival", ["Low"]), NewItem("new-2", "Other arrival", ["High"])]
    grown = with_text_items(run, items, encoder=KeywordEncoder("Low"))
    assert grown.dataset.n_items == N_ITEMS + 2 and grown.model.n_items == N_ITEMS + 2
    assert run.dataset.n_items == N_ITEMS and run.model.n_items == N_ITEMS  # the run itself is untouched
    assert grown.dataset.titles([N_ITEMS, N_ITEMS + 1]) == ["Fresh arrival", "Other arrival"]
    ranked = [it["item"] for it in grown.recommend("u0", k=N_ITEMS + 2)["items"]]  # u0 buys Low items
    assert ranked.index("new-1") < ranked.index("new-2")
    assert "new-1" in ranked[:10]
    # A new item can be history too: a Low item just consumed.
    assert grown.recommend("visitor", ["new-1"], k=3)["history_length"] == 1


def test_an_id_model_cannot_score_a_new_item(runs: dict[str, Path]) -> None:
    run = open_run(runs["ease"], runs["cache"])
    with pytest.raises(LmrecError, match="cannot score an item from its text"):
        with_text_items(run, [NewItem("new-1", "Fresh", [])], encoder=KeywordEncoder("Low"))


def test_recommend_new_item_on_the_command_line(
    runs: dict[str, Path], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import lmrec.text

    monkeypatch.setattr(lmrec.text, "load_encoder", lambda spec, device="cpu": KeywordEncoder("Low"))
    args = ["--cache-dir", str(runs["cache"]), "recommend", "--run", str(runs["text"]), "--user", "u0"]
    capsys.readouterr()
    assert main([*args, "--new-item", "Fresh arrival|Low", "--explain", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    (new,) = out["new_items"]
    assert new["item"] == "new-1" and new["title"] == "Fresh arrival" and 1 <= new["rank"] <= N_ITEMS + 1
    listed = [it["item"] for it in out["items"]]
    assert (new["item"] in listed) == (new["rank"] <= 10)
    assert all(it["because"] for it in out["items"])
    assert main([*args, "--new-item", "Fresh arrival|Low"]) == 0
    assert f"new item new-1 'Fresh arrival', known by its text only: rank {new['rank']} of" in capsys.readouterr().out
    ease = ["--cache-dir", str(runs["cache"]), "recommend", "--run", str(runs["ease"]), "--user", "u0"]
    assert main([*ease, "--new-item", "X"]) == 2
