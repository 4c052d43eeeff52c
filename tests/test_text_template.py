"""Item text templates: rendering, the automatic choice, refusing a catalog of IDs, and where the
chosen template goes (the model's config, run.json, new items, the embedding cache)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from lmrec.data.loaders import load
from lmrec.data.schema import Dataset
from lmrec.data.splits import leave_one_out
from lmrec.models import FitOptions, load_model, model_class
from lmrec.text import (
    DEFAULT_TEMPLATE,
    EmbeddingCache,
    NoItemTextError,
    TemplateError,
    choose_template,
    encode_cached,
    item_names,
    item_texts,
)
from tests.conftest import KeywordEncoder

TINY = {"dim": 8, "inner": 16, "layers": 1, "heads": 1, "max_len": 8, "epochs": 1, "batch_size": 16}


def write_log(directory: Path, items: dict[str, list[str]], n_users: int = 12) -> Path:
    """``interactions.csv`` (user,item; file order is time) and ``items.csv`` with ``items``'s columns."""
    directory.mkdir(parents=True, exist_ok=True)
    ids = items["item"]
    rows = [f"u{u},{ids[(u + k) % len(ids)]}" for u in range(n_users) for k in range(5)]
    (directory / "interactions.csv").write_text("user,item\n" + "\n".join(rows) + "\n")
    frame = pd.DataFrame(items)
    frame.to_csv(directory / "items.csv", index=False)
    return directory


BEAUTY_LIKE = {
    "item": ["B000P24EI2", "B000GFCRGO", "B00027D8IC", "B0009P4PZC", "B000FOI48G", "B003ZS6ONA"],
    "keywords": [
        "rene furterer complexe 5",
        "sedu ionic ceramic tourmaline flat",
        "nail polish red",
        "",
        "shea butter hand cream",
        "matte lipstick",
    ],
}
GAMES_LIKE = {
    "item": ["0", "1", "2", "3", "4", "5"],
    "title": [
        "Fire Emblem: The Sacred Stones",
        "GBA 6-Pak Care Case - Game Boy Advance",
        "Metroid Fusion",
        "Advance Wars",
        "Golden Sun",
        "Wario Ware",
    ],
}


# -- rendering ------------------------------------------------------------------------------------


def test_missing_values_drop_with_their_separators_and_lists_are_joined() -> None:
    catalog = pd.DataFrame(
        {
            "item": ["a", "b", "c", "d"],
            "title": ["Lipstick", "Mascara", None, "d"],  # "d": an ID standing in for a title
            "brand": ["Acme", None, "Glow", None],
            "categories": [["Makeup", "Lips"], [], ["Eyes"], []],
        }
    )
    texts = item_texts(catalog, "{title} | {brand} | {categories}")
    assert texts == ["Lipstick | Acme | Makeup, Lips", "Mascara", "Glow | Eyes", ""]
    assert item_texts(catalog, "{title} by {brand}") == ["Lipstick by Acme", "Mascara", "Glow", ""]


def test_default_template_reads_title_year_genres_description() -> None:
    catalog = pd.DataFrame(
        {
            "item": ["1", "2"],
            "title": ["Toy Story", "Heat (1995)"],
            "year": [1995, 1995],
            "categories": [["Animation", "Comedy"], []],
            "description": ["Toys come alive.", ""],
        }
    )
    assert choose_template(catalog) == DEFAULT_TEMPLATE
    assert item_texts(catalog) == ["Toy Story (1995). Genres: Animation, Comedy. Toys come alive.", "Heat (1995)."]
    untitled = pd.DataFrame({"item": ["i9"], "title": ["i9"], "categories": [["Drama"]]})  # a new item, no title
    assert item_texts(untitled, DEFAULT_TEMPLATE) == ["Genres: Drama."]


def test_unknown_column_names_what_the_catalog_has() -> None:
    catalog = pd.DataFrame({"item": ["a"], "title": ["Dress"]})
    with pytest.raises(TemplateError, match=r"\['colour'\].*\['item', 'title'\]"):
        choose_template(catalog, "{title} in {colour}")


# -- the automatic choice, on both shared-log shapes, ml-100k's and a catalog of several columns ----


def test_keywords_catalog_reads_its_keywords_not_its_ids(tmp_path: Path) -> None:
    ds = load(write_log(tmp_path / "beauty", BEAUTY_LIKE))
    assert ds.titles([0]) == ["B000P24EI2"]  # what it shows: no title column, so the ID
    assert choose_template(ds) == "{keywords}"
    texts = item_texts(ds.catalog, choose_template(ds))
    rows = ds.items.rows(BEAUTY_LIKE["item"])
    assert [texts[r] for r in rows] == BEAUTY_LIKE["keywords"]  # the one without keywords gets "", never its ID
    assert item_names(ds)[int(rows[0])] == "rene furterer complexe 5"
    assert item_names(ds)[int(rows[3])] == "B0009P4PZC"  # no text: explanations name it by ID


