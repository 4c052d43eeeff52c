"""Free-text PII scrubbing for data masking, and a generated test set that measures it.

:func:`scrub_text` is the scrubber the prompts use (:func:`lmrec.llm.prompts.scrub_pii`), followed
by Presidio's e-mail, phone and credit-card recognisers when ``presidio_analyzer`` is installed
(``pip install 'lmrec[pii]'``; optional: without it the built-in patterns do the work).

:func:`pii_corpus` generates sentences with e-mail addresses, phone numbers in several national
formats and Luhn-valid card numbers embedded among decoys that look numeric but are not personal
(years, prices, dates, versions, ISBNs ...), each with its character span. :func:`measure_scrubber`
aligns a scrubber's output with its input and reports recall (PII wholly removed), precision
(removed stretches that were PII) and how many decoys survived intact.
"""

from __future__ import annotations

import difflib
import functools
import importlib.util
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from lmrec.llm.prompts import scrub_pii

PLACEHOLDERS = {"email": "[email]", "phone": "[phone]", "card": "[card]"}
_PRESIDIO_ENTITIES = {"EMAIL_ADDRESS": "[email]", "CREDIT_CARD": "[card]", "PHONE_NUMBER": "[phone]"}


def presidio_available() -> bool:
    """Whether ``presidio_analyzer`` can be imported."""
    try:
        return importlib.util.find_spec("presidio_analyzer") is not None
    except (ImportError, ValueError):
        return False


@functools.cache
def _presidio_recognizers() -> tuple[Any, ...]:
    from presidio_analyzer.predefined_recognizers import CreditCardRecognizer, EmailRecognizer, PhoneRecognizer

    return EmailRecognizer(), CreditCardRecognizer(), PhoneRecognizer()


def presidio_scrub(text: str) -> str:
    """``text`` with the spans Presidio's pattern recognisers find (e-mail, card, phone) replaced
    by the same placeholders as :func:`scrub_pii`. Needs ``presidio_analyzer``; no NLP model."""
    spans: list[tuple[int, int, str]] = []
    for recognizer in _presidio_recognizers():
        for found in recognizer.analyze(text, recognizer.supported_entities, None):
            label = _presidio_label(str(found.entity_type))
            if label is not None and found.score > 0:
                spans.append((int(found.start), int(found.end), label))
    out, pos = [], 0
    for start, end, label in sorted(spans):
        if start < pos:  # overlaps a span already replaced
            continue
        out += [text[pos:start], label]
        pos = end
    return "".join([*out, text[pos:]])


def _presidio_label(entity: str) -> str | None:
    if entity in _PRESIDIO_ENTITIES:
        return _PRESIDIO_ENTITIES[entity]
    return "[phone]" if entity.endswith("PHONE_NUMBER") else None  # older versions: "UK_PHONE_NUMBER" ...


def scrub_text(text: str, presidio: bool | None = None) -> str:
    """E-mails, phone numbers and card numbers in ``text`` replaced by ``[email]``, ``[phone]`` and
    ``[card]``: lmrec's patterns, then Presidio's when ``presidio`` is true (None: when installed)."""
    out = scrub_pii(text)
    if presidio is None:
        presidio = presidio_available()
    return presidio_scrub(out) if presidio else out


# -- the generated test set -----------------------------------------------------------------------


@dataclass(frozen=True)
class Span:
    start: int
    end: int
    kind: str  # "email", "phone", "card" or "decoy"

    @property
    def is_pii(self) -> bool:
        return self.kind != "decoy"


@dataclass(frozen=True)
class PIISample:
    text: str
    spans: tuple[Span, ...]

    def values(self, kind: str | None = None) -> list[str]:
        return [self.text[s.start : s.end] for s in self.spans if kind is None or s.kind == kind]


