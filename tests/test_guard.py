"""The offline guard: each rule on its own examples, and the verification band in the cache."""

from __future__ import annotations

import pytest

from pgcache import Cache
from pgcache.embedders import OpenAIEmbedder
from pgcache.guard import RULES, rejects

from .conftest import query

CASES = {
    "numbers": (
        [
            ("Can I return an item after 30 days?", "Can I return an item after 60 days?"),
            ("What changed in Python 3.11?", "What changed in Python 3.12?"),
            ("Where is order 12345?", "Where is order 12346?"),
        ],
        [
            ("Can I return an item after 30 days?", "Is returning an item after 30 days possible?"),
            ("How do I reset my password?", "I forgot my password"),
        ],
    ),
    "negation": (
        [("Can I cancel my order?", "Can I not cancel my order?"), ("Why does it work?", "Why doesn't it work?")],
        [("Can I cancel my order?", "Is it possible to cancel my order?")],
    ),
    "opposites": (
        [
            ("How do I enable two-factor authentication?", "How do I disable two-factor authentication?"),
            ("How to import contacts", "How to export contacts"),
            ("Add a user to a group", "Remove a user from a group"),
            ("Can I return an item after 30 days?", "Can I return an item within 30 days?"),
        ],
        [("How do I enable two-factor authentication?", "How can I turn on two-factor authentication?")],
    ),
    "entities": (
        [
            ("Do I need a visa for Australia?", "Do I need a visa for Austria?"),
            ("How to read a file in python", "How to read a file in javascript"),
            ("Install Docker on Linux", "Install Docker on Windows"),
        ],
        [
            ("How to read a file in Python", "Reading a file in Python"),
            ("What is SQL injection?", "Explain SQL injection"),
        ],
    ),
    "question type": (
        [("Who founded Apple?", "When was Apple founded?"), ("Where is the office?", "Why is the office closed?")],
        [("What is SQL injection?", "How does SQL injection work?")],
    ),
    "argument order": (
        [
            ("convert a string to an integer", "convert an integer to a string"),
            ("translate English to French", "translate French to English"),
        ],
        [("convert a string to an integer", "how to convert string to integer")],
    ),
}


@pytest.mark.parametrize("rule", RULES)
def test_each_rule_on_its_own_examples(rule):
    positives, negatives = CASES[rule]
    for a, b in positives:
        assert RULES[rule](a, b) and RULES[rule](b, a), (rule, a, b)
    for a, b in negatives:
        assert not RULES[rule](a, b), (rule, a, b)


def test_true_paraphrases_pass_every_rule():
    for a, b in [
        ("What is a buffer overflow vulnerability?", "Explain buffer overflow attacks"),
        ("How does SQL injection work?", "What is SQL injection?"),
        ("I forgot my password, how can I reset it?", "How do I reset my password?"),
        ("I want to cancel my subscription", "How can I cancel my subscription?"),
    ]:
        assert rejects(a, b) is None, (a, b)


@pytest.fixture
def two_factor(fake):
    fake.topics.append("two-factor authentication")
    return fake


def test_guard_refuses_a_candidate_inside_the_band(database_url, llm, two_factor):
    with Cache(
        database_url, embedder=OpenAIEmbedder(client=llm), llm=llm, sure_threshold=0.99, guard_rules=["opposites"]
    ) as cache:
        cache.store("How do I enable two-factor authentication?", "Settings > Security > Enable.")
        assert cache.lookup("How do I disable two-factor authentication?") is None
        paraphrase = cache.lookup("How can I turn on two-factor authentication?")
        assert paraphrase is not None and paraphrase.status == "semantic"
        cache.flush()
    rows = query(database_url, "SELECT rejected_by, similarity > 0.92 FROM pgcache_lookups ORDER BY at")
    assert rows == [("guard: opposites", True), (None, True)]


def test_above_sure_and_with_the_guard_off_candidates_are_served(database_url, llm, two_factor):
    with Cache(
        database_url, embedder=OpenAIEmbedder(client=llm), llm=llm, sure_threshold=0.95, guard_rules=["opposites"]
    ) as sure:
        sure.store("How do I enable two-factor authentication?", "Settings > Security > Enable.")
        assert sure.lookup("How do I disable two-factor authentication?").status == "semantic", "0.96 >= sure"
    with Cache(database_url, embedder=OpenAIEmbedder(client=llm), llm=llm, sure_threshold=0.99, guard=False) as off:
        assert off.lookup("How do I disable two-factor authentication?").status == "semantic"


@pytest.mark.parametrize(
    "answer, status, rejected",
    [("yes", "semantic", None), ("no", None, "judge"), (503, None, "judge: InternalServerError")],
    ids=["judge says yes", "judge says no", "judge down"],
)
def test_llm_judge_in_the_band(database_url, llm, two_factor, answer, status, rejected):
    from pgcache.judge import LLMJudge

    two_factor.judge_answer = answer
    with Cache(
        database_url,
        embedder=OpenAIEmbedder(client=llm),
        llm=llm,
        sure_threshold=0.99,
        guard_rules=["opposites"],
        judge=LLMJudge(llm, model="gpt-4o-mini"),
    ) as cache:
        cache.store("How do I enable two-factor authentication?", "Settings > Security > Enable.")
        hit = cache.lookup("How can I turn on two-factor authentication?")
        assert (hit.status if hit else None) == status
        assert cache.lookup("How do I disable two-factor authentication?") is None, "the guard refuses first"
        cache.flush()
    assert two_factor.judge_calls == 1, "asked once: the guard already refused the other candidate"
    assert two_factor.calls["chat"] == 0
    rows = query(database_url, "SELECT rejected_by, judge_tokens FROM pgcache_lookups ORDER BY at")
    assert rows[0] == (rejected, 0 if isinstance(answer, int) else 61)
    assert rows[1] == ("guard: opposites", None)
    verdicts = query(database_url, "SELECT verdict, prompt, entry_prompt, judge FROM pgcache_judgements")
    expected = (
        answer == "yes",
        "How can I turn on two-factor authentication?",
        "How do I enable two-factor authentication?",
        "gpt-4o-mini",
    )
    assert verdicts == ([] if isinstance(answer, int) else [expected]), "verdicts are kept to train a verifier on"


def test_default_rules_are_the_measured_ones(database_url, llm, fake):
    from pgcache import ConfigurationError
    from pgcache.guard import DEFAULT_RULES

    fake.topics.append("convert")
    with Cache(database_url, embedder=OpenAIEmbedder(client=llm), llm=llm) as cache:
        assert (
            list(cache.settings.guard_rules) == list(DEFAULT_RULES) == ["argument order"]
            and cache.settings.sure_threshold == 1.0
        )
        cache.store("convert a string to an integer", "int(s)")
        assert cache.lookup("convert an integer to a string") is None
        assert cache.lookup("how to convert string to integer").status == "semantic"
    with pytest.raises(ConfigurationError, match="unknown guard rule 'spelling'"):
        Cache(database_url, guard_rules=["spelling"])