def test_title_catalog_reads_its_titles(tmp_path: Path) -> None:
    ds = load(write_log(tmp_path / "games", GAMES_LIKE))
    assert choose_template(ds) == DEFAULT_TEMPLATE  # title, year, genres, description: here the title alone
    texts = item_texts(ds.catalog, choose_template(ds))
    assert [texts[r] for r in ds.items.rows(GAMES_LIKE["item"])] == [f"{t}." for t in GAMES_LIKE["title"]]


def test_movielens_catalog_reads_title_and_genres(tmp_path: Path) -> None:
    from lmrec.data.loaders import ML100K_GENRES

    (tmp_path / "u.data").write_text("".join(f"{u}\t{i}\t4\t{100 + u * 3 + i}\n" for u in (1, 2) for i in (1, 2, 3)))
    flags = ["0"] * len(ML100K_GENRES)
    animation, comedy, crime = (ML100K_GENRES.index(g) for g in ("Animation", "Comedy", "Crime"))
    toy = ["1" if j in (animation, comedy) else "0" for j in range(len(flags))]
    heat = ["1" if j == crime else "0" for j in range(len(flags))]
    lines = [
        ["1", "Toy Story (1995)", "01-Jan-1995", "", "http://x", *toy],
        ["2", "Heat (1995)", "01-Jan-1995", "", "http://x", *heat],
        ["3", "Lion King, The (1994)", "01-Jan-1994", "", "http://x", *flags],
    ]
    (tmp_path / "u.item").write_text("".join("|".join(r) + "\n" for r in lines), encoding="latin-1")
    ds = load(tmp_path)
    assert choose_template(ds) == DEFAULT_TEMPLATE
    assert item_texts(ds.catalog, choose_template(ds)) == [
        "Toy Story (1995). Genres: Animation, Comedy.",
        "Heat (1995). Genres: Crime.",
        "Lion King, The (1994).",
    ]


def test_several_text_columns_render_as_the_template_says(tmp_path: Path) -> None:
    items = {
        "item": ["p1", "p2", "p3"],
        "name": ["Shea Cream", "Rose Serum", "Clay Mask"],
        "brand": ["Acme", "", "Terra"],
        "categories": ["Skin|Hands", "Skin|Face", ""],
        "description": ["Rich.", "Light.", "Deep clean."],
    }
    ds = load(write_log(tmp_path / "shop", items))
    assert choose_template(ds) == DEFAULT_TEMPLATE  # `name` is the title column when loaded
    rows = ds.items.rows(items["item"])
    texts = item_texts(ds.catalog, "{title} | {brand} | {categories}")
    assert [texts[r] for r in rows] == [
        "Shea Cream | Acme | Skin, Hands",
        "Rose Serum | Skin, Face",
        "Clay Mask | Terra",
    ]
    texts = item_texts(ds.catalog, "{brand}: {description}")
    assert [texts[r] for r in rows] == ["Acme: Rich.", "Light.", "Terra: Deep clean."]
    # Built in Python, `name` stays `name`: the automatic choice falls back to it (with the categories).
    frame = pd.DataFrame({"item": ["x", "y"], "name": ["A", "B"], "categories": [["c"], []]})
    assert choose_template(frame) == "{name} | {categories}"


def test_dataset_template_applies_unless_the_model_sets_one(tmp_path: Path) -> None:
    from dataclasses import replace

    ds = load(write_log(tmp_path / "games", GAMES_LIKE))
    ds = replace(ds, meta={**ds.meta, "text_template": "Game: {title}"})
    assert choose_template(ds) == "Game: {title}"
    assert choose_template(ds, "{title}!") == "{title}!"


# -- refusing a catalog of IDs --------------------------------------------------------------------


def no_text(directory: Path) -> Dataset:
    items = {"item": BEAUTY_LIKE["item"], "price": ["1.5", "2", "3", "4", "5", "6"]}
    return load(write_log(directory, items))


def test_no_text_catalog_refuses_with_the_columns_and_how_to_name_them(tmp_path: Path) -> None:
    ds = no_text(tmp_path / "ids")
    with pytest.raises(NoItemTextError) as err:
        choose_template(ds)
    message = str(err.value)
    for part in ("title (only item IDs)", "categories (empty)", "price", "--text-template '{price}'", "sasrec"):
        assert part in message, (part, message)
    with pytest.raises(NoItemTextError, match="template '\\{title\\}' renders no text"):
        choose_template(ds, "{title}")


