# livekit-bus-bridge developer tasks. The first target (install) is the default.
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install demo test lint types bench check clean proto proto-check schemas schemas-check

install: $(STAMP)

# Re-installs only when pyproject.toml changes (or the venv is missing).
$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install --upgrade pip
	$(BIN)/python -m pip install -e '.[dev]'
	touch $@

demo: install
	$(BIN)/livekit-bridge demo

test: install
	$(BIN)/pytest

lint: install
	$(BIN)/ruff check .
	$(MAKE) --no-print-directory proto-check
	$(MAKE) --no-print-directory schemas-check

# bridge/_proto is generated from protos/ by the pinned grpcio-tools (dev extra); never edit it by hand.
proto: install
	$(BIN)/python scripts/gen_proto.py

# Regenerates into a temp dir and fails, with a diff summary, if bridge/_proto differs from it.
proto-check: install
	$(BIN)/python scripts/gen_proto.py --check

# schemas/ is generated from the protobuf descriptors by `livekit-bridge schemas`; never edit it by hand.
schemas: install
	$(BIN)/livekit-bridge schemas --out schemas

# Regenerates into a temp dir and fails, with a short diff, if schemas/ differs from it.
schemas-check: install
	$(BIN)/livekit-bridge schemas --out schemas --check

types: install
	$(BIN)/mypy

# Benchmarks are kept out of `test` (pyproject's addopts ignores tests/benchmarks), so addopts is
# overridden here. No benchmark yet (pytest exit code 5, or no folder) counts as success for bench only.
bench: install
	@if [ ! -d tests/benchmarks ]; then echo "bench: no tests/benchmarks folder yet"; exit 0; fi; \
	$(BIN)/pytest tests/benchmarks -p no:cacheprovider -o addopts='--strict-markers -ra'; rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "bench: no benchmarks collected yet"; exit 0; fi; exit $$rc

check: lint types test

clean:
	rm -rf $(VENV) build dist *.egg-info .pytest_cache .mypy_cache .ruff_cache .hypothesis
	find . -name __pycache__ -type d -prune -not -path './.git/*' -exec rm -rf {} +
