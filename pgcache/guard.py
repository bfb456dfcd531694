"""An offline guard against semantic hits that embeddings get wrong.

Sentence embeddings place "enable 2FA" next to "disable 2FA" and "convert a
string to an integer" next to its reverse. Each rule below looks for one such
difference between the new request and the cached one; a candidate that
differs is not served. No model is needed, so the guard costs microseconds.

Each rule is a function ``(a, b) -> bool`` (True: the texts differ in a way
that changes the answer); :data:`RULES` lists the ones in force.
"""

from __future__ import annotations

import re
from collections.abc import Callable

_WORD = re.compile(r"[a-z0-9]+(?:['’][a-z]+)?")
_NUMBER = re.compile(r"\d+(?:[.,:/-]\d+)*")

# fmt: off
NEGATIONS = frozenset({"not", "no", "never", "without", "cannot", "cant", "can't", "don't", "dont", "doesn't",
                       "doesnt", "isn't", "isnt", "won't", "wont", "didn't", "didnt", "aren't", "arent", "shouldn't",
                       "couldn't", "wasn't", "nor", "none", "nothing"})

OPPOSITES = (
    ("enable", "disable"), ("enabled", "disabled"), ("import", "export"), ("add", "remove"), ("before", "after"),
    ("increase", "decrease"), ("upload", "download"), ("open", "close"), ("start", "stop"), ("buy", "sell"),
    ("send", "receive"), ("sent", "received"), ("encrypt", "decrypt"), ("login", "logout"), ("allow", "deny"),
    ("accept", "reject"), ("include", "exclude"), ("lock", "unlock"), ("install", "uninstall"),
    ("subscribe", "unsubscribe"), ("activate", "deactivate"), ("connect", "disconnect"), ("show", "hide"),
    ("push", "pull"), ("input", "output"), ("above", "below"), ("first", "last"), ("more", "less"),
    ("upgrade", "downgrade"), ("maximum", "minimum"), ("max", "min"), ("join", "leave"), ("freeze", "unfreeze"),
    ("block", "unblock"), ("deposit", "withdraw"), ("debit", "credit"), ("win", "lose"), ("early", "late"),
    ("old", "new"), ("cheap", "expensive"), ("fast", "slow"), ("public", "private"), ("inbound", "outbound"),
    ("incoming", "outgoing"), ("true", "false"), ("yes", "no"), ("on", "off"), ("up", "down"),
    ("within", "after"), ("within", "over"), ("over", "under"), ("inside", "outside"),
)

# Lower-case names that embeddings treat as near-synonyms but that change the answer.
NAMES = frozenset({
    "python", "javascript", "typescript", "java", "kotlin", "swift", "ruby", "rust", "go", "golang", "php", "perl",
    "c", "c++", "c#", "scala", "haskell", "linux", "windows", "macos", "mac", "ios", "android", "ubuntu", "debian",
    "postgres", "postgresql", "mysql", "sqlite", "oracle", "mongodb", "redis", "aws", "azure", "gcp",
    "chrome", "firefox", "safari", "edge", "iphone", "ipad", "visa", "mastercard", "paypal", "amex",
})
# fmt: on

TYPED_QUESTION_WORDS = frozenset({"who", "whom", "whose", "when", "where", "why"})

# Anchored at word starts: unanchored, a long run of letters (base64, hex) backtracks quadratically.
_ORDER = re.compile(r"(?<![a-z0-9+#])([a-z0-9+#]+)\s+(?:to|into|->)\s+(?:an?\s+|the\s+)?([a-z0-9+#]+)")


def _words(text: str) -> set[str]:
    return set(_WORD.findall(text.lower()))


def numbers_differ(a: str, b: str) -> bool:
    """Numbers, IDs, dates, versions and amounts: "Python 3.11" vs "Python 3.12"."""
    return set(_NUMBER.findall(a)) != set(_NUMBER.findall(b))


def negation_differs(a: str, b: str) -> bool:
    """One text negates: "can I cancel" vs "can I not cancel"."""
    return bool(_words(a) & NEGATIONS) != bool(_words(b) & NEGATIONS)


def opposite_operations(a: str, b: str) -> bool:
    """Opposite words on each side: enable/disable, import/export, add/remove, before/after…"""
    wa, wb = _words(a), _words(b)
    only_a, only_b = wa - wb, wb - wa
    return any((x in only_a and y in only_b) or (y in only_a and x in only_b) for x, y in OPPOSITES)


def named_entities_differ(a: str, b: str) -> bool:
    """Different names: Australia/Austria, Python/JavaScript, Linux/Windows."""
    return _entities(a) != _entities(b)


def _entities(text: str) -> set[str]:
    tokens = re.findall(r"[A-Za-z][\w+#.-]*", text)
    # Capitalised words after the first (sentence case says nothing), plus known lower-case names.
    names = {t.lower().rstrip(".") for t in tokens[1:] if t[0].isupper() and t.lower() != "i"}
    return names | (_words(text) & NAMES) | {t.lower() for t in tokens[:1] if t.lower() in NAMES}


def question_type_differs(a: str, b: str) -> bool:
    """Questions asking for different kinds of answer: who / when / where / why."""
    return (_words(a) & TYPED_QUESTION_WORDS) != (_words(b) & TYPED_QUESTION_WORDS)


def argument_order_swapped(a: str, b: str) -> bool:
    """The same two things in reverse order: "string to integer" vs "integer to string"."""
    pairs_a = set(_ORDER.findall(a.lower()))
    pairs_b = set(_ORDER.findall(b.lower()))
    return any((y, x) in pairs_b for x, y in pairs_a if x != y)


RULES: dict[str, Callable[[str, str], bool]] = {
    "numbers": numbers_differ,
    "negation": negation_differs,
    "opposites": opposite_operations,
    "entities": named_entities_differ,
    "question type": question_type_differs,
    "argument order": argument_order_swapped,
}


# The rules that paid on the FAQ replay (docs/semantic-quality.md): on Banking77, CLINC150 and PAWS
# the others removed more right hits than wrong ones, so they are opt-in.
DEFAULT_RULES = ("argument order",)


def select(names) -> dict[str, Callable[[str, str], bool]]:
    """The rules named, in :data:`RULES` order; an unknown name is an error."""
    from .errors import ConfigurationError

    names = list(names)
    unknown = [n for n in names if n not in RULES]
    if unknown:
        raise ConfigurationError(f"unknown guard rule {unknown[0]!r}; rules: {', '.join(RULES)}")
    return {name: rule for name, rule in RULES.items() if name in names}


def rejects(a: str, b: str, rules: dict[str, Callable[[str, str], bool]] | None = None) -> str | None:
    """The name of the first rule that tells ``a`` and ``b`` apart, or None when none does (default: every rule)."""
    for name, rule in (RULES if rules is None else rules).items():
        if rule(a, b):
            return name
    return None