_FIRST = ("jane", "li", "omar", "anna-lena", "jose", "k", "priya", "tom", "chloe", "yuki", "o'brien")
_LAST = ("doe", "wang", "haddad", "schmidt", "garcia", "smith", "kumar", "mueller", "dupont", "sato")
_DOMAINS = (
    "example.com", "mail.example.org", "uni-bonn.de", "shop.co.uk", "gmail.com", "outlook.fr",
    "x.io", "sub.domain.example.net", "company.com.au", "yahoo.co.jp",
)  # fmt: skip
# National phone formats: "d" is a random digit, everything else is kept.
PHONE_FORMATS = {
    "us": ("(2dd) ddd-dddd", "2dd-ddd-dddd", "2dd.ddd.dddd", "+1 2dd ddd dddd", "+1-2dd-ddd-dddd", "1-800-ddd-dddd"),
    "uk": ("+44 20 dddd dddd", "020 dddd dddd", "07ddd dddddd", "+44 7ddd dddddd", "(0161) ddd dddd"),
    "fr": ("06 dd dd dd dd", "+33 6 dd dd dd dd", "01.dd.dd.dd.dd", "+33 (0)1 dd dd dd dd"),
    "de": ("+49 30 dddddddd", "030 dddddddd", "+49 151 dddddddd", "0151 ddddddd", "030/ddddddd", "089 ddd ddd"),
    "in": ("+91 9dddd ddddd", "+91-9ddddddddd", "09dddd ddddd"),
    "jp": ("03-dddd-dddd", "+81 3-dddd-dddd", "090-dddd-dddd"),
    "au": ("(02) dddd dddd", "+61 2 dddd dddd", "04dd ddd ddd"),
    "br": ("+55 11 9dddd-dddd", "(11) 9dddd-dddd"),
    "es": ("+34 6dd dd dd dd", "6dd dd dd dd"),
    "it": ("+39 06 dddd dddd", "3dd ddd dddd"),
    "nl": ("+31 6 dddddddd", "06-dddddddd"),
    "cn": ("+86 13d dddd dddd", "13d dddd dddd"),
}
_CARD_PREFIXES = (("4", 16), ("51", 16), ("55", 16), ("6011", 16), ("34", 15), ("37", 15))
_PII_FRAMES = {
    "email": ("write to {}", "contact: {}", "my e-mail is {}", "({})", "send it to {} please"),
    "phone": ("call {}", "my number is {}", "tel. {}", "reach me on {} after 6", "phone: {}"),
    "card": ("paid with {}", "card {} was charged twice", "cc: {}", "use {} for the refund"),
}
_DECOY_FRAMES = ("bought in {}", "it cost {}", "rated {}", "shipped {}", "{} edition", "see {}", "about {}")
_FILLERS = (
    "Great fit and fast delivery", "The sequel was better", "Arrived late", "Would buy again",
    "Colour as pictured", "Not for kids", "Works with my old charger", "Five stars",
)  # fmt: skip


def _digits(rng: np.random.Generator, n: int) -> str:
    return "".join(str(d) for d in rng.integers(0, 10, n))


def luhn_complete(body: str) -> str:
    """``body`` plus the check digit that makes it pass the Luhn test."""
    total = 0
    for i, ch in enumerate(reversed(body)):
        d = int(ch)
        if i % 2 == 0:  # these digits are doubled once the check digit is appended
            d = d * 2 - 9 if d > 4 else d * 2
        total += d
    return body + str((10 - total % 10) % 10)


def _email(rng: np.random.Generator) -> str:
    first, last = str(rng.choice(_FIRST)), str(rng.choice(_LAST))
    local = [
        f"{first}.{last}",
        f"{first}_{last}{rng.integers(1, 99)}",
        f"{first[0]}.{last}+shop",
        f"{first}{last}",
        f"{last.upper()}.{first}",
    ][int(rng.integers(5))]
    return f"{local}@{rng.choice(_DOMAINS)}"


def _phone(rng: np.random.Generator) -> str:
    country = str(rng.choice(list(PHONE_FORMATS)))
    fmt = str(rng.choice(PHONE_FORMATS[country]))
    return "".join(str(rng.integers(0, 10)) if ch == "d" else ch for ch in fmt)


