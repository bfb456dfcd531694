"""Processes of the single-flight test: each waits for the go file, asks, and writes its answer as JSON.

``single_flight_worker.py GO COUNT``: the modules are imported once, then COUNT processes are
forked from here (each its own interpreter state from then on: its own Cache, pool and
connections), so that fifty of them start in seconds; each writes ``answer-<pid>.json`` beside
the go file. Exits non-zero if any of them failed.
"""

import json
import os
import sys
import time
import traceback
from pathlib import Path

import openai

from pgcache import Cache
from pgcache.embedders import OpenAIEmbedder


def ask(go: Path) -> None:
    llm = openai.OpenAI(max_retries=0)
    cache = Cache.from_env(llm=llm, embedder=OpenAIEmbedder(client=llm))
    cache.database()  # connect before the race starts
    (go.parent / f"ready-{os.getpid()}").touch()
    while not go.exists():
        time.sleep(0.005)
    result = cache.query("What is SQL injection?")
    cache.close()
    answer = {"status": result.status, "content": result.content}
    (go.parent / f"answer-{os.getpid()}.json").write_text(json.dumps(answer))


def main() -> int:
    go, count = Path(sys.argv[1]), int(sys.argv[2])
    children = []
    for _ in range(count):
        pid = os.fork()
        if pid == 0:
            try:
                ask(go)
                code = 0
            except BaseException:  # reported on stderr; the parent's exit code says it failed
                traceback.print_exc()
                code = 1
            os._exit(code)
        children.append(pid)
    failed = sum(os.waitpid(pid, 0)[1] != 0 for pid in children)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
