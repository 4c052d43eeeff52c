"""Request and response bodies of the service (pydantic models) and the validators they share.

Every ID follows one rule (:func:`lmrec.serve.store.id_problem`), every text one rule
(:func:`lmrec.serve.store.text_problem`); request bodies are strict (``"10"`` is not a k) and refuse
unknown fields. :func:`recommend_json` writes the hot path's answer without a second validation.
"""

from __future__ import annotations

import json
from typing import Annotated, Any, Literal

from lmrec.errors import MissingExtraError

try:
    from fastapi import Path as PathParam
    from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field, model_validator
    from pydantic_core import PydanticCustomError
except ImportError as exc:  # pragma: no cover - exercised by a test that hides fastapi
    raise MissingExtraError("fastapi", "serve") from exc

from lmrec.serve.records import (
    MAX_ID,
    MAX_TIMESTAMP,
    MAX_YEAR,
    MIN_YEAR,
    brief,
    id_problem,
    item_field_problem,
    text_problem,
)

MAX_BATCH = 1000


# -- request and response bodies --------------------------------------------------------------------
def _raw_id(value: Any) -> Any:
    """IDs are strings; a JSON integer is accepted and read as its decimal string."""
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    return value


def valid_id(value: str) -> str:
    problem = id_problem(value)
    if problem:
        raise PydanticCustomError("invalid_id", "an ID {problem}", {"problem": problem})
    return value


def _valid_name(value: str) -> str:
    problem = id_problem(value, 32)
    if problem:
        raise PydanticCustomError("invalid_name", "a name {problem}", {"problem": problem})
    return value


def _valid_text(value: str) -> str:
    problem = text_problem(value)
    if problem:
        raise PydanticCustomError("invalid_text", "a text {problem}", {"problem": problem})
    return value


_ID_RULE = f"1 to {MAX_ID} printable characters, no '/', not '.' or '..'"
RawId = Annotated[
    str,
    BeforeValidator(_raw_id),
    Field(min_length=1, max_length=MAX_ID, description=_ID_RULE),
    AfterValidator(valid_id),
]
# An ID in a URL path: the same rule (a longer path is refused before anything reads or echoes it).
PathId = Annotated[str, PathParam(min_length=1, max_length=MAX_ID, description=_ID_RULE), AfterValidator(valid_id)]
Text = Annotated[str, AfterValidator(_valid_text)]


class _Strict(BaseModel):
    # Strict: "10" is not a k, "true" is not a bool; extra fields are a typo, not silence.
    model_config = ConfigDict(extra="forbid", strict=True)


class RerankRequest(_Strict):
    """Re-rank the model's top ``candidates`` for diversity (MMR, DPP), calibration to the history or
    exposure of long-tail items (fair)."""

    method: Literal["mmr", "dpp", "calibration", "fair"]
    lam: float = Field(
        ge=0.0,
        le=1.0,
        allow_inf_nan=False,
        description="the trade-off: MMR's λ (1 = the model's order), DPP's θ (must be < 1), calibration's λ, "
        "fair's p, the target share of long-tail items (0 = the model's order)",
    )
    similarity: Literal["genre", "embedding", "cooccurrence"] = Field(
        "genre", description="how MMR and DPP compare items (calibration always uses genres; fair ignores it)"
    )
    candidates: int = Field(100, ge=1, le=1000, description="how many of the model's top items to re-rank")

    @model_validator(mode="after")
    def _dpp_theta_below_one(self) -> RerankRequest:
        if self.method == "dpp" and self.lam >= 1.0:
            raise ValueError("DPP needs lam < 1 (θ = 1 would ignore relevance entirely)")
        return self


class RecommendRequest(_Strict):
    user: RawId | None = Field(None, description="a user ID; known to the run, or new with feedback")
    history: list[RawId] | None = Field(
        None, max_length=MAX_BATCH, description="item IDs just consumed (an anonymous session, or extra context)"
    )
    k: int = Field(10, ge=1, le=100, description="how many items")
    exclude_seen: bool = Field(True, description="leave out items already in the history")
    rerank: RerankRequest | None = Field(None, description="re-rank the top candidates; default: the model's order")
    explain: bool = Field(False, description="a reason per item citing the user's history (item similarity, no LLM)")


class ScoredItem(BaseModel):
    item: str
    score: float
    title: str
    year: int | None = None
    genres: list[str] = Field(default_factory=list)
    because: str | None = Field(None, description="with explain: why, naming only items of the user's history")
    cited: list[str] | None = Field(None, description="with explain: the history item IDs the reason rests on")


class RerankInfo(BaseModel):
    method: str
    lam: float
    similarity: str | None = Field(description="None for calibration, which compares genre distributions")
    candidates: int
    reranker: str = Field(description="the re-ranker that ran, as its repr")


class RecommendResponse(BaseModel):
    user: str | None
    items: list[ScoredItem]
    model: str
    version: str
    rerank: RerankInfo | None = Field(None, description="the re-ranking applied, or null for the model's order")