def _card(rng: np.random.Generator) -> str:
    prefix, length = _CARD_PREFIXES[int(rng.integers(len(_CARD_PREFIXES)))]
    number = luhn_complete(prefix + _digits(rng, length - len(prefix) - 1))
    style = int(rng.integers(3))
    if style == 0:
        return number
    sep = " " if style == 1 else "-"
    cuts = (4, 10) if length == 15 else (4, 8, 12)  # Amex prints 4-6-5
    parts = [number[a:b] for a, b in zip((0, *cuts), (*cuts, length), strict=True)]
    return sep.join(parts)


def _isbn13(rng: np.random.Generator) -> str:
    body = "978" + _digits(rng, 9)
    check = (10 - sum(int(c) * (3 if i % 2 else 1) for i, c in enumerate(body)) % 10) % 10
    digits = body + str(check)
    return f"{digits[:3]}-{digits[3]}-{digits[4:6]}-{digits[6:12]}-{digits[12]}"


def _decoy(rng: np.random.Generator) -> str:
    year = int(rng.integers(1920, 2026))
    options = (
        str(year),
        f"({year})",
        f"${rng.integers(1, 999)}.{rng.integers(0, 100):02d}",
        f"€{rng.integers(1, 9)},{rng.integers(0, 1000):03d}.00",
        f"{rng.integers(1, 99)}.99 EUR",
        f"{year}-{rng.integers(1, 13):02d}-{rng.integers(1, 29):02d}",
        f"{rng.integers(1, 29):02d}/{rng.integers(1, 13):02d}/{year}",
        f"{rng.integers(0, 24):02d}:{rng.integers(0, 60):02d}",
        f"{rng.integers(1, 100)}%",
        f"v{rng.integers(1, 10)}.{rng.integers(0, 20)}.{rng.integers(0, 50)}",
        f"{rng.integers(1, 5)}.{rng.integers(0, 10)}/5",
        f"{rng.integers(1, 6)} x {rng.choice([250, 330, 500])} ml",
        f"SKU {rng.integers(10000, 99999)}",
        f"order #{rng.integers(100000, 9999999)}",
        f"{year}-{year + int(rng.integers(1, 6))}",
        f"{year} {year + 3} {year + 6}",
        f"{rng.integers(1, 99)} {rng.integers(100, 999)} {rng.integers(100, 999)} views",
        f"{rng.choice([128, 256, 512])} GB",
        "ISBN " + _isbn13(rng),
        f"192.168.{rng.integers(0, 256)}.{rng.integers(0, 256)}",
        f"{rng.integers(1, 29):02d}.{rng.integers(1, 13):02d}.{year}",
        f"{rng.integers(1, 99)} 000 km",
        f"{rng.choice(['Route 66', 'Apollo 13', 'Ocean 11', 'Catch-22', 'Area 51'])}",
        f"{rng.integers(1, 9)} 000 000 units",
        f"batch {rng.integers(10, 99)}-{rng.integers(100, 999)}",
    )
    return options[int(rng.integers(len(options)))]


_MAKERS: dict[str, Callable[[np.random.Generator], str]] = {"email": _email, "phone": _phone, "card": _card}


def pii_corpus(n: int, seed: int = 0) -> list[PIISample]:
    """``n`` short review-like texts, each with one or two pieces of PII (e-mail, phone, card, in
    equal shares) and one or two decoys, in random order between filler sentences."""
    rng = np.random.default_rng(seed)
    kinds = list(_MAKERS)
    samples = []
    for _ in range(n):
        parts: list[tuple[str, str, str]] = []  # (frame, value, kind)
        for _ in range(int(rng.integers(1, 3))):
            kind = kinds[int(rng.integers(len(kinds)))]
            parts.append((str(rng.choice(_PII_FRAMES[kind])), _MAKERS[kind](rng), kind))
        for _ in range(int(rng.integers(1, 3))):
            parts.append((str(rng.choice(_DECOY_FRAMES)), _decoy(rng), "decoy"))
        parts.append(("{}", str(rng.choice(_FILLERS)), "filler"))
        order = rng.permutation(len(parts))
        text, spans = "", []
        for i in order:
            frame, value, kind = parts[int(i)]
            if text:
                text += ". " if rng.random() < 0.5 else ", "
            before, after = frame.split("{}")
            start = len(text) + len(before)
            text += before + value + after
            if kind != "filler":
                spans.append(Span(start, start + len(value), kind))
        samples.append(PIISample(text + ".", tuple(spans)))
    return samples


