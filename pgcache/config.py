"""Every setting of pgcache, declared once.

A setting has a name (the ``Cache`` argument and the :class:`Settings` field),
a ``PGCACHE_*`` variable, a type, a default and a line of documentation, all in
the ``field(...)`` below. ``Cache(...)``, ``Cache.from_env()``, the CLI and the
README's configuration table (:func:`markdown_table`; a test keeps the README
in step) derive from these declarations.

The rule, everywhere: an explicit argument (or CLI option) wins, else the
setting's ``PGCACHE_*`` variable, else its default.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Iterable, Mapping
from dataclasses import MISSING, dataclass, field, fields
from pathlib import Path
from typing import Any

from .durations import parse_ttl
from .errors import ConfigurationError
from .prices import DEFAULT_PRICES, check_prices, parse_prices
from .validation import check_name, check_threshold, short_repr

DEFAULT_MODEL = "gpt-4o-mini"
DEFAULT_NAMESPACE = "default"
DEFAULT_EMBEDDING_MODEL = "text-embedding-3-small"
EMBEDDERS = ("openai", "local")
DEFAULT_GUARD_RULES = ("argument order",)
"""The guard rules that paid on the FAQ replays (docs/semantic-quality.md)."""

UNSET: Any = type("Unset", (), {"__repr__": lambda self: "UNSET", "__bool__": lambda self: False})()
"""An argument that was not given: the setting comes from its variable or its default."""


@dataclass(frozen=True)
class Kind:
    """How values of a setting are read from a variable's text and checked when given as arguments."""

    from_text: Callable[[str, str], Any]
    check: Callable[[Any, str], Any]


def setting(default: Any, kind: Kind, doc: str, shown: str | None = None) -> Any:
    """Declare a :class:`Settings` field: its default, kind, documentation and the default as the docs show it."""
    return field(default=default, metadata={"kind": kind, "doc": doc, "shown": shown})


# -- kinds ------------------------------------------------------------------------------------


def _url_text(text: str, label: str) -> str:
    from .db import normalize_url

    try:
        normalize_url(text)
    except ConfigurationError as exc:
        raise ConfigurationError(f"{label}: {exc}") from None
    return text


def _url(value: Any, label: str) -> str | None:
    from .db import normalize_url

    if value is None:
        return None
    normalize_url(value)  # raises, without the password, what is wrong
    return value.strip()


def _path(value: Any, label: str) -> Path | None:
    if value is None:
        return None
    if not isinstance(value, (str, Path)) or not str(value).strip():
        raise ConfigurationError(f"{label} must be a directory path, got {short_repr(value)}")
    return Path(value).expanduser()


def _http_url(value: Any, label: str) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or not value.strip().lower().startswith(("http://", "https://")):
        raise ConfigurationError(f"{label} must be an http:// or https:// URL, got {short_repr(value)}")
    return value.strip()


def _secret(value: Any, label: str) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or not value.strip():
        raise ConfigurationError(f"{label} must be a non-empty string")  # the value itself is never shown
    return value.strip()


def _dimensions(value: Any, label: str) -> int | None:
    from .queries import EMBEDDING_DIMENSIONS

    if isinstance(value, str) and value.strip().isdigit():
        value = int(value)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not 0 < value <= EMBEDDING_DIMENSIONS:
        raise ConfigurationError(
            f"{label} must be an integer in 1..{EMBEDDING_DIMENSIONS} (the column's width), got {short_repr(value)}"
        )
    return value


def _choice(*choices: str) -> Callable[[Any, str], str]:
    def check(value: Any, label: str) -> str:
        lowered = value.lower() if isinstance(value, str) else value
        if lowered not in choices:
            raise ConfigurationError(f"{label} must be one of {', '.join(choices)}, got {short_repr(value)}")
        return lowered

    return check


def _optional_text(value: Any, label: str) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or not value.strip():
        raise ConfigurationError(f"{label} must be a non-empty string, got {short_repr(value)}")
    return value