@pytest.mark.parametrize(
    ("name", "config"),
    [
        ("text-sasrec", {**TINY, "item_repr": "fused"}),
        ("text-sasrec", {**TINY, "item_repr": "text"}),
        ("sasrec", {**TINY, "item_init": "text"}),
        ("tiger", {"epochs": 1, "codebook": 4, "levels": 2}),
        ("lm-ranker", {"base": "pop", "steps": 0}),
        ("lm-list-ranker", {"base": "pop", "steps": 0}),
        ("llm-gen", {"steps": 0}),
    ],
)
def test_every_text_reading_model_refuses_a_catalog_of_ids(name: str, config: dict, tmp_path: Path) -> None:
    train = leave_one_out(no_text(tmp_path / "ids")).train_dataset()
    klass = model_class(name)
    model = klass(klass.config_class.from_dict(config))
    with pytest.raises(NoItemTextError, match="only item IDs"):
        model.fit(train, None, FitOptions(seed=0, text_encoder=KeywordEncoder(), cache_dir=tmp_path / "cache"))


def test_id_model_trains_on_a_catalog_of_ids(tmp_path: Path) -> None:
    train = leave_one_out(no_text(tmp_path / "ids")).train_dataset()
    klass = model_class("sasrec")
    model = klass(klass.config_class.from_dict(TINY)).fit(train, None, FitOptions(seed=0))
    assert model.n_items == train.n_items


# -- the chosen template is saved, recorded and used for new items --------------------------------


def test_chosen_template_is_saved_and_new_items_render_with_it(tmp_path: Path) -> None:
    train = leave_one_out(load(write_log(tmp_path / "beauty", BEAUTY_LIKE))).train_dataset()
    klass = model_class("text-sasrec")
    model = klass(klass.config_class.from_dict(TINY))
    encoder = KeywordEncoder("lipstick")
    model.fit(train, None, FitOptions(seed=0, text_encoder=encoder))
    assert model.config.text_template == "{keywords}"
    model.save(tmp_path / "m")
    loaded = load_model(tmp_path / "m")
    assert loaded.config.text_template == "{keywords}"  # type: ignore[attr-defined]
    # A new item arrives with a title too: it is still read by its keywords, as training read items.
    new = pd.DataFrame({"item": ["N1"], "title": ["N1"], "keywords": ["red lipstick"]})
    vectors = loaded.encode_items(new, encoder)  # type: ignore[attr-defined]
    assert np.allclose(vectors, encoder.encode(["red lipstick"]))
    titled = pd.DataFrame({"item": ["N2"], "title": ["Lip balm"], "keywords": [None]})  # given a title only
    assert item_texts(titled, loaded.config.text_template) == ["Lip balm"]  # type: ignore[attr-defined]


def test_run_json_records_the_template(tmp_path: Path) -> None:
    from lmrec.runs import DataRecipe, open_run, train_run

    data = write_log(tmp_path / "games", GAMES_LIKE)
    recipe = DataRecipe(dataset=str(data), text_template="{title} (game)")
    options = FitOptions(seed=0, text_encoder=KeywordEncoder())
    run = train_run(recipe, "text-sasrec", TINY, tmp_path / "run", tmp_path / "cache", options)
    meta = json.loads((tmp_path / "run" / "run.json").read_text())
    assert meta["text_template"] == "{title} (game)" and meta["data"]["text_template"] == "{title} (game)"
    assert run.model.config.text_template == "{title} (game)"  # type: ignore[attr-defined]
    assert open_run(tmp_path / "run", tmp_path / "cache").dataset.meta["text_template"] == "{title} (game)"


# -- the embedding cache keys on the rendered text ------------------------------------------------


def test_cache_key_changes_with_the_template(tmp_path: Path) -> None:
    catalog = pd.DataFrame({"item": ["a", "b"], "title": ["Lipstick", "Mascara"], "brand": ["Acme", "Glow"]})
    encoder = KeywordEncoder()
    first = item_texts(catalog, "{title}")
    second = item_texts(catalog, "{title} | {brand}")
    encode_cached(encoder, first, tmp_path)
    encode_cached(encoder, first, tmp_path)
    encode_cached(encoder, second, tmp_path)
    assert encoder.calls == [2, 2]  # the same template again reads the cache; another encodes again
    keys = EmbeddingCache(tmp_path, encoder.name, encoder.dim).keys
    assert keys == [EmbeddingCache.key(t) for t in first + second] and len(set(keys)) == 4
