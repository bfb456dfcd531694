"""One configuration: every setting declared once, resolved the same way by Cache(), from_env() and the CLI."""

from __future__ import annotations

import re
from dataclasses import fields
from pathlib import Path

import pytest
from typer.testing import CliRunner

from pgcache import Cache, ConfigurationError, Settings, config
from pgcache.cli import app
from pgcache.embedders import LocalEmbedder, OpenAIEmbedder

from .conftest import query

ROOT = Path(__file__).resolve().parents[1]

# A value, as a variable's text and as the Python value it reads as, for every setting.
SAMPLES = {
    "database_url": ("postgres://u@h/d", "postgres://u@h/d"),
    "data_dir": ("/tmp/pgcache-data", Path("/tmp/pgcache-data")),
    "ledger_spool_dir": ("/tmp/pgcache-spool", Path("/tmp/pgcache-spool")),
    "ledger_spool_rows": ("500", 500),
    "embedder": ("LOCAL", "local"),
    "embedding_model": ("my-model", "my-model"),
    "embedding_base_url": ("http://127.0.0.1:11434/v1", "http://127.0.0.1:11434/v1"),
    "embedding_api_key": ("tei-key-1", "tei-key-1"),
    "embedding_dimensions": ("512", 512),
    "model": ("gpt-4o", "gpt-4o"),
    "namespace": ("ns", "ns"),
    "ttl": ("12h", 43200),
    "threshold": ("0.85", 0.85),
    "max_entries": ("1000", 1000),
    "prices": ('{"m": [1, 2]}', {**config.DEFAULT_PRICES, "m": (1.0, 2.0)}),
    "pool_size": ("3", 3),
    "connect_timeout": ("5", 5.0),
    "statement_timeout": ("0.5", 0.5),
    "fail_open": ("false", False),
    "single_flight": ("0", False),
    "single_flight_wait": ("10", 10.0),
    "bypass_nonzero_temperature": ("yes", True),
    "guard": ("off", False),
    "guard_rules": ("numbers, negation", ("numbers", "negation")),
    "sure_threshold": ("0.97", 0.97),
    "judge_model": ("gpt-4o-mini", "gpt-4o-mini"),
    "read_database_url": ("postgresql://r@replica/app", "postgresql://r@replica/app"),
    "store_prompts": ("0", False),
    "verifier": ("OFF", "off"),
    "verifier_floor": ("0.5", 0.5),
    "verifier_candidates": ("5", 5),
    "verifier_threshold": ("0.9", 0.9),
    "judge_margin": ("0.1", 0.1),
}


def test_every_setting_has_a_variable_a_doc_and_a_sample():
    names = [f.name for f in fields(Settings)]
    assert sorted(SAMPLES) == sorted(names)
    for declared in fields(Settings):
        assert declared.metadata["doc"], declared.name
        assert config.variable(declared.name) == "PGCACHE_" + declared.name.upper()


@pytest.mark.parametrize("name", list(SAMPLES))
def test_every_variable_is_read_and_every_argument_wins_over_it(name):
    text, value = SAMPLES[name]
    from_env = Settings.from_env({config.variable(name): text})
    assert getattr(from_env, name) == value
    assert getattr(Settings.from_env({config.variable(name): "   "}), name) == getattr(Settings(), name), (
        "an empty variable counts as unset"
    )
    default = getattr(Settings(), name)
    explicit = Settings.resolve({name: default}, {config.variable(name): text})
    assert getattr(explicit, name) == default


@pytest.mark.parametrize(
    "name, text",
    [
        ("pool_size", "0"),
        ("max_entries", "-1"),
        ("fail_open", "maybe"),
        ("guard_rules", "spelling"),
        ("sure_threshold", "2"),
        ("connect_timeout", "never"),
        ("database_url", "mysql://x"),
        ("embedder", "bert"),
        ("embedding_base_url", "localhost:11434"),
        ("embedding_dimensions", "3072"),
        ("embedding_dimensions", "wide"),
    ],
)
def test_bad_variables_name_the_variable_or_the_value(name, text):
    with pytest.raises(ConfigurationError, match=f"{config.variable(name)}|{re.escape(text)}"):
        Settings.from_env({config.variable(name): text})


def test_unknown_arguments_are_refused_with_the_list_of_settings():
    with pytest.raises(ConfigurationError, match="unknown setting 'pool'; settings: database_url, data_dir"):
        Cache(pool=3)


def test_the_readme_table_is_the_declarations():
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert config.markdown_table() in readme, "README's configuration table: paste pgcache.config.markdown_table()"


def test_cache_without_a_url_uses_the_variables_like_the_cli(database_url, llm, fake, monkeypatch):
    # The application's Cache() and `pgcache warm` must find the same database and embedder.
    monkeypatch.setenv("PGCACHE_DATABASE_URL", database_url)
    monkeypatch.setenv("PGCACHE_NAMESPACE", "faq")
    monkeypatch.setenv("PGCACHE_TTL", "7d")
    faqs = ROOT / "examples" / "faqs.tsv"
    env = {"OPENAI_BASE_URL": fake.base_url, "OPENAI_API_KEY": "sk-test-unused"}
    warmed = CliRunner().invoke(app, ["warm", str(faqs), "--no-retrain"], env=env)
    assert warmed.exit_code == 0, warmed.output
    with Cache(embedder=OpenAIEmbedder(client=llm), llm=llm) as cache:
        assert (cache.database_url, cache.namespace, cache.ttl) == (database_url, "faq", 7 * 86400)
        hit = cache.lookup("How do I reset my password?")
        assert hit is not None and hit.status == "exact" and hit.namespace == "faq"
    with Cache(database_url, embedder=OpenAIEmbedder(client=llm), llm=llm, namespace="other", ttl=None) as cache:
        assert (cache.namespace, cache.ttl) == ("other", None), "explicit arguments win"
        assert cache.lookup("How do I reset my password?") is None


def test_explicit_none_means_the_embedded_database_whatever_the_variable(monkeypatch):
    monkeypatch.setenv("PGCACHE_DATABASE_URL", "postgresql://u@h/d")
    assert Cache(llm=object()).database_url == "postgresql://u@h/d"
    assert Cache(None, llm=object()).database_url is None


def test_embedder_and_judge_come_from_the_settings(llm, monkeypatch):
    monkeypatch.setenv("PGCACHE_EMBEDDER", "local")
    monkeypatch.setenv("PGCACHE_JUDGE_MODEL", "gpt-4o-mini")
    cache = Cache("postgresql://u@h/d", llm=llm)
    assert isinstance(cache.embedder, LocalEmbedder) and cache.judge.client is llm
    assert isinstance(Cache("postgresql://u@h/d", embedder="openai", llm=llm).embedder, OpenAIEmbedder)
    assert Cache("postgresql://u@h/d", llm=llm, judge_model=None).judge is None


def test_settings_reach_the_parts_that_use_them(database_url, llm, fake):
    with Cache(
        database_url,
        embedder=OpenAIEmbedder(client=llm),
        llm=llm,
        environ={},
        pool_size=3,
        single_flight=False,
        guard_rules=["numbers"],
        sure_threshold=0.99,
        store_prompts=False,
    ) as cache:
        assert cache.backend.database().pool.max_size == 3
        assert cache.flights.enabled is False
        assert [check.name for check in cache.finder.verifier.checks] == ["feedback", "guard"]
        assert cache.finder.verifier.sure_threshold == 0.99
        cache.query("What is SQL injection?")
        cache.flush()
    assert query(database_url, "SELECT prompt FROM pgcache_entries") == [(None,)]
