"""Canonical requests and cache keys (no database needed)."""

from __future__ import annotations

import pytest

from pgcache.errors import InvalidRequestError
from pgcache.keys import canonical_json, final_user_text, request_key

MESSAGES = [{"role": "system", "content": "You are terse."}, {"role": "user", "content": "What is SQL injection?"}]


def key(messages=MESSAGES, model="gpt-4o-mini", namespace="default", **params):
    return request_key(messages, model=model, namespace=namespace, params=params)


def test_dict_key_order_does_not_matter():
    reordered = [{"content": m["content"], "role": m["role"]} for m in MESSAGES]
    tools_a = [{"type": "function", "function": {"name": "f", "parameters": {"type": "object", "properties": {}}}}]
    tools_b = [{"function": {"parameters": {"properties": {}, "type": "object"}, "name": "f"}, "type": "function"}]
    assert key(reordered, tools=tools_a).exact_key == key(MESSAGES, tools=tools_b).exact_key


@pytest.mark.parametrize(
    "change",
    [
        {"model": "gpt-4o"},
        {"namespace": "tenant-b"},
        {"temperature": 0.7},
        {"top_p": 0.5},
        {"max_tokens": 10},
        {"seed": 1},
        {"stop": ["\n"]},
        {"n": 2},
        {"tools": [{"type": "function", "function": {"name": "f"}}]},
        {"tool_choice": "none"},
        {"response_format": {"type": "json_object"}},
        {"messages": [{"role": "system", "content": "You are verbose."}, MESSAGES[1]]},
        {"messages": [{"role": "user", "content": "What is SQL injection? "}]},
    ],
)
def test_anything_that_changes_the_output_changes_the_exact_key(change):
    assert key(**change).exact_key != key().exact_key


@pytest.mark.parametrize(
    "change, same_scope",
    [
        ({"messages": [MESSAGES[0], {"role": "user", "content": "Explain SQL injection"}]}, True),
        ({"messages": [{"role": "system", "content": "Be verbose."}, MESSAGES[1]]}, False),
        ({"temperature": 0.7}, False),
        ({"model": "gpt-4o"}, False),
        ({"namespace": "other"}, False),
    ],
)
def test_scope_key_ignores_only_the_final_user_message(change, same_scope):
    assert (key(**change).scope_key == key().scope_key) is same_scope


def test_client_settings_and_api_keys_never_enter_key_or_request():
    plain = key()
    noisy = key(
        timeout=30,
        extra_headers={"Authorization": "Bearer sk-secret"},
        api_key="sk-secret",
        stream=False,
        user="u-1",
        metadata={"trace": "x"},
    )
    assert noisy.exact_key == plain.exact_key
    assert "sk-secret" not in canonical_json(noisy.request)


def test_integral_floats_and_none_are_canonical():
    assert key(temperature=1.0).exact_key == key(temperature=1).exact_key
    assert key(temperature=None).exact_key == key().exact_key


def test_prompt_string_equals_single_user_message():
    assert (
        request_key("hi", model="m", namespace="n").exact_key
        == request_key([{"role": "user", "content": "hi"}], model="m", namespace="n").exact_key
    )


def test_final_user_text():
    assert final_user_text(MESSAGES) == "What is SQL injection?"
    parts = [{"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]}]
    assert final_user_text(parts) == "a\nb"
    image = [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "data:,"}}]}]
    assert final_user_text(image) is None
    assert final_user_text([{"role": "assistant", "content": "x"}]) is None


@pytest.mark.parametrize(
    "messages, message",
    [
        ([], "must not be empty"),
        ({"role": "user"}, "prompt string or a list"),
        ([{"role": "wizard", "content": "x"}], "messages[0] has role 'wizard'"),
        ([{"content": "x"}], "messages[0] has role None"),
        (["hello"], "messages[0] must be a dict"),
        ([{"role": "user", "content": 42}], "messages[0].content must be a string"),
    ],
)
def test_malformed_messages_are_named(messages, message):
    with pytest.raises(InvalidRequestError, match=message.replace("[", r"\[").replace("]", r"\]")):
        key(messages)


def test_model_and_namespace_must_be_strings():
    with pytest.raises(InvalidRequestError, match="model"):
        key(model="")
    with pytest.raises(InvalidRequestError, match="namespace"):
        key(namespace=None)