class FeedbackEvent(_Strict):
    user: RawId
    item: RawId
    type: Annotated[str, AfterValidator(_valid_name)] = Field(
        "click", min_length=1, max_length=32, description="click, view, purchase, rating, ..."
    )
    timestamp: float | None = Field(
        None,
        ge=0,
        le=MAX_TIMESTAMP,
        allow_inf_nan=False,
        description="seconds since the epoch (up to the end of year 9999); default: when it arrives",
    )


class FeedbackResponse(BaseModel):
    accepted: int


def _year_in(value: Any) -> Any:
    """A year is a JSON integer (or its decimal digits as a string); not a boolean, not a fraction."""
    if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
        raise PydanticCustomError("invalid_year", "a year must be an integer")
    if isinstance(value, str) and not (value.strip().isdigit() and len(value.strip()) <= 4):
        raise PydanticCustomError("invalid_year", "a year must be an integer (digits only)")
    return value


Year = Annotated[int, BeforeValidator(_year_in), Field(ge=MIN_YEAR, le=MAX_YEAR)]
Names = Annotated[
    list[Text] | Text, Field(description="a list of names, or one string with '|' between them (\"Drama|War\")")
]


class ItemIn(BaseModel):
    """An item: its ID, an optional title, genres or categories, a year, and any other text fields
    (``description``, ...). Every field has one type; anything else is refused here, naming the field."""

    model_config = ConfigDict(extra="allow")
    item: RawId
    title: Text | None = Field(None, max_length=1000)
    genres: Names | None = None
    categories: Names | None = None
    year: Year | None = Field(None, description=f"an integer from {MIN_YEAR} to {MAX_YEAR}")

    @model_validator(mode="after")
    def _text_fields(self) -> ItemIn:
        for name, value in (self.model_extra or {}).items():
            problem = text_problem(name) or item_field_problem(name, value)
            if problem:
                context = {"name": brief(name, 40), "problem": problem}
                raise PydanticCustomError("invalid_field", "field {name} {problem}", context)
        return self

    def fields(self) -> dict[str, Any]:
        """What is stored besides the ID and title: the declared fields that were sent, then the rest."""
        declared = {name: getattr(self, name) for name in ("genres", "categories", "year")}
        return {**{k: v for k, v in declared.items() if v is not None}, **(self.model_extra or {})}


class ItemOut(BaseModel):
    item: str
    title: str
    fields: dict[str, Any]
    recommendable: bool = Field(description="false for items the current model cannot score yet")


class UpsertResponse(BaseModel):
    upserted: int


class UserList(BaseModel):
    users: list[str]
    total: int = Field(description="users in the run's dataset (users known only from feedback not counted)")


class HistoryEntry(BaseModel):
    item: str
    title: str
    source: Literal["dataset", "feedback"]
    type: str | None = None
    timestamp: float | None = None


class HistoryResponse(BaseModel):
    user: str
    known_user: bool
    length: int
    items: list[HistoryEntry] = Field(description="the most recent ``limit`` entries, oldest first")


class ReloadRequest(_Strict):
    run: Text | None = Field(None, max_length=4096, description="a run directory; default: the one being served")


class ServingInfo(BaseModel):
    model: str
    version: str
    run: str


class KeyRequest(_Strict):
    scopes: list[Literal["read", "write", "admin"]] = Field(min_length=1)


class KeyCreated(BaseModel):
    key_id: str
    key: str = Field(description="the plaintext key; it is not stored and cannot be shown again")
    scopes: list[str]


class KeyInfo(BaseModel):
    key_id: str
    scopes: list[str]
    created: float
    revoked: float | None


class Health(BaseModel):
    status: str
    model: str
    version: str
    run: str
    users: int
    items: int
    lmrec_version: str
    index: str = Field(description="how top-k is found: exact, or an ANN index (hnsw, ivf)")
    rerankers: list[str] = Field(description="re-ranking methods this run supports")
    similarities: list[str] = Field(description="item similarities this run supports for MMR and DPP")


def recommend_json(answer: dict[str, Any]) -> bytes:
    """A ``RecommendResponse`` as JSON bytes, every field present (as pydantic would write it)."""
    items = [
        {
            "item": it["item"],
            "score": it["score"],
            "title": it["title"],
            "year": it.get("year"),
            "genres": it.get("genres", []),
            "because": it.get("because"),
            "cited": it.get("cited"),
        }
        for it in answer["items"]
    ]
    body = {
        "user": answer["user"],
        "items": items,
        "model": answer["model"],
        "version": answer["version"],
        "rerank": answer.get("rerank"),
    }
    return json.dumps(body, allow_nan=False, separators=(",", ":"), default=_json_scalar).encode("ascii")


def _json_scalar(value: Any) -> Any:
    if hasattr(value, "item"):  # a numpy scalar that slipped through: its Python value
        return value.item()
    raise TypeError(f"{type(value).__name__} is not JSON")