def _name(value: Any, label: str) -> str:
    return check_name(value, label)


def _ttl(value: Any, label: str) -> float | None:
    return parse_ttl(value, name=label)


def _similarity_text(text: str, label: str) -> float:
    try:
        number = float(text)
    except ValueError:
        number = math.nan
    if not 0.0 < number <= 1.0:
        raise ConfigurationError(f"{label} must be a cosine similarity in (0, 1], got {text!r}")
    return number


def _similarity(value: Any, label: str) -> float:
    return check_threshold(value, label)


def _optional_similarity(value: Any, label: str) -> float | None:
    return None if value is None else check_threshold(value, label)


def _count(minimum: int) -> Callable[[Any, str], int]:
    def check(value: Any, label: str) -> int:
        if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
            adjective = "positive" if minimum > 0 else "non-negative"
            raise ConfigurationError(f"{label} must be a {adjective} integer, got {short_repr(value)}")
        return value

    return check


def _count_text(minimum: int) -> Callable[[str, str], int]:
    def parse(text: str, label: str) -> int:
        if not text.isdigit():
            _count(minimum)(text, label)
        return _count(minimum)(int(text), label)

    return parse


def _optional(check: Callable[[Any, str], Any]) -> Callable[[Any, str], Any]:
    return lambda value, label: None if value is None else check(value, label)


def _seconds(value: Any, label: str) -> float:
    if isinstance(value, str):
        try:
            value = float(value)
        except ValueError:
            value = math.nan
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
        raise ConfigurationError(f"{label} must be a positive number of seconds, got {short_repr(value)}")
    return float(value)


