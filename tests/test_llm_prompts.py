"""PII scrubbing and the chat prompts built from a user's history."""

from __future__ import annotations

import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lmrec.errors import ConfigError, DataError
from lmrec.llm.prompts import DEFAULT_SYSTEM, DEFAULT_TASK, explanation_messages, history_messages, scrub_pii


def words(text: str) -> int:
    return len(text.split())


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("write to jane.doe@example.com today", "write to [email] today"),
        ("A.B+tag@mail.example.co.uk.", "[email]."),
        ("(contact: x_y-z@sub-domain.org)", "(contact: [email])"),
        ("call +1 (555) 123-4567 now", "call [phone] now"),
        ("+44 20 7946 0958", "[phone]"),
        ("+4915112345678", "[phone]"),
        ("(555) 123-4567", "[phone]"),
        ("555-123-4567", "[phone]"),
        ("555.123.4567", "[phone]"),
        ("555 123 4567", "[phone]"),
        ("ring 020 7946 0958 after 6", "ring [phone] after 6"),
        ("06.12.34.56.78", "[phone]"),
        ("card 4111 1111 1111 1111 exp", "card [card] exp"),
        ("4111-1111-1111-1111", "[card]"),
        ("4111111111111111", "[card]"),
        ("amex 3782 822463 10005", "amex [card]"),
        ("card 4111 1111 1111 1111 2024", "card [card] 2024"),
    ],
)
def test_pii_is_replaced(text: str, expected: str) -> None:
    assert scrub_pii(text) == expected


@pytest.mark.parametrize(
    "text",
    [
        "1995",
        "Star Wars (1977)",
        "Se7en",
        "2001: A Space Odyssey",
        "$12.99",
        "item 423",
        "Toy Story (1995), Heat (1995) and 12 Angry Men (1957)",
        "1977 1980 1983 1999",  # years, even though 16 digits
        "Rocky (1976) 1979 1982",
        "released 2020-01-15, 1999-2001",
        "4111 1111 1111 1112",  # fails the Luhn check
        "4111111111111112",
        "+3 more, rated 4.5/5, v1.2.3",
        "@home and C++ 2020",
        "192.168.100.200",
        "",
    ],
)
def test_ordinary_text_is_unchanged(text: str) -> None:
    assert scrub_pii(text) == text


def test_card_is_checked_before_phone() -> None:
    # 15 digits in space-separated groups also look like a phone number: the card check runs first.
    assert scrub_pii("3782 8224 6310 005") == "[card]"


@settings(max_examples=60, deadline=None)
@given(
    email=st.emails(), before=st.sampled_from(["", "mail ", "(", "to: "]), after=st.sampled_from(["", " now", ".", ")"])
)
def test_generated_emails_are_scrubbed(email: str, before: str, after: str) -> None:
    out = scrub_pii(before + email + after)
    assert email not in out
    assert not re.search(r"\S@\S", out)
    assert "[email]" in out


def test_history_lists_scrubbed_titles_most_recent_last() -> None:
    titles = ["Heat (1995)", "Fan mail: bob@example.com", "Call 555-123-4567\nnow", "Se7en"]
    messages = history_messages(titles, words)
    assert messages[0] == {"role": "system", "content": DEFAULT_SYSTEM}
    assert messages[1]["role"] == "user"
    user = messages[1]["content"]
    assert user.startswith(DEFAULT_TASK)
    assert user.endswith("1. Heat (1995)\n2. Fan mail: [email]\n3. Call [phone] now\n4. Se7en")
    assert "bob@" not in user and "4567" not in user


def test_budget_drops_oldest_first_and_keeps_order() -> None:
    titles = [f"Movie {i}" for i in range(30)]
    full = history_messages(titles, words, budget=10_000)[1]["content"]
    assert full.count("\n") == 2 + 29  # all 30 when they fit
    budget = words(DEFAULT_TASK) + 3 * 5 + 2  # five "n. Movie i" lines of three words, and a little slack
    user = history_messages(titles, words, budget=budget, system=None)[0]["content"]
    assert words(user) <= budget
    assert user.splitlines()[2:] == [f"{n}. Movie {i}" for n, i in enumerate(range(25, 30), 1)]


def test_budget_keeps_at_least_the_most_recent() -> None:
    messages = history_messages(["Old", "Older", "Newest title"], words, budget=1, system=None)
    assert messages == [{"role": "user", "content": DEFAULT_TASK + "\n\n1. Newest title"}]


def test_history_custom_task_and_no_system() -> None:
    messages = history_messages(["A", "B"], words, task="Next?", system=None)
    assert messages == [{"role": "user", "content": "Next?\n\n1. A\n2. B"}]


def test_history_is_deterministic() -> None:
    titles = [f"T{i} (19{i:02d})" for i in range(50)]
    assert history_messages(titles, len, budget=300) == history_messages(titles, len, budget=300)


def test_empty_history_and_bad_budget() -> None:
    with pytest.raises(DataError, match="no history"):
        history_messages([], words)
    with pytest.raises(ConfigError, match="budget"):
        history_messages(["A"], words, budget=0)


def test_explanation_cites_only_given_titles_scrubbed() -> None:
    messages = history_messages(["x"], words)  # same shape: system then user
    explain = explanation_messages("Heat (1995)", ["Ronin (1998)", "Reviewed by ann@example.org"])
    assert [m["role"] for m in explain] == [m["role"] for m in messages]
    user = explain[-1]["content"]
    assert '"Heat (1995)"' in user and "one sentence" in user
    assert "- Ronin (1998)\n- Reviewed by [email]" in user
    assert "ann@" not in user and "only" in user


def test_explanation_without_citations() -> None:
    user = explanation_messages("Heat (1995)", [])[-1]["content"]
    assert "Heat (1995)" in user and "one sentence" in user and "\n- " not in user
