"""Every registered model passes the same contract, trained the way users train it: ``train_run`` (what
``lmrec train`` calls) on a dataset file → ``open_run`` (what ``lmrec evaluate`` and ``lmrec serve`` read)
→ evaluate → ``Run.recommend`` → the service's answer. Adding a model means adding a fast config here;
an option that changes what a model is gets one too, keyed "model:variant". Models that declare
user-level DP (``private``) also train with ``--dp-epsilon``; the others refuse it."""

from __future__ import annotations

import traceback
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from lmrec.data.batch import QueryBatch
from lmrec.data.splits import leave_one_out
from lmrec.errors import ConfigError
from lmrec.evaluate import evaluate
from lmrec.models import MODELS, FitOptions, model_class
from lmrec.models.registry import load_model
from lmrec.runs import DataRecipe, Run, open_run, train_run
from tests.conftest import KeywordEncoder, checkerboard

# The small sequential encoder several fast configs share.
SEQUENTIAL = {"dim": 16, "inner": 32, "layers": 1, "max_len": 12, "epochs": 15, "batch_size": 16, "lr": 0.01}
# The small TIGER its two fast configs share.
TIGER = {
    "levels": 2,
    "codebook": 4,
    "dim": 32,
    "inner": 64,
    "layers": 1,
    "max_len": 12,
    "epochs": 30,
    "batch_size": 16,
    "lr": 0.005,
    "dropout": 0.0,
    "beams": 10,
}
# Small settings so the whole suite runs in seconds; defaults are for real data.
FAST: dict[str, dict[str, Any]] = {
    "pop": {},
    "itemknn": {"k": 20},
    "ease": {"reg": 10.0},
    "bpr": {"dim": 16, "epochs": 40, "batch_size": 64, "lr": 0.02},
    "als": {"dim": 16, "iterations": 8},
    "svd": {"dim": 16, "epochs": 40, "batch_size": 64, "lr": 0.02, "holdout": 0.0},
    "ncf": {"dim": 8, "mlp": (16, 8), "epochs": 30, "batch_size": 64, "lr": 0.01},
    "sasrec": SEQUENTIAL,
    # its ID rows start from the (whitened) item text and decay towards it; and late fusion
    "sasrec:text-init": {**SEQUENTIAL, "item_init": "text", "item_decay_to": "text"},
    "sasrec:late": {**SEQUENTIAL, "item_repr": "late"},
    "bert4rec": {**SEQUENTIAL, "epochs": 25},
    "text-sasrec": SEQUENTIAL,
    # next item + rating + like through MMoE; fitted on the checkerboard with a rating per interaction
    "mtl-sasrec": {
        **SEQUENTIAL,
        "experts": 2,
        "expert_inner": 16,
        "head_hidden": 16,
    },
    # fine-tunes the packaged MiniLM for 3 steps (needs lmrec[text])
    "lm-ranker": {
        "base": "itemknn",
        "base_config": {"k": 20},
        "candidates": 5,
        "steps": 3,
        "batch_size": 4,
        "max_length": 64,
    },
    "tiger": TIGER,
    # codes from the fitted sasrec's item rows, and that sasrec guiding the beam search
    "tiger:collab-hybrid": {**TIGER, "ids_from": "collab", "hybrid_weight": 1.0},
    # `lmrec compress`: the sasrec above, then an int8 ONNX encoder and int8 table (needs lmrec[compress])
    "compressed": {
        "method": "int8",
        "source": "sasrec",
        "source_config": SEQUENTIAL,
    },
    # a toy causal LM built on the spot (tests/llm_toy.py) writes item titles; needs lmrec[llm]
    "llm-gen": {"lora_r": 8, "steps": 200, "batch_size": 16, "lr": 0.003, "beams": 10, "max_history": 8},
    # the same LM writes semantic IDs, new tokens of its vocabulary, instead of titles (the new
    # embedding rows start untrained and need the larger step)
    "llm-gen:codes": {
        "lora_r": 8,
        "steps": 200,
        "batch_size": 16,
        "lr": 0.01,
        "beams": 10,
        "max_history": 8,
        "item_ids": "codes",
        "levels": 2,
        "codebook": 4,
    },
    # the list ranker reads a retriever's lettered candidates with a toy LM that knows the letters
    "lm-list-ranker": {
        "base": "itemknn",
        "base_config": {"k": 20},
        "candidates": 5,
        "history_items": 4,
        "steps": 3,
        "batch_size": 4,
        "lora_r": 4,
        "valid_users": 0,
    },
}
RATED = {"mtl-sasrec"}  # models that also learn ratings: their checkerboard has one (1-5, by item)
# What fails on the user's path today, each as a strict xfail with its reason (none at present).
KNOWN: dict[str, str] = {}


