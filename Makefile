# Everything runs from a local virtual environment in .venv, created on first use.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# The CPU build of PyTorch for the local embedder; install it before
# sentence-transformers so that no multi-GB CUDA build is pulled in.
TORCH ?= torch==2.13.0

.PHONY: install test test-fast lint bench bench-quick bench-large verifier-bench soak redis-server chromium demo clean

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet "$(TORCH)"
	$(BIN)/python -m pip install --quiet -e ".[local,server,dev,bench,langchain,tokens]"
	touch $@

test: install
	$(BIN)/python -m pytest

# The suite without the tests marked slow, for the edit loop; `make test` (and CI) runs everything.
test-fast: install
	$(BIN)/python -m pytest -m "not slow"

# ruff (lint and format) on all the code, mypy on the package; CI runs it before the tests.
LINTED := pgcache tests benchmarks scripts migrations examples
lint: install
	$(BIN)/ruff check $(LINTED)
	$(BIN)/ruff format --check $(LINTED)
	$(BIN)/mypy

# Benchmarks write docs/benchmarks.md: `make bench` (full, ~15 min), `make bench-quick` (< 2 min),
# or any options: `make bench BENCH_ARGS="--quick --only exact,semantic"`.
bench: install redis-server
	$(BIN)/python -m benchmarks $(BENCH_ARGS)

bench-quick: install redis-server
	$(BIN)/python -m benchmarks --quick $(BENCH_ARGS)

# 1M entries, not in CI (<= 75 min, ~30 GB of disk): docs/benchmarks-large.md; BENCH_LARGE_ARGS="--only storage" etc.
bench-large: install
	$(BIN)/python -m benchmarks.large $(BENCH_LARGE_ARGS)

# The learned verifier's measurements, training on the CPU (about an hour on 2 cores; trained
# verifiers are cached in .bench-cache/): docs/verifier-recipes.md, docs/default-verifier.md,
# docs/judge-distillation.md and docs/semantic-quality.md. Needs the evaluation data beside the checkout.
verifier-bench: install
	$(BIN)/python -m benchmarks.verifier_recipes
	$(BIN)/python -m benchmarks.train_default_verifier
	$(BIN)/python -m benchmarks.judge_distillation
	$(BIN)/python benchmarks/faq_replay.py

# A bounded concurrency soak (60 s, 8 workers by default): `make soak SOAK_ARGS="--seconds 300"`.
soak: install
	$(BIN)/python scripts/soak.py $(SOAK_ARGS)

# The Redis baseline needs Debian's redis-server; installed when missing and possible.
redis-server:
	@command -v redis-server >/dev/null || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null && \
		(apt-get update -qq && apt-get install -y -qq redis-server >/dev/null) ; } || \
		echo "redis-server not available: the Redis baseline will be skipped"

# The dashboard's test runs in a real headless Chromium (Debian's chromium); installed when missing and possible.
chromium:
	@command -v chromium >/dev/null || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null && \
		(apt-get update -qq && apt-get install -y -qq chromium >/dev/null) ; } || \
		echo "chromium not available: the dashboard's browser test will be skipped"

demo: install
	PGCACHE_EMBEDDER=local $(BIN)/pgcache warm examples/faqs.tsv --namespace demo --tag demo
	$(BIN)/python examples/demo.py
	PGCACHE_EMBEDDER=local $(BIN)/pgcache report --namespace demo

clean:
	rm -rf $(VENV) build dist .pytest_cache
