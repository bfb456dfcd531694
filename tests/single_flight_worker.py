"""One process of the single-flight test: wait for the go file, ask, print the answer as JSON."""

import json
import os
import sys
import time
from pathlib import Path

import openai

from pgcache import Cache
from pgcache.embedders import OpenAIEmbedder

go = Path(sys.argv[1])
llm = openai.OpenAI(max_retries=0)
cache = Cache.from_env(llm=llm, embedder=OpenAIEmbedder(client=llm))
cache.database()  # connect before the race starts
(go.parent / f"ready-{os.getpid()}").touch()
while not go.exists():
    time.sleep(0.005)
result = cache.query("What is SQL injection?")
cache.close()
print(json.dumps({"status": result.status, "content": result.content}))
