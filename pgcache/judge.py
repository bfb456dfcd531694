"""An LLM judge for semantic candidates in the verification band.

A cheap chat model (any OpenAI-compatible endpoint) is asked, strictly and at
temperature 0, whether one answer would serve both requests. Anything but a
clear "yes", including an error or a timeout, counts as "no": a judge that is
down costs hits, never correctness and never an error to the caller.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

_log = logging.getLogger("pgcache")

INSTRUCTIONS = (
    "You decide whether a cached answer may be reused. Given two user requests, reply with exactly one word: "
    "'yes' if a single correct answer fully serves both requests, otherwise 'no'. Requests that differ in "
    "numbers, dates, names, negation, direction or the operation asked for need different answers: reply 'no'."
)


@dataclass
class Verdict:
    same: bool
    prompt_tokens: int = 0
    completion_tokens: int = 0
    error: str | None = None


class LLMJudge:
    """Asks ``model`` through ``client`` (an ``openai.OpenAI``; default: built from the SDK's environment)."""

    def __init__(self, client: Any = None, model: str = "gpt-4o-mini", timeout: float = 10.0) -> None:
        self._client = client
        self.model = model
        self.timeout = timeout

    @property
    def client(self) -> Any:
        if self._client is None:
            import openai

            self._client = openai.OpenAI()
        return self._client

    def verify(self, request: str, cached: str) -> Verdict:
        try:
            completion = self.client.chat.completions.create(
                model=self.model,
                messages=[
                    {"role": "system", "content": INSTRUCTIONS},
                    {"role": "user", "content": f"Request A: {request}\nRequest B: {cached}"},
                ],
                temperature=0,
                max_tokens=2,
                timeout=self.timeout,
            )
        except Exception as exc:  # noqa: BLE001 - any client's failure means "not sure": a miss, never an error
            _log.warning("pgcache: the LLM judge failed (%s); treating the candidate as a miss", type(exc).__name__)
            return Verdict(False, error=type(exc).__name__)
        answer = (completion.choices[0].message.content or "").strip().lower() if completion.choices else ""
        usage = completion.usage
        return Verdict(
            answer.startswith("yes"), usage.prompt_tokens if usage else 0, usage.completion_tokens if usage else 0
        )
