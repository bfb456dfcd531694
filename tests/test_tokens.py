"""Offline token estimates: exact counts with bpe-openai, the chars/4 approximation without (no database needed)."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

from pgcache.tokens import APPROXIMATION, Estimate, count_tokens, counter, encoding_for, estimate_usage

REPO = Path(__file__).resolve().parents[1]
needs_bpe = pytest.mark.skipif(
    importlib.util.find_spec("bpe_openai") is None, reason="bpe-openai is not installed (the `tokens` extra)"
)

# OpenAI's cookbook (How to count tokens with tiktoken): the API reported 129 prompt tokens for this
# conversation on gpt-3.5-turbo, gpt-4-0613 and gpt-4 (cl100k_base), and 124 on gpt-4o and gpt-4o-mini (o200k_base).
COOKBOOK = [
    {
        "role": "system",
        "content": "You are a helpful, pattern-following assistant that translates corporate jargon "
        "into plain English.",
    },
    {"role": "system", "name": "example_user", "content": "New synergies will help drive top-line growth."},
    {"role": "system", "name": "example_assistant", "content": "Things working well together will increase revenue."},
    {
        "role": "system",
        "name": "example_user",
        "content": "Let's circle back when we have more bandwidth to touch base on opportunities "
        "for increased leverage.",
    },
    {
        "role": "system",
        "name": "example_assistant",
        "content": "Let's talk later when we're less busy about how to do better.",
    },
    {
        "role": "user",
        "content": "This late pivot means we don't have time to boil the ocean for the client deliverable.",
    },
]


# Token ids checked by hand against a plain-Python BPE (regex split, lowest-rank merge) over the vocabularies
# in bpe-openai's wheel, whose SHA-256 equal OpenAI's published o200k_base / cl100k_base files:
# "hello world" is [24912, 2375] in o200k_base and [15339, 1917] in cl100k_base (tiktoken's own test);
# "Hello, world!" is Hello , world !; the Japanese sentence is 8 tokens in o200k_base, 10 in cl100k_base.
@needs_bpe
@pytest.mark.parametrize(
    ("text", "model", "expected", "encoding"),
    [
        ("hello world", "gpt-4o", 2, "o200k_base"),
        ("hello world", "gpt-4", 2, "cl100k_base"),
        ("Hello, world!", "gpt-4o-mini", 4, "o200k_base"),
        ("How do I reset my password?", "gpt-4.1", 7, "o200k_base"),
        ("日本語のテキストです。", "gpt-4o", 8, "o200k_base"),
        ("日本語のテキストです。", "gpt-3.5-turbo", 10, "cl100k_base"),
        ("1234567890", "o3-mini", 4, "o200k_base"),
        ("<|endoftext|>", "gpt-4o", 7, "o200k_base"),  # a special token's spelling is counted as text
        ("", "gpt-4o", 0, "o200k_base"),
    ],
)
def test_exact_counts(text, model, expected, encoding):
    assert count_tokens(text, model) == (expected, encoding)


@needs_bpe
@pytest.mark.parametrize(("model", "expected"), [("gpt-3.5-turbo", 129), ("gpt-4", 129), ("gpt-4o", 124)])
def test_a_conversation_counts_as_the_api_counted_it(model, expected):
    estimate = estimate_usage(model, COOKBOOK, "")
    assert (estimate.prompt_tokens, estimate.completion_tokens, estimate.total_tokens) == (expected, 0, expected)


@needs_bpe
def test_per_message_overhead():
    # 3 to prime the reply; per message 3, the role ("user" and "system": 1 token each) and the content.
    one = estimate_usage("gpt-4o", [{"role": "user", "content": "hello world"}], "Hello, world!")
    assert one == Estimate(3 + 3 + 1 + 2, 4, 9 + 4, "o200k_base")
    two = estimate_usage(
        "gpt-4o", [{"role": "system", "content": "hello world"}, {"role": "user", "content": "hello world"}], ""
    )
    assert two.prompt_tokens == 3 + 2 * (3 + 1 + 2)
    # A name costs its own tokens ("example_user": 2) and one more.
    named = estimate_usage("gpt-4o", [{"role": "user", "name": "example_user", "content": "hello world"}], "")
    assert named.prompt_tokens == one.prompt_tokens + 2 + 1


def test_per_message_overhead_with_the_approximation():
    # "user" 1, "hello world" ceil(11 / 4) = 3, "bob" 1 (+1 for the name), the answer ceil(13 / 4) = 4.
    estimate = estimate_usage(
        "gpt-4o", [{"role": "user", "name": "bob", "content": "hello world"}], "Hello, world!", real=False
    )
    assert estimate == Estimate(3 + 3 + 1 + 3 + 1 + 1, 4, 12 + 4, APPROXIMATION)


@pytest.mark.parametrize("real", [True, False])
def test_content_parts_count_their_text_only(real):
    parts = [
        {"type": "text", "text": "hello world"},
        {"type": "image_url", "image_url": {"url": "https://example.com/a-very-long-image-address.png"}},
        {"type": "input_audio", "input_audio": {"data": "AAAA" * 100, "format": "wav"}},
        {"type": "transcript", "text": "a part of another type is not counted, even with a text"},
        {"type": "text", "text": "How do I reset my password?"},
    ]
    as_parts = estimate_usage("gpt-4o", [{"role": "user", "content": parts}], "", real=real)
    texts = (
        count_tokens("hello world", "gpt-4o", real=real)[0]
        + count_tokens("How do I reset my password?", "gpt-4o", real=real)[0]
    )
    assert as_parts.prompt_tokens == 3 + 3 + count_tokens("user", "gpt-4o", real=real)[0] + texts
    # A message without text (an assistant's tool call) costs its overhead and role only.
    silent = estimate_usage("gpt-4o", [{"role": "assistant", "content": None, "tool_calls": []}], "", real=real)
    assert silent.prompt_tokens == 3 + 3 + count_tokens("assistant", "gpt-4o", real=real)[0]


@pytest.mark.parametrize(
    ("text", "expected"), [("", 0), ("a", 1), ("abcd", 1), ("abcde", 2), ("hello world", 3), ("日本語", 1)]
)
def test_the_approximation_is_a_quarter_of_the_characters_rounded_up(text, expected):
    assert count_tokens(text, "gpt-4o", real=False) == (expected, "chars/4")
    assert count_tokens(text, "claude-3-5-sonnet", real=False) == (expected, "chars/4")


def test_the_approximation_is_labelled_as_such():
    assert APPROXIMATION == "chars/4"
    assert counter("gpt-4", real=False).name == "chars/4"
    estimate = estimate_usage("gpt-4", [{"role": "user", "content": "How do I reset my password?"}], "Yes.", real=False)
    assert estimate.estimator == "chars/4"
    assert estimate.total_tokens == estimate.prompt_tokens + estimate.completion_tokens


@needs_bpe
def test_the_real_encoding_is_labelled_with_its_name():
    assert counter("gpt-4o").name == "o200k_base"
    assert counter("gpt-4-turbo").name == "cl100k_base"
    assert estimate_usage("gpt-5", [{"role": "user", "content": "hi"}], "hello").estimator == "o200k_base"


@pytest.mark.parametrize(
    ("model", "encoding"),
    [
        ("gpt-4o", "o200k_base"),
        ("gpt-4o-mini-2024-07-18", "o200k_base"),
        ("chatgpt-4o-latest", "o200k_base"),
        ("gpt-4.1-nano", "o200k_base"),
        ("gpt-4.5-preview", "o200k_base"),
        ("gpt-5", "o200k_base"),
        ("gpt-5.1-mini", "o200k_base"),
        ("o1", "o200k_base"),
        ("o1-preview", "o200k_base"),
        ("o3-mini", "o200k_base"),
        ("o4-mini", "o200k_base"),
        ("gpt-4", "cl100k_base"),
        ("GPT-4-0613", "cl100k_base"),
        ("gpt-4-32k", "cl100k_base"),
        ("gpt-4-turbo-2024-04-09", "cl100k_base"),
        ("gpt-3.5-turbo", "cl100k_base"),
        ("gpt-3.5-turbo-16k", "cl100k_base"),
        ("gpt-35-turbo", "cl100k_base"),
        ("text-embedding-3-small", "cl100k_base"),
        ("text-embedding-3-large", "cl100k_base"),
        ("text-embedding-ada-002", "cl100k_base"),
        ("openai/gpt-4", "cl100k_base"),
        ("ft:gpt-3.5-turbo-0125:acme::abc123", "cl100k_base"),
        ("ft:gpt-4o-mini-2024-07-18:acme::abc123", "o200k_base"),
        ("gpt-40", "o200k_base"),  # not gpt-4: unknown, so the stand-in
        ("claude-3-5-sonnet", "o200k_base"),
        ("llama3.1:8b", "o200k_base"),
        ("", "o200k_base"),
    ],
)
def test_encoding_for(model, encoding):
    assert encoding_for(model) == encoding


@pytest.mark.parametrize("real", [True, False])
def test_an_empty_answer_is_no_completion_tokens(real):
    estimate = estimate_usage(
        "gpt-4o-mini", [{"role": "user", "content": "How do I reset my password?"}], "", real=real
    )
    assert estimate.completion_tokens == 0
    assert estimate.total_tokens == estimate.prompt_tokens > 0


def test_estimates_are_frozen():
    estimate = estimate_usage("gpt-4o", [], "", real=False)
    assert estimate == Estimate(3, 0, 3, "chars/4")
    with pytest.raises(AttributeError):
        estimate.prompt_tokens = 1  # type: ignore[misc]


@needs_bpe
@pytest.mark.parametrize("model", ["gpt-4o", "gpt-4"])
def test_texts_beyond_bpe_openais_limits_are_counted(model):
    # bpe-openai refuses 1,000,000 characters or 200,000 tokens at once. "hello" and each " world" or
    # " hello" are one token, the trailing space one more.
    assert count_tokens("hello world " * 100_000, model)[0] == 200_001
    # No space between two letters to cut at: cut anyway, within a token or two per cut.
    text = "日本語のテキストです。" * 40_000
    assert abs(count_tokens(text, model)[0] - 40_000 * count_tokens("日本語のテキストです。", model)[0]) <= 20


@needs_bpe
def test_text_that_is_not_valid_unicode_is_counted():
    # A lone surrogate (JSON can carry one) counts as the replacement character.
    assert count_tokens("a\ud800b", "gpt-4o") == (3, "o200k_base")


# Eight threads ask for both encodings at once in a fresh interpreter; loading is slowed down so that
# without the lock every thread would load its own copy.
THREADS = """
import json, threading, time
import bpe_openai
from pgcache.tokens import count_tokens

