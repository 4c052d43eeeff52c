"""Chat prompts for next-item generation and explanations, with personal data scrubbed out.

Everything that reaches a language model from user data goes through :func:`scrub_pii` first:
item titles and reviews are free text, and some catalogs have e-mail addresses or phone numbers
in them. The prompts are plain and deterministic so that results can be reproduced.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence

from lmrec.errors import ConfigError, DataError

DEFAULT_SYSTEM = (
    "You are a recommender system. From the items a user chose before, you predict the item they will choose next."
)
DEFAULT_TASK = (
    "The user watched or bought these items, in this order (the most recent is last). "
    "What is the next item they will choose? Answer with the title only."
)
EXPLAIN_SYSTEM = "You explain recommendations to users in one short, friendly sentence."

_LOCAL = r"A-Za-z0-9!#$%&'*+/=?^_`{|}~.-"
_EMAIL = re.compile(rf"(?<![{_LOCAL}])[{_LOCAL}]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)+")
# A run of digit groups joined by single spaces or dashes; a leading "+" marks a phone number.
_DIGIT_RUN = re.compile(r"(?<!\w)\+?\d+(?:[ -]\d+)*(?!\w)")
_PHONE_INTL = re.compile(r"(?<![\w+])\+\d{1,3}(?:[ .-]?(?:\(\d{1,4}\)|\d{1,5})){1,6}(?!\w)")
_PHONE_NANP = re.compile(r"(?<![\w+.-])(?:1[ .-])?(?:\(\d{3}\)[ .-]?|\d{3}[ .-])\d{3}[ .-]\d{4}(?!\w|[.-]\d)")
# A bracketed area code before digit groups: "(02) 9876 5432", "(0161) 496 0000", "(11) 98765-4321".
_PHONE_AREA = re.compile(r"(?<![\w+.-])\((\d{2,5})\)[ .-]?(\d{2,5}(?:[ .-]\d{2,5}){0,3})(?!\w|[.-]\d)")
# A national number after a trunk "0": "030 12345678", "0151 1234567", "030/1234567", "089 123 456".
_PHONE_TRUNK = re.compile(r"(?<![\w+.\-/])0\d{1,5}(?:[ /-]\d{2,8}){1,3}(?!\w|[.\-/]\d)")
_PHONE_GROUPS = re.compile(r"(?<![\w+.-])\d{2,5}([ .-])\d{2,5}(?:\1\d{2,5}){1,5}(?!\w|[.-]\d)")
_YEAR = re.compile(r"1\d{3}|20\d{2}")


def _luhn(digits: str) -> bool:
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = int(ch)
        if i % 2:
            d = d * 2 - 9 if d > 4 else d * 2
        total += d
    return total % 10 == 0


def _years(groups: Sequence[str]) -> bool:
    """Every group is a year: "1977 1980 1983" is a list of years, not a number."""
    return all(_YEAR.fullmatch(g) for g in groups)


def _isbn13(digits: str) -> bool:
    """A book number (978/979 and the ISBN-13 check digit), which may pass the Luhn test too."""
    weighted = sum(int(c) * (3 if i % 2 else 1) for i, c in enumerate(digits))
    return len(digits) == 13 and digits[:3] in ("978", "979") and weighted % 10 == 0


def _is_card(groups: Sequence[str]) -> bool:
    digits = "".join(groups)
    return 13 <= len(digits) <= 19 and not _years(groups) and _luhn(digits) and not _isbn13(digits)


def _cards(match: re.Match[str]) -> str:
    run = match.group(0)
    if run.startswith("+"):
        return run  # an international phone number, not a card
    parts = re.split(r"([ -])", run)
    groups, seps = parts[0::2], parts[1::2]
    pieces: list[str] = []
    i = 0
    while i < len(groups):
        if i:
            pieces.append(seps[i - 1])
        end = next((j for j in range(len(groups), i, -1) if _is_card(groups[i:j])), None)
        if end is None:
            pieces.append(groups[i])
            i += 1
        else:
            pieces.append("[card]")
            i = end
    return "".join(pieces)


def _intl_phone(match: re.Match[str]) -> str:
    digits = sum(ch.isdigit() for ch in match.group(0))
    return "[phone]" if 7 <= digits <= 15 else match.group(0)


def _grouped_phone(match: re.Match[str]) -> str:
    sep = match.group(1)
    groups = match.group(0).split(sep)
    digits = sum(len(g) for g in groups)
    dotted_quad = sep == "." and len(groups) == 4 and all(len(g) <= 3 for g in groups)  # an IPv4 address
    return "[phone]" if 10 <= digits <= 15 and not _years(groups) and not dotted_quad else match.group(0)


def _area_phone(match: re.Match[str]) -> str:
    groups = [match.group(1), *re.split(r"[ .-]", match.group(2))]
    digits = sum(len(g) for g in groups)
    return "[phone]" if 9 <= digits <= 13 and not _years(groups) else match.group(0)


def _trunk_phone(match: re.Match[str]) -> str:
    digits = sum(ch.isdigit() for ch in match.group(0))
    return "[phone]" if 9 <= digits <= 12 else match.group(0)


def scrub_pii(text: str) -> str:
    """``text`` with e-mail addresses, card numbers (Luhn-checked) and phone numbers replaced by
    ``[email]``, ``[card]`` and ``[phone]``. Years, prices, titles and short ids are left alone."""
    text = _EMAIL.sub("[email]", text)
    text = _DIGIT_RUN.sub(_cards, text)
    text = _PHONE_INTL.sub(_intl_phone, text)
    text = _PHONE_NANP.sub("[phone]", text)
    text = _PHONE_AREA.sub(_area_phone, text)
    text = _PHONE_TRUNK.sub(_trunk_phone, text)
    return _PHONE_GROUPS.sub(_grouped_phone, text)


def _clean(title: str) -> str:
    """One scrubbed line: newlines inside a title would break the numbered list."""
    return " ".join(scrub_pii(str(title)).split())


def _with_system(system: str | None, user: str) -> list[dict[str, str]]:
    messages = [{"role": "system", "content": system}] if system else []
    return [*messages, {"role": "user", "content": user}]


def _history_prompt(task: str, titles: Sequence[str]) -> str:
    return task + "\n\n" + "\n".join(f"{n}. {title}" for n, title in enumerate(titles, 1))


def history_messages(
    titles: Sequence[str],
    count_tokens: Callable[[str], int],
    budget: int = 512,
    task: str = DEFAULT_TASK,
    system: str | None = DEFAULT_SYSTEM,
) -> list[dict[str, str]]:
    """Chat messages asking for the item after ``titles`` (oldest first), one numbered title per line.

    When the user message would take more than ``budget`` tokens (by ``count_tokens``) the oldest
    titles are dropped; the most recent one is always kept. ``system=None`` leaves out the system
    message (for models whose chat template has none).
    """
    if not titles:
        raise DataError("the user has no history to prompt with")
    if budget < 1:
        raise ConfigError(f"the prompt budget must be at least 1 token, not {budget}")
    lines = [_clean(t) for t in titles]

    def fits(start: int) -> bool:
        return count_tokens(_history_prompt(task, lines[start:])) <= budget

    # The smallest start that fits: longer histories take more tokens, so search by halves.
    lo, hi = 0, 0 if fits(0) else len(lines) - 1
    while lo < hi:
        mid = (lo + hi) // 2
        if fits(mid):
            hi = mid
        else:
            lo = mid + 1
    return _with_system(system, _history_prompt(task, lines[lo:]))


def explanation_messages(item_title: str, cited: Sequence[str]) -> list[dict[str, str]]:
    """Chat messages asking for a one-sentence reason to recommend ``item_title`` that refers only to
    the ``cited`` history titles."""
    item = _clean(item_title)
    if cited:
        listing = "\n".join(f"- {_clean(t)}" for t in cited)
        user = (
            f"Earlier the user liked:\n{listing}\n\n"
            f'We recommend "{item}" to them. In one sentence, tell them why, naming only titles from the list above.'
        )
    else:
        user = f'In one sentence, explain why the user may like "{item}". Do not mention any other titles.'
    return _with_system(EXPLAIN_SYSTEM, user)
