"""Settings from PGCACHE_* variables and Cache.from_env()."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from pgcache import Cache, ConfigurationError, Settings
from pgcache.embedders import LocalEmbedder, OpenAIEmbedder


def test_defaults():
    settings = Settings.from_env({})
    assert settings == Settings()
    assert (settings.model, settings.namespace, settings.embedder, settings.ttl) == (
        "gpt-4o-mini",
        "default",
        "openai",
        None,
    )


def test_every_variable_is_read():
    settings = Settings.from_env(
        {
            "PGCACHE_DATABASE_URL": "postgres://u@h/d",
            "PGCACHE_DATA_DIR": "/tmp/x",
            "PGCACHE_EMBEDDER": "local",
            "PGCACHE_EMBEDDING_MODEL": "m",
            "PGCACHE_MODEL": "gpt-4o",
            "PGCACHE_NAMESPACE": "ns",
            "PGCACHE_TTL": "7d",
            "PGCACHE_THRESHOLD": "0.85",
        }
    )
    assert settings == Settings(
        database_url="postgres://u@h/d",
        data_dir=Path("/tmp/x"),
        embedder="local",
        embedding_model="m",
        model="gpt-4o",
        namespace="ns",
        ttl=604800,
        threshold=0.85,
    )


@pytest.mark.parametrize(
    "name, value",
    [
        ("PGCACHE_EMBEDDER", "bert"),
        ("PGCACHE_TTL", "eventually"),
        ("PGCACHE_THRESHOLD", "1.5"),
        ("PGCACHE_THRESHOLD", "high"),
    ],
)
def test_bad_values_name_the_variable(name, value):
    with pytest.raises(ConfigurationError, match=name):
        Settings.from_env({name: value})


def test_from_env_builds_the_configured_cache(llm):
    cache = Cache.from_env(
        {"PGCACHE_DATABASE_URL": "postgres://u@h/d", "PGCACHE_NAMESPACE": "ns", "PGCACHE_TTL": "1h"}, llm=llm
    )
    assert (cache.database_url, cache.namespace, cache.ttl) == ("postgresql://u@h/d", "ns", 3600)
    assert isinstance(cache.embedder, OpenAIEmbedder) and cache.embedder.client is llm
    assert cache.threshold == 0.92
    local = Cache.from_env({"PGCACHE_EMBEDDER": "local", "PGCACHE_DATABASE_URL": "postgres://u@h/d"})
    assert isinstance(local.embedder, LocalEmbedder) and local.threshold == LocalEmbedder.default_threshold


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"database_url": "mysql://x"}, "postgresql://"),
        ({"database_url": "postgresql://h:notaport/d"}, "malformed"),
        ({"threshold": 0}, "threshold"),
        ({"ttl": -1}, "ttl"),
        ({"namespace": ""}, "namespace"),
        ({"pool_size": 0}, "pool_size"),
    ],
)
def test_cache_arguments_are_validated(kwargs, message):
    with pytest.raises(ConfigurationError, match=message):
        Cache(**kwargs)


@pytest.mark.parametrize(
    "value, message",
    [
        ("{not json", "not valid JSON"),
        ('{"m": [1]}', "price of 'm'"),
        ('{"m": [-1, 2]}', "price of 'm'"),
        ("/nonexistent/prices.json", "cannot read"),
    ],
)
def test_bad_prices_name_the_variable(value, message):
    with pytest.raises(ConfigurationError, match=f"PGCACHE_PRICES.*{re.escape(message)}"):
        Settings.from_env({"PGCACHE_PRICES": value})


def test_prices_extend_the_builtin_table():
    prices = Settings.from_env({"PGCACHE_PRICES": '{"my-model": [1, 2]}'}).prices
    assert prices["my-model"] == (1.0, 2.0) and prices["gpt-4o-mini"] == (0.15, 0.60)


def test_fail_open_settings():
    settings = Settings.from_env(
        {
            "PGCACHE_CONNECT_TIMEOUT": "3",
            "PGCACHE_STATEMENT_TIMEOUT": "0.5",
            "PGCACHE_SINGLE_FLIGHT_WAIT": "10",
            "PGCACHE_BYPASS_NONZERO_TEMPERATURE": "yes",
        }
    )
    assert (
        settings.connect_timeout,
        settings.statement_timeout,
        settings.single_flight_wait,
        settings.bypass_nonzero_temperature,
    ) == (3.0, 0.5, 10.0, True)
    cache = Cache.from_env(
        {
            "PGCACHE_SINGLE_FLIGHT_WAIT": "10",
            "PGCACHE_BYPASS_NONZERO_TEMPERATURE": "1",
            "PGCACHE_DATABASE_URL": "postgres://u@h/d",
        }
    )
    assert (cache.settings.single_flight_wait, cache.settings.bypass_nonzero_temperature) == (10.0, True)
    for name, value in (("PGCACHE_STATEMENT_TIMEOUT", "-1"), ("PGCACHE_BYPASS_NONZERO_TEMPERATURE", "maybe")):
        with pytest.raises(ConfigurationError, match=name):
            Settings.from_env({name: value})


def test_judge_from_env(llm):
    cache = Cache.from_env({"PGCACHE_JUDGE_MODEL": "gpt-4o-mini", "PGCACHE_DATABASE_URL": "postgres://u@h/d"}, llm=llm)
    assert cache.judge.model == "gpt-4o-mini" and cache.judge.client is llm
    assert Cache.from_env({"PGCACHE_DATABASE_URL": "postgres://u@h/d"}).judge is None
