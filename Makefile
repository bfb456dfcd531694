# Everything runs from a local virtual environment in .venv, created on first use.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# The CPU build of PyTorch for the local embedder; install it before
# sentence-transformers so that no multi-GB CUDA build is pulled in.
TORCH ?= torch==2.13.0

.PHONY: install test demo clean

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet "$(TORCH)"
	$(BIN)/python -m pip install --quiet -e ".[local,dev]"
	touch $@

test: install
	$(BIN)/python -m pytest

demo: install
	PGCACHE_EMBEDDER=local $(BIN)/pgcache warm examples/faqs.tsv --namespace demo --tag demo
	$(BIN)/python examples/demo.py

clean:
	rm -rf $(VENV) build dist .pytest_cache