loads = []
real_get_encoding = bpe_openai.get_encoding
def slow_get_encoding(name):
    loads.append(name)
    time.sleep(0.2)
    return real_get_encoding(name)
bpe_openai.get_encoding = slow_get_encoding

TEXTS = ["hello world", "How do I reset my password?", "日本語のテキストです。", "hello world " * 50]
start = threading.Barrier(8)
results = [None] * 8
def work(i):
    start.wait()
    results[i] = [count_tokens(text, model) for model in ("gpt-4o", "gpt-4") for text in TEXTS]
threads = [threading.Thread(target=work, args=(i,)) for i in range(8)]
for thread in threads:
    thread.start()
for thread in threads:
    thread.join()
print(json.dumps({"loads": sorted(loads), "results": results}))
"""


@needs_bpe
def test_threads_counting_at_once_load_each_encoding_once_and_agree():
    done = subprocess.run(
        [sys.executable, "-c", THREADS], cwd=REPO, capture_output=True, text=True, timeout=120, check=True
    )
    out = json.loads(done.stdout)
    assert out["loads"] == ["cl100k_base", "o200k_base"]
    first = out["results"][0]
    assert all(result == first for result in out["results"])
    assert first[:4] == [[2, "o200k_base"], [7, "o200k_base"], [8, "o200k_base"], [101, "o200k_base"]]
    assert [label for _, label in first[4:]] == ["cl100k_base"] * 4


def test_importing_the_module_does_not_import_bpe_openai():
    # Importing bpe-openai takes most of a second and ~150 MB: only a process that counts should pay it.
    code = (
        "import sys, pgcache.tokens as t; before = 'bpe_openai' in sys.modules; "
        "t.count_tokens('x', 'gpt-4o', real=False); print(before, 'bpe_openai' in sys.modules)"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=60, check=True
    )
    assert done.stdout.split() == ["False", "False"]


# bpe-openai hidden from the import system (a None entry in sys.modules makes `import` raise ImportError).
MISSING = """
import sys
sys.modules["bpe_openai"] = None
from pgcache.tokens import count_tokens, estimate_usage
print(count_tokens("hello world", "gpt-4o"), estimate_usage("gpt-4", [{"role": "user", "content": "hi"}], "abcde"))
"""


def test_without_bpe_openai_every_count_is_the_approximation():
    done = subprocess.run(
        [sys.executable, "-c", MISSING], cwd=REPO, capture_output=True, text=True, timeout=60, check=True
    )
    # "user" 1, "hi" 1, plus 3 + 3; the answer ceil(5 / 4) = 2.
    assert done.stdout.strip() == (
        "(3, 'chars/4') Estimate(prompt_tokens=8, completion_tokens=2, total_tokens=10, estimator='chars/4')"
    )


@needs_bpe
def test_the_benchmark_runs_at_toy_size(tmp_path):
    output = tmp_path / "token-estimates.md"
    done = subprocess.run(
        [sys.executable, "-m", "benchmarks.token_estimates", "--toy", "--output", str(output)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    text = output.read_text(encoding="utf-8")
    for heading in ("## Which estimator pgcache uses when", "## chars/4 against the exact counts", "## Speed and cost"):
        assert heading in text
    assert "| FAQ answers | o200k_base | 12 |" in text
    assert "nan" not in text.lower()
