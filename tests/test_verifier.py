"""The learned verifier: training learns, the stored verifier serves every process, failures are misses,
and the judge's verdicts train it so that the judge is asked less."""

from __future__ import annotations

import itertools
import json
import logging
import random
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from pgcache import Cache, verifiers
from pgcache.cli import app
from pgcache.crossencoder import CrossEncoder, TrainingOptions, train
from pgcache.judge import LLMJudge
from pgcache.quality import Pair

from .conftest import query

pytestmark = pytest.mark.slow

TOPICS = [
    "reset my password",
    "cancel my subscription",
    "change my email address",
    "track my order",
    "get a refund",
    "delete my account",
    "update my billing card",
    "download my invoice",
    "change my delivery address",
    "contact customer support",
]
TEMPLATES = ["How do I {}?", "What is the way to {}?", "I need to {}, how?", "Can you help me {}?", "Where can I {}?"]


def question(topic: int, template: int) -> str:
    return TEMPLATES[template].format(TOPICS[topic])


def fixture_pairs(templates: range) -> list[Pair]:
    """Same topic, other wording: 1; same wording, other topic: 0 (the hard case for an embedding)."""
    rng = random.Random(1)
    pairs = []
    for topic in range(len(TOPICS)):
        for a, b in itertools.combinations(templates, 2):
            pairs.append(Pair(question(topic, a), question(topic, b), 1))
            other = rng.choice([t for t in range(len(TOPICS)) if t != topic])
            pairs.append(Pair(question(topic, a), question(other, a), 0))
    return pairs


class WordsEmbedder:
    """Bag-of-words vectors: questions sharing a template are as close as questions sharing a topic."""

    name, dimensions = "test/words", 256

    def __init__(self) -> None:
        self.calls = 0

    def embed(self, texts):
        self.calls += 1
        vectors = np.zeros((len(texts), self.dimensions))
        for row, text in enumerate(texts):
            for word in text.lower().replace("?", " ").replace(",", " ").split():
                vectors[row, zlib.crc32(word.encode()) % self.dimensions] += 1.0
        return vectors


@pytest.fixture(scope="module")
def trained():
    """A verifier trained once on the fixture (templates 0-3; template 4 never seen), and its held-out summary."""
    pairs = fixture_pairs(range(4))
    encoder, summary = train(
        [(p.a, p.b) for p in pairs],
        [p.label for p in pairs],
        TrainingOptions(kind="lora", epochs=4, learning_rate=1e-3, seed=0),
    )
    return encoder, summary


def unseen_pairs() -> list[Pair]:
    """Pairs with the wording training never saw (template 4): paraphrases, and other topics in that wording."""
    unseen = [Pair(question(topic, 0), question(topic, 4), 1) for topic in range(len(TOPICS))]
    unseen += [Pair(question(topic, 4), question((topic + 3) % len(TOPICS), 4), 0) for topic in range(len(TOPICS))]
    return unseen


def accuracy(scores, labels) -> float:
    return float(np.mean((np.asarray(scores) >= 0.5) == np.asarray(labels)))


def test_training_learns_what_an_untrained_model_cannot(trained):
    encoder, summary = trained
    unseen = unseen_pairs()
    labels = [p.label for p in unseen]
    untrained = CrossEncoder.untrained()
    assert accuracy(untrained.score([(p.a, p.b) for p in unseen]), labels) < 0.75
    assert accuracy(summary["held_out_scores"], summary["held_out_labels"]) >= 0.9
    assert accuracy(encoder.score([(p.a, p.b) for p in unseen]), labels) >= 0.85, "an unseen wording"
    pairs = [(p.a, p.b) for p in unseen]
    backward = encoder.score([(b, a) for a, b in pairs])
    assert accuracy(backward, labels) >= 0.85, "trained on both orders: the order does not decide"


def test_the_weights_round_trip_and_stay_small(trained):
    encoder, _ = trained
    data = encoder.to_bytes()
    assert len(data) < 4_000_000
    again = CrossEncoder.from_bytes(data)
    pairs = [(question(1, 0), question(1, 4)), (question(1, 0), question(2, 0))]
    assert np.allclose(again.score(pairs), encoder.score(pairs), atol=1e-4)
    with pytest.raises(ValueError, match="not a pgcache verifier"):
        CrossEncoder.from_bytes(b"\x00" * 64)