def _fraction(value: Any, label: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value < 1:
        raise ConfigurationError(f"{label} must be a number in [0, 1), got {short_repr(value)}")
    return float(value)


def _fraction_text(text: str, label: str) -> float:
    try:
        number = float(text)
    except ValueError:
        raise ConfigurationError(f"{label} must be a number in [0, 1), got {text!r}") from None
    return _fraction(number, label)


def _log_odds(value: Any, label: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= 20:
        raise ConfigurationError(f"{label} must be a distance in log-odds between 0 and 20, got {short_repr(value)}")
    return float(value)


def _log_odds_text(text: str, label: str) -> float:
    try:
        number = float(text)
    except ValueError:
        raise ConfigurationError(f"{label} must be a distance in log-odds between 0 and 20, got {text!r}") from None
    return _log_odds(number, label)


def _flag_text(text: str, label: str) -> bool:
    lowered = text.lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off"):
        return False
    raise ConfigurationError(f"{label} must be true or false, got {text!r}")


def _flag(value: Any, label: str) -> bool:
    if not isinstance(value, bool):
        raise ConfigurationError(f"{label} must be True or False, got {short_repr(value)}")
    return value


def _prices_text(text: str, label: str) -> dict[str, tuple[float, float]]:
    return parse_prices(text, name=label)


def _prices(value: Any, label: str) -> dict[str, tuple[float, float]] | None:
    return None if value is None else check_prices(value, label)


def _rules_text(text: str, label: str) -> tuple[str, ...]:
    return _rules([name.strip() for name in text.split(",") if name.strip()], label)


def _rules(value: Any, label: str) -> tuple[str, ...]:
    from .guard import RULES

    if isinstance(value, str) or not isinstance(value, Iterable):
        raise ConfigurationError(f"{label} must be a list of rule names, got {short_repr(value)}")
    names = tuple(value)
    unknown = [name for name in names if name not in RULES]
    if unknown:
        raise ConfigurationError(f"unknown guard rule {unknown[0]!r}; rules: {', '.join(RULES)}")
    return names


def _text_kind(check: Callable[[Any, str], Any]) -> Kind:
    return Kind(from_text=check, check=check)


URL = Kind(_url_text, _url)
PATH = _text_kind(_path)
OPTIONAL_TEXT = _text_kind(_optional_text)
NAME = _text_kind(_name)
DURATION = _text_kind(_ttl)
SIMILARITY = Kind(_similarity_text, _similarity)
OPTIONAL_SIMILARITY = Kind(_similarity_text, _optional_similarity)
SECONDS = _text_kind(_seconds)
FLAG = Kind(_flag_text, _flag)
PRICES = Kind(_prices_text, _prices)
RULE_NAMES = Kind(_rules_text, _rules)
POSITIVE_COUNT = Kind(_count_text(1), _count(1))


def choices(*names: str) -> Kind:
    """The kind of a setting that is one of ``names``."""
    return _text_kind(_choice(*names))


# -- the settings -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Settings:
    """pgcache's configuration; each field is one setting with one ``PGCACHE_*`` variable."""

    database_url: str | None = setting(
        None, URL, "database URL (`postgresql://` or `postgres://`)", "embedded PostgreSQL"
    )
    data_dir: Path | None = setting(
        None, PATH, "data directory of the embedded PostgreSQL", "`~/.local/share/pgcache/postgres`"
    )
    ledger_spool_dir: Path | None = setting(
        None,
        PATH,
        "where ledger rows wait (a file per process) while the database cannot take them",
        "`~/.local/share/pgcache/ledger-spool`",
    )
    ledger_spool_rows: int = setting(
        100_000,
        Kind(_count_text(1), _count(1)),
        "most ledger rows one process keeps while the database is down; later ones are dropped and counted",
    )
    embedder: str = setting("openai", _text_kind(_choice(*EMBEDDERS)), "`openai` or `local`")
    embedding_model: str | None = setting(
        None,
        OPTIONAL_TEXT,
        "embedding model name (OpenAI) or model path (local)",
        "`text-embedding-3-small` / bundled MiniLM",
    )
    embedding_base_url: str | None = setting(
        None,
        _text_kind(_http_url),
        "an OpenAI-compatible endpoint for embeddings alone (e.g. a local embedding server), "
        "while chat keeps the SDK's endpoint",
        "the chat endpoint",
    )
    embedding_api_key: str | None = setting(
        None,
        _text_kind(_secret),
        "API key for the embedding endpoint; the chat key is never sent to `PGCACHE_EMBEDDING_BASE_URL`",
        "the chat key (none sent to an embedding endpoint of its own)",
    )
    embedding_dimensions: int | None = setting(
        None,
        _text_kind(_dimensions),
        "ask the embedding model for vectors this wide (models that can shorten theirs, e.g. text-embedding-3-*)",
        "the model's width (learned from its first answer)",
    )
    model: str = setting(DEFAULT_MODEL, NAME, "default chat model")
    namespace: str = setting(DEFAULT_NAMESPACE, NAME, "namespace of entries and lookups")
    ttl: float | None = setting(
        None, DURATION, "default lifetime of new entries: seconds, `30m`, `12h`, `7d`, `2w` or `never`", "`never`"
    )
    threshold: float | None = setting(
        None,
        OPTIONAL_SIMILARITY,
        "semantic threshold (cosine similarity, 0–1]",
        "calibrated, else the embedder's default",
    )
    max_entries: int | None = setting(
        None,
        Kind(_count_text(0), _optional(_count(0))),
        "capacity for `pgcache sweep`: least recently hit entries beyond it are evicted, warmed ones last",
        "unlimited",
    )
    prices: dict[str, tuple[float, float]] | None = setting(
        None,
        PRICES,
        'token prices for reports: JSON or a JSON file path, `{"model": [input, output]}` dollars '
        "per 1M tokens (a variable extends the built-in table, an argument replaces it)",
        "built-in table",
    )
    pool_size: int = setting(10, Kind(_count_text(1), _count(1)), "most database connections one cache opens")
    connect_timeout: float = setting(
        2.0, SECONDS, "seconds to connect before a call skips the cache (libpq's minimum is 2)"
    )
    statement_timeout: float = setting(2.0, SECONDS, "seconds a cache query may run before the call skips the cache")
    fail_open: bool = setting(
        True,
        FLAG,
        "when the database or the embedder fails, lookups are misses and calls go to the LLM "
        "(a circuit breaker skips the cache until it recovers) instead of raising",
    )
    single_flight: bool = setting(
        True, FLAG, "callers that miss on the same request at once make one LLM call; the others wait for it"
    )
    single_flight_wait: float = setting(
        30.0, SECONDS, "seconds a caller waits for another caller's answer to the same request"
    )
    bypass_nonzero_temperature: bool = setting(
        False, FLAG, "neither look up nor store requests whose temperature is above 0"
    )
    guard: bool = setting(True, FLAG, "the offline guard checks semantic candidates below the sure threshold")
    guard_rules: tuple[str, ...] = setting(
        DEFAULT_GUARD_RULES,
        RULE_NAMES,
        "the guard's rules, comma-separated: `argument order`, `numbers`, "
        "`negation`, `opposites`, `entities`, `question type`",
        "`argument order`",
    )
    sure_threshold: float = setting(
        1.0,
        SIMILARITY,
        "similarity at or above which a semantic candidate is served without verification",
        "`1` (always verify)",
    )
    judge_model: str | None = setting(
        None,
        OPTIONAL_TEXT,
        'a cheap chat model that must also say "yes" to a candidate below the sure threshold '
        "(through the SDK's endpoint)",
        "unset: no judge",
    )
    read_database_url: str | None = setting(
        None, URL, "where lookups read, e.g. a replica; writes stay on `PGCACHE_DATABASE_URL`", "unset: the primary"
    )
    store_prompts: bool = setting(
        True, FLAG, "`false`: no prompt text in entries or the ledger, message contents stored as SHA-256"
    )
    verifier: str = setting(
        "auto",
        _text_kind(_choice("auto", "off")),
        "`auto`: the namespace's learned verifier decides semantic hits once one is trained (`pgcache verifier "
        "train`); `off`: never",
    )
    verifier_floor: float = setting(
        0.6, SIMILARITY, "with a learned verifier in force, the cosine similarity from which it scores candidates"
    )
    verifier_candidates: int = setting(
        3, Kind(_count_text(1), _count(1)), "how many of the nearest entries the learned verifier scores per lookup"
    )
    verifier_threshold: float | None = setting(
        None,
        OPTIONAL_SIMILARITY,
        "the learned verifier's probability from which a candidate is served",
        "the one calibrated at training",
    )
    judge_margin: float = setting(
        2.0,
        Kind(_log_odds_text, _log_odds),
        "with a learned verifier and a judge, the judge is asked only when the verifier's probability is within "
        "this distance of its threshold, in log-odds (2.0 around a threshold of 0.98: from 0.87 to 0.997)",
    )

    def __repr__(self) -> str:
        # Settings end up in logs and tracebacks; database passwords must not.
        from .db import redact

        shown = {f.name: getattr(self, f.name) for f in fields(self)}
        for name in ("database_url", "read_database_url"):
            if shown[name]:
                shown[name] = redact(shown[name])
        if shown["embedding_api_key"]:
            shown["embedding_api_key"] = "***"
        return f"Settings({', '.join(f'{k}={v!r}' for k, v in shown.items())})"

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        """Settings from ``PGCACHE_*`` variables (default: ``os.environ``); empty values count as unset."""
        return cls.resolve({}, environ)

    @classmethod
    def resolve(cls, arguments: Mapping[str, Any], environ: Mapping[str, str] | None = None) -> Settings:
        """Settings from explicit ``arguments`` (``UNSET`` ones ignored), else variables, else defaults.

        Every value is checked; a bad one raises :class:`ConfigurationError`
        naming the argument or the variable it came from.
        """
        return resolve_declared(cls, arguments, environ)

    def make_embedder(self, client: Any = None) -> Any:
        """The configured embedder (``client`` serves OpenAI embeddings as well as chat)."""
        from .embedders import LocalEmbedder, OpenAIEmbedder

        if self.embedder == "local":
            names = ("embedding_base_url", "embedding_api_key", "embedding_dimensions")
            given = [variable(name) for name in names if getattr(self, name) is not None]
            if given:
                raise ConfigurationError(f"{', '.join(given)} applies to the openai embedder, not to the local one")
            return LocalEmbedder(self.embedding_model) if self.embedding_model else LocalEmbedder()
        own_endpoint = self.embedding_base_url is not None or self.embedding_api_key is not None
        return OpenAIEmbedder(
            # With an endpoint of its own, the chat client (and its key) stay out of embeddings.
            client=None if own_endpoint else client,
            model=self.embedding_model or DEFAULT_EMBEDDING_MODEL,
            dimensions=self.embedding_dimensions,
            base_url=self.embedding_base_url,
            api_key=self.embedding_api_key,
        )

    def make_judge(self, client: Any = None) -> Any:
        """The configured LLM judge, or None."""
        if not self.judge_model:
            return None
        from .judge import LLMJudge

        return LLMJudge(client=client, model=self.judge_model)


def resolve_declared(cls: Any, arguments: Mapping[str, Any], environ: Mapping[str, str] | None = None) -> Any:
    """An instance of a dataclass of :func:`setting` fields, resolved by the rule in the module's docstring."""
    env = os.environ if environ is None else environ
    known = {f.name: f for f in fields(cls)}
    unknown = sorted(set(arguments) - set(known))
    if unknown:
        raise ConfigurationError(f"unknown setting {unknown[0]!r}; settings: {', '.join(known)}")
    values: dict[str, Any] = {}
    for name, declared in known.items():
        kind: Kind = declared.metadata["kind"]
        given = arguments.get(name, UNSET)
        text = env.get(variable(name), "").strip()
        if given is not UNSET:
            values[name] = kind.check(given, name)
        elif text:
            values[name] = kind.from_text(text, variable(name))
    return cls(**values)


def variable(name: str) -> str:
    """The environment variable of setting ``name``."""
    return f"PGCACHE_{name.upper()}"


def doc(name: str, declared_in: Any = None) -> str:
    """One line about setting ``name`` (of ``declared_in``, default :class:`Settings`), with its variable."""
    declared = next(f for f in fields(declared_in or Settings) if f.name == name)
    text = _plain(declared.metadata["doc"])
    return f"{text[:1].upper()}{text[1:]} (default: {variable(name)}, else {_plain(_shown_default(declared))})."


def _shown_default(declared: Any) -> str:
    shown = declared.metadata["shown"]
    if shown is not None:
        return shown
    default = declared.default if declared.default is not MISSING else None
    if isinstance(default, bool):
        return f"`{str(default).lower()}`"
    if isinstance(default, float) and default.is_integer():
        default = int(default)
    return f"`{default}`"


def _plain(markdown: str) -> str:
    return markdown.replace("`", "")


def markdown_table(declared_in: Any = None, argument: str = "`Cache` argument") -> str:
    """The README's configuration table (of ``declared_in``'s settings, default :class:`Settings`)."""
    lines = [f"| variable | {argument} | meaning | default |", "|---|---|---|---|"]
    for declared in fields(declared_in or Settings):
        lines.append(
            f"| `{variable(declared.name)}` | `{declared.name}` | {declared.metadata['doc']} | "
            f"{_shown_default(declared)} |"
        )
    return "\n".join(lines) + "\n"


def default_prices(settings: Settings) -> dict[str, tuple[float, float]]:
    """The price table in force: the configured one, else the built-in one."""
    return dict(DEFAULT_PRICES if settings.prices is None else settings.prices)
