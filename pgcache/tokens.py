"""Token counts for answers that arrive without the API's ``usage`` (FAQ answers warmed from a file).

With the ``tokens`` extra installed (``bpe-openai``), texts are counted with OpenAI's own
vocabularies, ``o200k_base`` or ``cl100k_base``, which ship inside that wheel: exact counts,
nothing downloaded. Without it, a text counts as ``ceil(characters / 4)``, labelled
:data:`APPROXIMATION`. Every count says which of the two it came from.

An encoding is loaded on first use, once per process: importing bpe-openai takes most of a
second and about 150 MB, which a process that never counts should not pay.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

APPROXIMATION = "chars/4"
"""The estimator's name when no encoding is available: a quarter of the characters, rounded up."""
O200K = "o200k_base"
CL100K = "cl100k_base"

# Models on cl100k_base, each the whole name or followed by "-": gpt-4 and gpt-4-turbo but not gpt-4o or gpt-4.1.
_CL100K_MODELS = (
    "gpt-4",
    "gpt-3.5",
    "gpt-35",  # Azure's spelling of gpt-3.5-turbo
    "text-embedding-3",
    "text-embedding-ada-002",
)
# Per message: <|start|>{role}<|message|>{content}<|end|> around the role and content; per name, one more;
# the reply is primed with <|start|>assistant<|message|>. OpenAI's cookbook, checked against the API's usage.
TOKENS_PER_MESSAGE = 3
TOKENS_PER_NAME = 1
TOKENS_PER_REPLY = 3
# bpe-openai refuses a text of 1,000,000 characters or of more than 200,000 tokens. A character is at
# most 4 UTF-8 bytes, so at most 4 tokens: pieces of 40,000 characters stay under both limits.
_PIECE = 40_000


@dataclass(frozen=True, slots=True)
class Estimate:
    """Estimated usage of one chat call, and the estimator it came from."""

    prompt_tokens: int
    completion_tokens: int
    total_tokens: int
    estimator: str


@dataclass(frozen=True, slots=True)
class Counter:
    """Counts the tokens of a text; ``name`` is the encoding's name or :data:`APPROXIMATION`."""

    name: str
    count: Callable[[str], int]


def encoding_for(model: str) -> str:
    """OpenAI's encoding for a model name.

    ``cl100k_base`` for gpt-4, gpt-4-turbo, gpt-3.5*, text-embedding-3-* and text-embedding-ada-002;
    ``o200k_base`` for gpt-4o*, gpt-4.1*, gpt-4.5*, gpt-5*, o1*, o3*, o4* and chatgpt-4o*, and as the
    nearest stand-in for any other model. A provider prefix (``openai/gpt-4o``) and a fine-tune's
    ``ft:`` are looked through.
    """
    name = model.strip().lower().rpartition("/")[2].removeprefix("ft:")
    for family in _CL100K_MODELS:
        if name == family or name.startswith(family + "-"):
            return CL100K
    return O200K


def approximate(text: str) -> int:
    """A quarter of the characters, rounded up: 0 for an empty text."""
    return -(-len(text) // 4)


def counter(model: str, *, real: bool = True) -> Counter:
    """The counter for a model: its encoding when bpe-openai is installed and ``real``, else the approximation."""
    if real:
        name = encoding_for(model)
        encoding = _encoding(name)
        if encoding is not None:
            return Counter(name, lambda text: _count(encoding, text))
    return Counter(APPROXIMATION, approximate)


def count_tokens(text: str, model: str, *, real: bool = True) -> tuple[int, str]:
    """Tokens of text and the estimator's name: the real encoding when bpe-openai is installed, else
    ``ceil(len / 4)`` labelled ``chars/4``."""
    count = counter(model, real=real)
    return count.count(text), count.name


def estimate_usage(model: str, messages: Sequence[Mapping[str, Any]], answer: str, *, real: bool = True) -> Estimate:
    """Estimated usage of a chat call, counted as OpenAI's cookbook counts it.

    Prompt tokens: every message's role, content (a string, or the ``text`` of its
    ``{"type": "text", "text": ...}`` parts; images, audio and tool calls are not counted) and
    ``name``, plus 3 tokens per message, 1 more per ``name`` and 3 to prime the reply.
    Completion tokens: the answer's (0 for an empty answer).
    """
    count = counter(model, real=real)
    prompt = TOKENS_PER_REPLY
    for message in messages:
        prompt += TOKENS_PER_MESSAGE
        role, name = message.get("role"), message.get("name")
        if isinstance(role, str):
            prompt += count.count(role)
        if isinstance(name, str):
            prompt += count.count(name) + TOKENS_PER_NAME
        prompt += sum(count.count(text) for text in _texts(message.get("content")))
    completion = count.count(answer)
    return Estimate(prompt, completion, prompt + completion, count.name)


def _texts(content: object) -> Iterator[str]:
    if isinstance(content, str):
        yield content
    elif isinstance(content, Sequence) and not isinstance(content, (bytes, bytearray)):
        for part in content:
            if isinstance(part, Mapping) and part.get("type") == "text" and isinstance(part.get("text"), str):
                yield part["text"]


_lock = threading.Lock()
_loaded: dict[str, Any] = {}
_missing = False
"""bpe-openai could not be imported: every count is the approximation, and the import is not retried."""


def _encoding(name: str) -> Any:
    """The bpe-openai encoding called ``name``, loaded on first use; ``None`` without bpe-openai."""
    encoding = _loaded.get(name)
    if encoding is not None or _missing:
        return encoding
    with _lock:
        return _load(name)


def _load(name: str) -> Any:
    global _missing
    # Another thread may have loaded it (or found bpe-openai missing) while this one waited for the lock.
    if name in _loaded or _missing:
        return _loaded.get(name)
    try:
        import bpe_openai

        _loaded[name] = bpe_openai.get_encoding(name)
    except (ImportError, OSError):
        # Not installed, or installed without its native module or vocabularies: the approximation.
        _missing = True
        return None
    return _loaded[name]


def _count(encoding: Any, text: str) -> int:
    # encode_ordinary: text that spells a special token (<|endoftext|>) is counted as the text it is,
    # as the API counts it, where encode() would raise.
    if len(text) <= _PIECE:
        return len(encoding.encode_ordinary(text))
    return sum(len(encoding.encode_ordinary(piece)) for piece in _pieces(text))


def _pieces(text: str) -> Iterator[str]:
    """A long text in pieces of at most :data:`_PIECE` characters.

    Each cut is at a space between two letters, where both encodings' pre-tokenizers cut too, so
    the pieces' counts add up to the whole text's. A stretch with no such space (code, Chinese)
    is cut where it must be, which can shift the count by a token at that seam.
    """
    start = 0
    while len(text) - start > _PIECE:
        end = start + _PIECE
        cut = text.rfind(" ", start + 1, end)
        while cut > start and not (text[cut - 1].isalpha() and text[cut + 1].isalpha()):
            cut = text.rfind(" ", start + 1, cut)
        if cut <= start:
            cut = end
        yield text[start:cut]
        start = cut
    yield text[start:]