def store(url: str, trained, threshold: float = 0.5) -> verifiers.StoredVerifier:
    import psycopg

    encoder, _ = trained
    with psycopg.connect(url, autocommit=True) as conn:
        return verifiers.save(conn, "faq", WordsEmbedder.name, encoder.to_bytes(), threshold, 0.98, {"pairs": 1})


def warmed(url: str, llm, **settings) -> Cache:
    settings.setdefault("verifier_floor", 0.2)  # bag-of-words similarities are low
    cache = Cache(url, embedder=WordsEmbedder(), llm=llm, namespace="faq", environ={}, **settings)
    cache.store_many([(question(topic, 0), f"answer about {TOPICS[topic]}") for topic in range(len(TOPICS) - 1)])
    return cache


def test_the_stored_verifier_serves_paraphrases_and_refuses_near_misses(database_url, llm, trained):
    stored = store(database_url, trained)
    with warmed(database_url, llm) as cache:
        hit = cache.lookup(question(3, 4))  # "Where can I track my order?": a wording never trained on
        assert hit is not None and hit.status == "semantic" and hit.content == "answer about track my order"
        assert hit.similarity < cache.threshold, "below the cosine threshold: the verifier served it"
        # The last topic is not cached: its nearest entries share only the wording.
        assert cache.lookup(question(len(TOPICS) - 1, 0)) is None
        cache.flush()
    rows = query(
        database_url,
        "SELECT outcome, rejected_by, verifier_probability, jsonb_array_length(verifier_scores) "
        "FROM pgcache_lookups ORDER BY at",
    )
    assert rows[0][0] == "semantic" and rows[0][2] >= stored.threshold and rows[0][3] >= 1
    assert rows[1][0] == "miss" and rows[1][1].startswith("verifier: ") and rows[1][2] < stored.threshold


def test_a_second_process_uses_the_stored_verifier(database_url, trained):
    store(database_url, trained)
    code = f"""
import sys
sys.path.insert(0, {str(Path(__file__).resolve().parents[1])!r})
from pgcache import Cache
from tests.test_verifier import WordsEmbedder, question, TOPICS
cache = Cache({database_url!r}, embedder=WordsEmbedder(), namespace="faq", environ={{}}, verifier_floor=0.2)
cache.store_many([(question(t, 0), f"answer about {{TOPICS[t]}}") for t in range(len(TOPICS) - 1)])
hit = cache.lookup(question(5, 4))
print(hit.status if hit else None, hit.content if hit else None, cache.verifiers.in_force("faq").stored.version)
cache.close()
"""
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split("\n")[0] == "semantic answer about delete my account 1"


def test_verifier_off_and_versions(database_url, llm, trained):
    store(database_url, trained)
    with warmed(database_url, llm, verifier="off") as cache:
        assert cache.lookup(question(3, 4)) is None, "off: the cosine threshold alone decides"
    with warmed(database_url, llm) as cache:
        store(database_url, trained, threshold=0.999999)  # version 2: nothing passes
        assert [v.version for v in cache.list_verifiers("faq")] == [2, 1]
        cache.verifiers.forget()
        assert cache.lookup(question(3, 4)) is None
        cache.delete_verifier(2)
        assert cache.show_verifier().version == 1
        assert cache.lookup(question(3, 4)).status == "semantic"


class Broken:
    threshold = 0.5
    stored = None

    class encoder:
        @staticmethod
        def score(pairs):
            raise RuntimeError("scoring failed")


def test_a_failing_verifier_is_a_miss_counted_and_logged_once(database_url, llm, trained, caplog):
    with warmed(database_url, llm) as cache, caplog.at_level(logging.WARNING, logger="pgcache"):
        cache.verifiers.pin("faq", Broken())
        for _ in range(3):
            assert cache.lookup(question(3, 4)) is None
        assert cache.verifiers.breaker.failures == 1, "the breaker skips it after the first failure"
        assert cache.lookup(question(3, 0)).status == "exact", "exact hits do not need the verifier"
        cache.flush()
    assert [r.getMessage() for r in caplog.records if "verifier" in r.getMessage()] == [
        "pgcache: learned verifier unavailable, semantic hits need the cosine threshold: scoring failed"
    ]
    reasons = query(database_url, "SELECT rejected_by FROM pgcache_lookups WHERE outcome = 'miss' ORDER BY at")
    assert reasons == [("verifier: error",), ("verifier: unavailable",), ("verifier: unavailable",)]