# -- measuring a scrubber -------------------------------------------------------------------------


@dataclass
class ScrubScore:
    """What a scrubber did to a :func:`pii_corpus`: recall per kind and overall (a piece of PII
    counts as found when none of its letters and digits is left), precision (share of removed stretches
    that overlap PII) and the share of decoys left intact."""

    recall: float
    precision: float
    decoys_kept: float
    recall_by_kind: dict[str, float]
    n_pii: int
    n_decoys: int
    missed: list[str] = field(default_factory=list)
    destroyed: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {
            "recall": self.recall,
            "precision": self.precision,
            "decoys_kept": self.decoys_kept,
            "recall_by_kind": self.recall_by_kind,
            "n_pii": self.n_pii,
            "n_decoys": self.n_decoys,
        }


def _changed_regions(original: str, scrubbed: str) -> list[tuple[int, int]]:
    """Character ranges of ``original`` that the scrubber replaced by placeholders or removed.

    A scrubber only swaps stretches of text for placeholders, so the output read as a pattern (its
    text literal, each placeholder "some text") matches the input and says what each placeholder
    stands for. Output that is not of that shape is aligned character by character instead."""
    pieces = re.split("(" + "|".join(re.escape(p) for p in PLACEHOLDERS.values()) + ")", scrubbed)
    pattern = "".join("(.+?)" if i % 2 else re.escape(piece) for i, piece in enumerate(pieces))
    match = re.fullmatch(pattern, original, re.DOTALL)
    if match is not None:
        return [match.span(g) for g in range(1, (match.re.groups or 0) + 1)]
    for i, placeholder in enumerate(PLACEHOLDERS.values()):  # one character each, so their letters
        scrubbed = scrubbed.replace(placeholder, chr(0xE000 + i))  # never align with the text's
    matcher = difflib.SequenceMatcher(None, original, scrubbed, autojunk=False)
    return [(i1, i2) for tag, i1, i2, _, _ in matcher.get_opcodes() if tag in ("replace", "delete") and i2 > i1]


def measure_scrubber(samples: Sequence[PIISample], scrub: Callable[[str], str] = scrub_text) -> ScrubScore:
    """Run ``scrub`` over ``samples`` and score it (see :class:`ScrubScore`)."""
    found: dict[str, list[bool]] = {kind: [] for kind in _MAKERS}
    kept: list[bool] = []
    true_regions = all_regions = 0
    missed, destroyed = [], []
    for sample in samples:
        changed = np.zeros(len(sample.text), bool)
        regions = _changed_regions(sample.text, scrub(sample.text))
        for a, b in regions:
            changed[a:b] = True
        for span in sample.spans:
            value = sample.text[span.start : span.end]
            if span.is_pii:
                alnum = np.array([ch.isalnum() for ch in value], bool)  # separators may stay
                hit = bool(changed[span.start : span.end][alnum].all())
                found[span.kind].append(hit)
                if not hit:
                    missed.append(value)
            else:
                intact = not changed[span.start : span.end].any()
                kept.append(intact)
                if not intact:
                    destroyed.append(value)
        pii = [s for s in sample.spans if s.is_pii]
        all_regions += len(regions)
        true_regions += sum(any(a < s.end and s.start < b for s in pii) for a, b in regions)
    hits = [h for values in found.values() for h in values]
    return ScrubScore(
        recall=float(np.mean(hits)) if hits else 1.0,
        precision=true_regions / all_regions if all_regions else 1.0,
        decoys_kept=float(np.mean(kept)) if kept else 1.0,
        recall_by_kind={k: float(np.mean(v)) if v else 1.0 for k, v in found.items()},
        n_pii=len(hits),
        n_decoys=len(kept),
        missed=missed,
        destroyed=destroyed,
    )
