"""Property-based fuzzing of the service from its own OpenAPI spec: no request is a 5xx.

schemathesis generates requests for every operation in ``/openapi.json`` (valid ones, and ones
that break the schema) and sends them to the ASGI app in-process: no socket, no network. The app
requires keys and the requests carry an admin key with every scope, so the fuzzer reaches the
endpoints' code rather than the 401 in front of it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("fastapi")
pytest.importorskip("schemathesis")

import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error

from lmrec.models.base import FitOptions
from lmrec.runs import DataRecipe, train_run
from lmrec.serve import create_app
from tests.test_serve import SASREC, write_shop

EXAMPLES = 15  # per operation and generation mode: the whole file runs in well under 30 s


@pytest.fixture(scope="module")
def service(tmp_path_factory: pytest.TempPathFactory) -> tuple[Any, str]:
    root = tmp_path_factory.mktemp("fuzz")
    # SASRec: its history is a sequence and it has item embeddings, so every re-ranker and
    # similarity is reachable.
    recipe = DataRecipe(dataset=str(write_shop(root / "shop")))
    train_run(recipe, "sasrec", {**SASREC, "epochs": 1}, root / "run", root / "cache", FitOptions(seed=0))
    app = create_app(root / "run", root / "events.db", root / "cache", require_keys=True)
    _, key = app.state.service.store.create_key(["read", "write", "admin"])
    return app, key


def without_lifespan(app: Any) -> Any:
    """The app for HTTP, with a lifespan that does nothing: schemathesis may end an app's lifespan
    between tests, and this app's shutdown closes its store, which the later tests still need."""

    async def wrapped(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "lifespan":
            await app(scope, receive, send)
            return
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return

    return wrapped


@pytest.fixture(scope="module")
def api_schema(service: tuple[Any, str]) -> Any:
    app, _ = service
    return schemathesis.openapi.from_asgi("/openapi.json", without_lifespan(app))


# Every operation in the spec; test_the_spec_lists_these_operations keeps this list honest.
OPERATIONS = [
    ("POST", "/recommend"),
    ("POST", "/feedback"),
    ("PUT", "/items"),
    ("GET", "/items/{item}"),
    ("GET", "/users"),
    ("GET", "/users/{user}/history"),
    ("POST", "/admin/reload"),
    ("POST", "/admin/keys"),
    ("GET", "/admin/keys"),
    ("DELETE", "/admin/keys/{key_id}"),
    ("GET", "/health"),
    ("GET", "/metrics"),
]


def test_the_spec_lists_these_operations(api_schema: Any) -> None:
    found = {(op.method.upper(), op.path) for op in (result.ok() for result in api_schema.get_all_operations())}
    assert found == set(OPERATIONS)


# Operations with a body or a query to break; a bare path string or no input has no invalid form.
BREAKABLE = {
    ("POST", "/recommend"),
    ("POST", "/feedback"),
    ("PUT", "/items"),
    ("GET", "/users"),
    ("GET", "/users/{user}/history"),
    ("POST", "/admin/reload"),
    ("POST", "/admin/keys"),
}
CASES = [(*op, GenerationMode.POSITIVE) for op in OPERATIONS] + [
    (*op, GenerationMode.NEGATIVE) for op in OPERATIONS if op in BREAKABLE
]


@pytest.mark.parametrize(("method", "path", "mode"), CASES, ids=[f"{m} {p} {g.value}" for m, p, g in CASES])
def test_no_request_is_a_server_error(
    api_schema: Any, service: tuple[Any, str], method: str, path: str, mode: GenerationMode
) -> None:
    _, key = service
    operation = api_schema[path][method]
    fixed = {"key_id": "not-our-key"} if path == "/admin/keys/{key_id}" else None  # never revoke our own key

    @given(case=operation.as_strategy(generation_mode=mode, path_parameters=fixed))
    @settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck))
    def check(case: Any) -> None:
        case.call_and_validate(headers={"Authorization": f"Bearer {key}"}, checks=[not_a_server_error])

    check()


# -- the happy path, deeper ------------------------------------------------------------------------------
# Generated IDs almost never name a user or item of the run, so the spec-driven fuzzing above mostly
# meets 404 and 422. Here requests are built from the run's own IDs (plus a few it does not know),
# so recommendations, re-ranking and the feedback loop run on every example.
USERS = st.sampled_from([f"u{i}" for i in range(30)] + ["newcomer", "ghost"])
ITEMS = st.sampled_from([f"i{i}" for i in range(20)] + ["added", "i999"])
RERANK = st.one_of(
    st.none(),
    st.fixed_dictionaries(
        {
            "method": st.sampled_from(["mmr", "dpp", "calibration"]),
            "lam": st.floats(0.0, 1.0),
        },
        optional={
            "similarity": st.sampled_from(["genre", "embedding", "cooccurrence"]),
            "candidates": st.integers(1, 1000),
        },
    ),
)
RECOMMEND = st.fixed_dictionaries(
    {},
    optional={
        "user": USERS,
        "history": st.lists(ITEMS, max_size=30),
        "k": st.integers(1, 100),
        "exclude_seen": st.booleans(),
        "rerank": RERANK,
    },
)
FEEDBACK = st.fixed_dictionaries(
    {"user": USERS, "item": ITEMS},
    optional={"type": st.sampled_from(["click", "view"]), "timestamp": st.floats(0, 2e9)},
)
ACTIONS = st.lists(
    st.one_of(st.tuples(st.just("recommend"), RECOMMEND), st.tuples(st.just("feedback"), FEEDBACK)),
    min_size=1,
    max_size=8,
)


def test_known_ids_never_a_server_error(service: tuple[Any, str]) -> None:
    from fastapi.testclient import TestClient

    app, key = service
    client = TestClient(app)  # no ``with``: leave the lifespan (and the store) alone
    headers = {"Authorization": f"Bearer {key}"}
    assert (
        client.put("/items", json=[{"item": "added", "title": "Added at serve time"}], headers=headers).status_code
        == 200
    )
    statuses: dict[str, set[int]] = {"recommend": set(), "feedback": set()}

    @given(actions=ACTIONS)
    @settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck))
    def check(actions: list[tuple[str, dict[str, Any]]]) -> None:
        for kind, body in actions:
            r = client.post(f"/{kind}", json=body, headers=headers)
            assert r.status_code < 500, (kind, body, r.text)
            statuses[kind].add(r.status_code)
            if kind == "recommend" and r.status_code == 200:
                out = r.json()
                k = body.get("k", 10)
                assert len(out["items"]) <= k and len({it["item"] for it in out["items"]}) == len(out["items"])
                assert (out["rerank"] is None) == (body.get("rerank") is None)

    check()
    assert 200 in statuses["recommend"] and 202 in statuses["feedback"]  # the happy path did run


def test_the_app_still_answers_after_fuzzing(service: tuple[Any, str], api_schema: Any) -> None:
    """The store and the state survive whatever the fuzzer sent (no closed connection, no stuck lock)."""
    from fastapi.testclient import TestClient

    app, key = service
    client = TestClient(app)  # no ``with``: do not run the lifespan (which closes the store)
    r = client.post("/recommend", json={"user": "u0", "k": 3}, headers={"Authorization": f"Bearer {key}"})
    assert r.status_code == 200 and len(r.json()["items"]) == 3
    assert Path(r.json()["version"]).name  # a version string, not empty