def registered(key: str) -> str:
    """The registry name of a FAST key ("llm-gen:codes" → "llm-gen")."""
    return key.split(":")[0]


def cases(names: Any = None) -> list[Any]:
    """FAST keys as parameters, the known failures marked strict xfail."""
    return [
        pytest.param(name, marks=pytest.mark.xfail(strict=True, raises=TypeError, reason=KNOWN[name]))
        if name in KNOWN
        else name
        for name in sorted(FAST if names is None else names)
    ]


def test_every_registered_model_has_a_fast_config() -> None:
    assert {registered(key) for key in FAST} == set(MODELS)


def write_board(directory: Path, rated: bool = False) -> Path:
    """The checkerboard (user u likes only items of u's parity) as the CSV files ``lmrec train`` reads;
    ``rated``: with a rating per interaction (1-5, by item)."""
    ds = checkerboard()
    directory.mkdir(parents=True)
    frame = ds.interactions
    users, items = ds.users.raw(frame["user"].to_numpy()), ds.items.raw(frame["item"].to_numpy())
    lines = ["user,item,timestamp" + (",rating" if rated else "")]
    for user, item, t in zip(users, items, frame["timestamp"], strict=True):
        lines.append(f"{user},{item},{t}" + (f",{1 + int(item[1:]) % 5}" if rated else ""))
    (directory / "interactions.csv").write_text("\n".join(lines) + "\n")
    catalog = [
        f"{raw},Item {raw[1:]},{'even' if int(raw[1:]) % 2 == 0 else 'odd'}"
        for raw in ds.items.raw(list(range(ds.n_items)))
    ]
    (directory / "items.csv").write_text("item,title,genres\n" + "\n".join(catalog) + "\n")
    return directory


def options(**kw: Any) -> FitOptions:
    return FitOptions(seed=1, text_encoder=KeywordEncoder(), **kw)  # text models read item text through it


