"""Grounded explanations: titles spoken as in a sentence, the template, the grounding check, and
the sentence frame whose title slots a local LM can only fill by copying a history title."""

from __future__ import annotations

import re
import string
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
import torch

from lmrec.llm.explain import Explainer
from lmrec.llm.lm import Generation, LocalLM
from lmrec.rerank.similarity import EmbeddingSimilarity
from lmrec.text.templates import spoken_title


@pytest.mark.parametrize(
    ("title", "spoken"),
    [
        ("Lion King, The (1994)", "The Lion King"),
        ("Lion King, The", "The Lion King"),
        ("Fish Called Wanda, A (1988)", "A Fish Called Wanda"),
        ("Affair to Remember, An (1957)", "An Affair to Remember"),
        ("Amour, L'", "L'Amour"),
        ("Cité des enfants perdus, La (1995)", "La Cité des enfants perdus"),
        ("Misérables, Les (1995)", "Les Misérables"),
        ("Postino, Il (1994)", "Il Postino"),
        ("Boot, Das (1981)", "Das Boot"),
        ("Himmel über Berlin, Der (1987)", "Der Himmel über Berlin"),
        ("Blechtrommel, Die (1979)", "Die Blechtrommel"),
        ("Mariachi, El (1992)", "El Mariachi"),
        ("Jour se lève, Le (1939)", "Le Jour se lève"),
        ("Big Blue, The (Grand bleu, Le) (1988)", "The Big Blue (Le Grand bleu)"),
        (
            "Englishman Who Went Up a Hill, But Came Down a Mountain, The (1995)",
            "The Englishman Who Went Up a Hill, But Came Down a Mountain",
        ),
        ("Seven (Se7en) (1995)", "Seven (Se7en)"),
        ("Toy Story (1995)", "Toy Story"),
        ("Die Hard 2 (1990)", "Die Hard 2"),  # a leading "Die" is a word, not a moved article
        ("Hello, Dolly!", "Hello, Dolly!"),  # a comma that moves nothing
        ("Things, Theory of", "Things, Theory of"),  # "The" only as a whole word
        ("  Heat   (1995) ", "Heat"),
        ("(1995)", "(1995)"),  # nothing but a year: kept
    ],
)
def test_spoken_titles(title: str, spoken: str) -> None:
    assert spoken_title(title) == spoken


def test_spoken_title_without_its_article() -> None:
    assert spoken_title("Lion King, The (1994)", article=False) == "Lion King"
    assert spoken_title("Toy Story (1995)", article=False) == "Toy Story"


# -- the template and the check, with any chat model ---------------------------------------------
class Scripted:
    """A ChatLM that always says the same thing."""

    name = "scripted"

    def __init__(self, text: str) -> None:
        self.text = text

    def chat(self, messages: list[dict[str, str]], max_new_tokens: int = 64, temperature: float = 0.0) -> Generation:
        return Generation(self.text, len(self.text.split()), 0.0)


TITLES = [
    "Alien (1979)",
    "Aliens (1986)",
    "Toy Story (1995)",
    "Die Hard (1988)",
    "Die Hard 2 (1990)",
    "Lion King, The",
    "Quest, The (1996)",
]
VECTORS = EmbeddingSimilarity(np.array([[1, 0], [0.9, 0.1], [0, 1], [0.7, 0.3], [0.8, 0.2], [0.75, 0.25], [0.1, 1]]))
HISTORY = np.array([0, 2, 4])


def explain(reply: str | None, history: np.ndarray = HISTORY, item: int = 1) -> Any:
    return Explainer(TITLES, VECTORS, None if reply is None else Scripted(reply), cite=2).explain(history, item)


def test_a_sentence_citing_the_evidence_passes() -> None:
    out = explain("You enjoyed Alien and Die Hard 2, so try this.")
    assert out.generated and out.cited == [0, 4]  # the most similar history items
    assert out.text == out.draft == "You enjoyed Alien and Die Hard 2, so try this."


def test_the_template_speaks_titles() -> None:
    plain = explain(None)
    assert not plain.generated and plain.cited == [0, 4] and plain.text == "Because you liked Alien and Die Hard 2."
    lion = explain(None, history=np.array([5, 2]))
    assert lion.text.startswith("Because you liked The Lion King")  # not "Lion King, The"


@pytest.mark.parametrize(
    "reply",
    [
        "Fans of Die Hard love it.",  # a catalog title outside the history: invented
        "Fans of the Lion King love Alien.",  # the same, spoken without its article
        "The user liked these items:",  # cites nothing: no reason given
        "",
    ],
)
def test_a_sentence_that_fails_the_check_falls_back_to_the_template(reply: str) -> None:
    out = explain(reply)
    assert not out.generated and out.text == "Because you liked Alien and Die Hard 2." and out.cited == [0, 4]
    assert out.draft == reply


def test_the_check_reads_titles_in_every_form() -> None:
    explainer = Explainer(TITLES, VECTORS)
    assert explainer.mentioned("a lion king of a film") == {5}
    assert explainer.mentioned("Die Hard 2 (1990) and Aliens") == {1, 3, 4}  # "Die Hard" is inside "Die Hard 2"
    assert explainer.grounded("Like The Lion King and Aliens.", [5], item=1)
    assert explainer.mentioned("a quest for Alien") == {0}  # one word left by a moved article is no title
    assert explainer.mentioned("The Quest") == {6}
    assert not explainer.grounded("Like The Lion King and Die Hard.", [5], item=1)