def test_unloadable_weights_fall_back_to_the_cosine_threshold(database_url, llm):
    import psycopg

    with psycopg.connect(database_url, autocommit=True) as conn:
        verifiers.save(conn, "faq", WordsEmbedder.name, b"not weights at all", 0.5, 0.98, {})
    with warmed(database_url, llm) as cache:
        assert cache.verifiers.in_force("faq") is None
        assert cache.lookup(question(3, 4)) is None
        assert cache.verifiers.breaker.failures == 1


def test_the_cli_trains_lists_shows_and_deletes(database_url, llm, tmp_path):
    path = tmp_path / "pairs.csv"
    path.write_text("a,b,label\n" + "".join(f'"{p.a}","{p.b}",{p.label}\n' for p in fixture_pairs(range(4))))
    env = {"PGCACHE_DATABASE_URL": database_url, "PGCACHE_NAMESPACE": "faq", "PGCACHE_EMBEDDER": "local"}
    runner = CliRunner()
    trained = runner.invoke(
        app,
        [
            "verifier",
            "train",
            str(path),
            "--target-precision",
            "0.8",
            "--epochs",
            "3",
            "--held-out",
            "0.3",
            "--format",
            "json",
        ],
        env=env,
    )
    assert trained.exit_code == 0, trained.output
    result = json.loads(trained.output)
    assert result["chosen"]["precision_lower"] >= 0.8 and result["stored"]["version"] == 1
    assert result["stored"]["metrics"]["at_threshold"]["threshold"] == pytest.approx(result["stored"]["threshold"])
    listed = runner.invoke(app, ["verifier", "list", "--format", "json"], env=env)
    assert [(v["namespace"], v["version"]) for v in json.loads(listed.output)] == [("faq", 1)]
    shown = runner.invoke(app, ["verifier", "show"], env=env)
    assert json.loads(shown.output)["version"] == 1
    with Cache(database_url, embedder="local", llm=llm, namespace="faq", environ={}) as cache:
        assert cache.report()["verifier"]["precision"] == result["chosen"]["precision"]
    refused = runner.invoke(app, ["verifier", "delete", "1"], env=env)
    assert refused.exit_code == 1 and "--yes" in str(refused.exception)
    deleted = runner.invoke(app, ["verifier", "delete", "1", "--yes"], env=env)
    assert deleted.exit_code == 0 and deleted.output.strip() == "deleted verifier version 1"
    missing = runner.invoke(app, ["verifier", "delete", "1", "--yes"], env=env)
    assert missing.exit_code == 1 and "no verifier version 1 for namespace 'faq'" in str(missing.exception)


NEAR_MISSES = [  # each shares words with a cached topic, and needs another answer
    "reset my router",
    "cancel my order",
    "change my phone number",
    "track my refund",
    "get a receipt",
    "delete my comment",
    "update my shipping address",
    "download my data",
    "change my username",
]


def test_judge_verdicts_train_a_verifier_that_asks_the_judge_less(database_url, llm, fake):
    topics = TOPICS + NEAR_MISSES

    def labelled(a: str, b: str) -> str:
        same = next(t for t in topics if t in a) == next(t for t in topics if t in b)
        return "yes" if same else "no"

    traffic = [question(topic, template) for topic in range(len(TOPICS) - 1) for template in range(1, 5)]
    traffic += [template.format(topic) for topic in NEAR_MISSES for template in TEMPLATES]
    fake.judge_answer = labelled
    judge = LLMJudge(llm, model="gpt-4o-mini")
    with warmed(database_url, llm, judge=judge, threshold=0.2) as cache:
        for text in traffic:
            cache.lookup(text)
        before = fake.judge_calls
        cache.flush()
        verdicts = query(database_url, "SELECT verdict, count(*) FROM pgcache_judgements GROUP BY 1 ORDER BY 1")
        assert sum(n for _, n in verdicts) == before and len(verdicts) == 2, verdicts
        options = TrainingOptions(kind="lora", epochs=10, learning_rate=1e-3, held_out=0.3)
        result = cache.train_verifier(from_judge=True, target_precision=0.8, options=options)
        assert result.stored is not None and result.sources["judge"] == before
        fake.judge_calls = 0
        served = [cache.lookup(text) for text in traffic]
        after = fake.judge_calls
    assert after < before / 2, f"judge calls {before} before distillation, {after} after"
    right = sum(
        hit is not None and hit.content.removeprefix("answer about ") in text
        for hit, text in zip(served, traffic, strict=True)
    )
    wrong = sum(hit is not None for hit in served) - right
    assert wrong <= right / 10, f"{right} right and {wrong} wrong hits after distillation"