@pytest.fixture(scope="module")
def where(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("conformance")
    return {
        "root": root,
        "cache": root / "cache",
        "board": write_board(root / "board"),
        "rated": write_board(root / "rated", rated=True),
    }


@pytest.fixture(scope="module")
def trained(where: dict[str, Path]) -> dict[str, Run | BaseException]:
    """Every FAST config trained by ``train_run`` and read back by ``open_run`` (or what it raised)."""
    from lmrec.models.lmranker import LABELS
    from tests.llm_toy import toy_lm_dir

    root = where["root"]
    train = leave_one_out(checkerboard()).train_dataset()
    titles = train.titles(list(range(train.n_items)))
    toy = toy_lm_dir(root / "toy-lm", titles)
    lettered = toy_lm_dir(root / "toy-list-lm", [*titles, *[f"{x} {x}." for x in LABELS]])
    out: dict[str, Run | BaseException] = {}
    for name, overrides in FAST.items():
        if registered(name) == "llm-gen":
            overrides = {**overrides, "lm": str(toy)}
        if name == "lm-list-ranker":
            overrides = {**overrides, "lm": str(lettered)}
        if name == "tiger:collab-hybrid":  # codes from the sasrec run's item rows, which guides the search
            sasrec = str(root / "runs" / "sasrec" / "model")
            overrides = {**overrides, "collab_run": sasrec, "hybrid_run": sasrec}
        recipe = DataRecipe(dataset=str(where["rated" if name in RATED else "board"]))
        directory = root / "runs" / name.replace(":", "-")
        try:
            train_run(recipe, registered(name), overrides, directory, where["cache"], options())
            out[name] = open_run(directory, where["cache"])
        except Exception as exc:  # kept, and raised again by each test of this model
            exc.add_note("".join(traceback.format_exception(exc)))
            out[name] = exc
    return out


def opened(trained: dict[str, Run | BaseException], name: str) -> Run:
    got = trained[name]
    if isinstance(got, BaseException):
        raise got
    return got


def _queries(run: Run) -> QueryBatch:
    return run.split.eval_set("test").queries


@pytest.mark.parametrize("name", cases())
def test_the_run_records_what_was_trained(name: str, trained: dict) -> None:
    run = opened(trained, name)
    assert run.meta["model"] == registered(name) and run.meta["seed"] == 1
    assert run.model.name == registered(name)
    assert (run.directory / "valid.json").is_file()  # train_run's validation report
    assert run.meta["split_sizes"]["test"] == len(run.split.eval_set("test")) > 0


@pytest.mark.parametrize("name", cases())
def test_score_shape_and_finite(name: str, trained: dict) -> None:
    run = opened(trained, name)
    q = _queries(run)
    scores = run.model.score(q)
    assert scores.shape == (len(q), run.dataset.n_items)
    assert torch.isfinite(scores).all()


@pytest.mark.parametrize("name", cases())
def test_vectors_protocol_agrees_with_score(name: str, trained: dict) -> None:
    """Where a model has vectors, query · item + offset is its score (rows marked exact); and
    every model scores given candidates as ``score`` does."""
    run = opened(trained, name)
    model = run.model
    q = QueryBatch.from_histories([0, -1, 5], [[0, 2], [1, 3, 5], []])
    scores = model.score(q).float()
    items = model.item_embeddings()
    if items is not None:
        queries = model.query_embeddings(q)
        assert items.shape[0] == run.dataset.n_items and queries.vectors.shape == (3, items.shape[1])
        dot = queries.vectors @ items.T + queries.offsets.unsqueeze(1)
        exact = queries.exact.numpy()
        assert exact[:2].all()  # histories to read: a dot product
        assert torch.allclose(dot[exact], scores[exact], atol=1e-4)
    candidates = np.array([[3, 0, -1], [7, 1, 2], [4, 4, 4]])
    got = model.score_candidates(q, candidates)
    want = torch.where(
        torch.from_numpy(candidates >= 0), scores.gather(1, torch.from_numpy(candidates.clip(0))), -torch.inf
    )
    assert torch.allclose(got, want, atol=1e-4)


@pytest.mark.parametrize("name", cases())
def test_recommend_excludes_seen(name: str, trained: dict) -> None:
    run = opened(trained, name)
    q = _queries(run)
    items, _ = run.model.recommend(q, k=10)
    for row in range(len(q)):
        assert not set(items[row]) & set(q.history(row).tolist())


@pytest.mark.parametrize("name", cases())
def test_save_load_identical_scores(name: str, trained: dict, tmp_path: Path) -> None:
    model = opened(trained, name).model  # already loaded once by open_run: a second round trip
    model.save(tmp_path / "model")
    loaded = load_model(tmp_path / "model")
    assert type(loaded) is type(model)
    q = _queries(opened(trained, name))
    assert torch.equal(model.score(q), loaded.score(q))
    assert loaded.config == model.config


@pytest.mark.parametrize("name", cases())
def test_unknown_user_and_items(name: str, trained: dict) -> None:
    run = opened(trained, name)
    n = run.dataset.n_items
    history = [0, 2, 4]  # even items: a new user who likes even items
    plain = run.model.score(QueryBatch.from_histories([-1], [history]))
    noisy = run.model.score(QueryBatch.from_histories([-1], [[-1, *history, n + 5]]))
    assert plain.shape == (1, n) and torch.isfinite(plain).all()
    assert torch.allclose(plain, noisy)  # unknown item rows are ignored
    beyond = run.model.score(QueryBatch.from_histories([10_000], [history]))  # user row past the table
    assert torch.isfinite(beyond).all()


@pytest.mark.parametrize("name", cases(set(FAST) - {"pop"}))
def test_beats_popularity_on_checkerboard(name: str, trained: dict) -> None:
    run, pop = opened(trained, name), opened(trained, "pop")
    ours = run.evaluate("test")["metrics"]["ndcg@10"]
    baseline = pop.evaluate("test")["metrics"]["ndcg@10"]
    assert ours > baseline * 1.2 and ours > 0.2, (ours, baseline)


@pytest.mark.parametrize("name", cases())
def test_evaluate_report(name: str, trained: dict) -> None:
    """What ``lmrec evaluate`` prints: ranking metrics of every test user, and rating error where rated."""
    run = opened(trained, name)
    report = run.evaluate("test")
    assert report["n_users"] == len(run.split.eval_set("test")) and report["model"] == registered(name)
    assert 0 <= report["metrics"]["ndcg@10"] <= 1
    assert ("rmse" in report["metrics"]) == (name in RATED)


@pytest.mark.parametrize("name", cases())
def test_recommend_for_a_known_and_a_new_user(name: str, trained: dict) -> None:
    run = opened(trained, name)
    known = run.recommend("u0", k=5)
    history = run.dataset.items.raw(run.history_of("u0"))
    assert known["known_user"] and len(known["items"]) == 5
    assert not {it["item"] for it in known["items"]} & set(history)
    assert all(it["title"] == "Item " + it["item"][1:] for it in known["items"])
    new = run.recommend("someone-new", history=["i0", "i2", "i4"], k=5)
    assert not new["known_user"] and len(new["items"]) == 5
    assert not {it["item"] for it in new["items"]} & {"i0", "i2", "i4"}


@pytest.mark.parametrize("name", cases())
def test_the_service_answers_as_the_run_recommends(
    name: str, trained: dict, where: dict[str, Path], tmp_path: Path
) -> None:
    pytest.importorskip("fastapi")
    pytest.importorskip("httpx")
    from fastapi.testclient import TestClient

    from lmrec.serve.app import create_app

    run = opened(trained, name)
    app = create_app(
        run.directory, tmp_path / "events.db", where["cache"], require_keys=False, text_encoder=KeywordEncoder()
    )
    with TestClient(app) as client:
        answer = client.post("/recommend", json={"user": "u1", "k": 5})
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert body["model"] == registered(name)
    assert [it["item"] for it in body["items"]] == [it["item"] for it in run.recommend("u1", k=5)["items"]]


# -- user-level DP: trained privately where the model declares it, refused where it does not --------
PRIVATE = sorted(name for name in MODELS if getattr(model_class(name), "private", False))
DP_EPOCHS = 2
# declares privacy, but its default item representation (text) has no private training: refused clearly
DP_REFUSED = {"text-sasrec": "text-sasrec with differential privacy needs item_repr=id"}


def test_some_models_declare_privacy() -> None:
    assert {"bpr", "sasrec"} <= set(PRIVATE) and "pop" not in PRIVATE
    assert "mtl-sasrec" not in PRIVATE  # no DP path over its mixer and heads: refused below, not ignored


@pytest.mark.parametrize("name", sorted(set(PRIVATE) - set(DP_REFUSED)))
def test_dp_epsilon_trains_privately(name: str, where: dict[str, Path], tmp_path: Path) -> None:
    pytest.importorskip("opacus")
    from lmrec.train.privacy import DPSpec

    config = {**FAST[name], "epochs": DP_EPOCHS}
    recipe = DataRecipe(dataset=str(where["rated" if name in RATED else "board"]))
    train_run(recipe, name, config, tmp_path / "run", where["cache"], options(dp=DPSpec(epsilon=8.0)))
    run = open_run(tmp_path / "run", where["cache"])
    privacy = run.meta["training"]["privacy"]  # what `lmrec evaluate` reports with every metric
    assert privacy["epsilon"] <= 8.0 + 1e-6 and privacy["epsilon_target"] == 8.0
    assert run.evaluate("test")["privacy"] == privacy


@pytest.mark.parametrize("name", sorted(set(MODELS) - set(PRIVATE) | set(DP_REFUSED)))
def test_dp_epsilon_refused_clearly(name: str, where: dict[str, Path], tmp_path: Path) -> None:
    from lmrec.train.privacy import DPSpec

    message = DP_REFUSED.get(name, f"{name} has no differentially private training")
    recipe = DataRecipe(dataset=str(where["board"]))
    with pytest.raises(ConfigError, match=message):
        train_run(recipe, name, {}, tmp_path / "run", where["cache"], options(dp=DPSpec(epsilon=8.0)))
    assert not (tmp_path / "run").exists()  # refused before anything was written


# -- training itself, through train_run ---------------------------------------------------------------
@pytest.mark.parametrize("name", ["bpr", "ncf"])
def test_same_seed_same_scores(name: str, where: dict[str, Path], tmp_path: Path) -> None:
    recipe = DataRecipe(dataset=str(where["board"]))
    config = {**FAST[name], "epochs": 3}
    for side in ("a", "b"):
        train_run(recipe, name, config, tmp_path / side, where["cache"], FitOptions(seed=7))
    a, b = (open_run(tmp_path / side, where["cache"]) for side in ("a", "b"))
    q = QueryBatch.from_histories([0, 1], [[0], [1]])
    assert torch.equal(a.model.score(q), b.model.score(q))


def test_early_stopping_restores_best(where: dict[str, Path], tmp_path: Path) -> None:
    recipe = DataRecipe(dataset=str(where["board"]))
    config = {**FAST["bpr"], "epochs": 30, "patience": 2}
    run = train_run(recipe, "bpr", config, tmp_path / "run", where["cache"], FitOptions(seed=0))
    log = run.meta["training"]
    assert len(log["valid"]) == log["epochs"]
    best = int(np.argmax(log["valid"]))
    assert log["best_epoch"] == best
    reopened = open_run(tmp_path / "run", where["cache"])  # the saved weights are the best epoch's
    final = evaluate(reopened.model, reopened.split.eval_set("valid"), metrics=("ndcg",)).metrics["ndcg@10"]
    assert final == pytest.approx(max(log["valid"]))