def test_no_history_no_citation() -> None:
    out = explain("anything", history=np.array([1]))
    assert out.cited == [] and not out.generated and out.text == "Aliens is popular with other users."


# -- the frame, with a local LM -------------------------------------------------------------------
N_FILMS = 10
FILMS = [f"Film {i}" for i in range(N_FILMS)]
WORDS = [
    *FILMS,
    *string.ascii_lowercase,
    '"',
    ",",
    ".",
    "and",
    "Because",
    "you",
    "liked",
    "may",
    "also",
    "like",
    "which",
]


@pytest.fixture(scope="module")
def toy(tmp_path_factory: pytest.TempPathFactory) -> LocalLM:
    pytest.importorskip("transformers")
    from lmrec.llm.lm import load_lm
    from tests.llm_toy import toy_lm_dir

    return load_lm(str(toy_lm_dir(tmp_path_factory.mktemp("toy-explain"), WORDS)))


class Biased(torch.nn.Module):
    """The toy LM with a large bonus on some tokens: a model that "wants" to write them."""

    def __init__(self, inner: Any, bonus: torch.Tensor) -> None:
        super().__init__()
        self.inner, self.bonus = inner, bonus

    def forward(self, **kwargs: Any) -> Any:
        out = self.inner(**kwargs)
        return SimpleNamespace(logits=out.logits + self.bonus, past_key_values=out.past_key_values)


def biased(toy: LocalLM, words: dict[str, float]) -> LocalLM:
    bonus = torch.zeros(toy.model.config.vocab_size)
    for word, value in words.items():
        bonus[toy.tokenizer.convert_tokens_to_ids(word)] = value
    return LocalLM(Biased(toy.model, bonus), toy.tokenizer, "biased")


def similar_in_order(n: int) -> EmbeddingSimilarity:
    """Item i's similarity to item 0 falls with i: the history is cited in row order."""
    angles = np.linspace(0, 1.2, n)
    return EmbeddingSimilarity(np.stack([np.cos(angles), np.sin(angles)], axis=1))


def quoted(text: str) -> list[str]:
    return re.findall(r'"([^"]*)"', text)


def test_the_title_slots_copy_history_titles_exactly(toy: LocalLM) -> None:
    explainer = Explainer(FILMS, similar_in_order(N_FILMS), toy, cite=2, choices=4)
    history = np.array([3, 5, 7, 8, 9])
    for item in (0, 1, 2):
        out = explainer.explain(history, item)
        titles = quoted(out.draft)
        assert out.draft.startswith('Because you liked "') and out.tokens > 0
        assert titles[-1] == FILMS[item]  # "... you may also like "<item>", which ..."
        cited = titles[:-1]
        assert 1 <= len(cited) <= 2 and len(set(cited)) == len(cited)
        assert set(cited) <= {FILMS[h] for h in explainer.evidence(history, item, 4)}  # copied, from the candidates
        if out.generated:
            assert [FILMS[c] for c in out.cited] == cited and out.text == out.draft
        else:
            assert out.text == explainer.template(explainer.evidence(history, item))


def test_a_model_that_wants_another_title_cannot_write_it(toy: LocalLM) -> None:
    """The model wants "9" (as in "Film 9", not in the history) above all: the slots still copy
    history titles, and the free reason words hold no title, so the sentence passes."""
    lm = biased(toy, {"9": 30.0})
    explainer = Explainer(FILMS, similar_in_order(N_FILMS), lm, cite=2, choices=3)
    out = explainer.explain(np.array([1, 2, 3, 4]), item=0)
    assert out.generated, out.draft
    assert set(quoted(out.text)[:-1]) <= {"Film 1", "Film 2", "Film 3"} and out.cited
    assert "Film 9" not in out.text and " 9" in out.text  # it wrote its 9s, as reason words only


def test_a_reason_that_names_another_title_falls_back(toy: LocalLM) -> None:
    """Wanting "Film 9" itself, the model writes it in the reason words: the check catches it."""
    lm = biased(toy, {"Film": 30.0, "9": 29.0})
    explainer = Explainer(FILMS, similar_in_order(N_FILMS), lm, cite=2, choices=3)
    out = explainer.explain(np.array([1, 2, 3, 4]), item=0)
    assert "Film 9" in out.draft and set(quoted(out.draft)[:-1]) <= {"Film 1", "Film 2", "Film 3"}
    assert not out.generated and out.text == "Because you liked Film 1 and Film 2."


def test_the_model_chooses_which_titles_and_how_many(toy: LocalLM) -> None:
    history = np.array([1, 2, 3, 4])
    # similarity ranks Film 1 first; a model that prefers "3" cites Film 3 first
    out = Explainer(FILMS, similar_in_order(N_FILMS), biased(toy, {"3": 20.0}), choices=3).explain(history, 0)
    assert quoted(out.draft)[0] == "Film 3"
    one = Explainer(FILMS, similar_in_order(N_FILMS), biased(toy, {",": 20.0, "and": -20.0}), choices=3)
    alone = one.explain(history, 0).draft
    assert len(quoted(alone)) == 2  # one history title, then the item
    assert alone.endswith('you may also like "Film 0".')  # its reason words were only commas: dropped
    two = Explainer(FILMS, similar_in_order(N_FILMS), biased(toy, {"and": 20.0}), choices=3)
    assert len(quoted(two.explain(history, 0).draft)) == 3
