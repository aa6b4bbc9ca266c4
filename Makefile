# llm-sidecar. The two commands of the quick start:
#   make run    installs missing Debian packages, builds a release binary, serves with $(CONFIG)
#   make test   installs what the tests need, builds and runs every test
SHELL := /bin/bash
PREFIX ?= /usr/local
DESTDIR ?=
UNITDIR ?= /etc/systemd/system
CONFIG ?= etc/llm-sidecar/config.toml
SWIFT ?= swift
BIN := .build/release/llm-sidecar

# System libraries we link (OpenSSL for TLS and SHA-256, SQLite for the cache) and tools.
BUILD_DEBS := libssl-dev libsqlite3-dev pkg-config ca-certificates
TEST_DEBS := $(BUILD_DEBS) openssl systemd python3-venv
BENCH_DEBS := $(BUILD_DEBS) nginx-light wrk openssl procps util-linux

.PHONY: all build run test bench install uninstall deps test-deps bench-deps clean

all: build

# Installs the listed Debian packages that are missing (apt-get, as root or through sudo).
define ensure_debs
	@missing=""; for p in $(1); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
		echo "installing:$$missing"; \
		if [ "$$(id -u)" = 0 ]; then SUDO=""; else SUDO="sudo"; fi; \
		$$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq $$missing >/dev/null; \
	fi
endef

deps:
	$(call ensure_debs,$(BUILD_DEBS))

test-deps:
	$(call ensure_debs,$(TEST_DEBS))

bench-deps:
	$(call ensure_debs,$(BENCH_DEBS))

build: deps
	$(SWIFT) build -c release --product llm-sidecar

# With the shipped configuration and no OPENAI_API_KEY, the daemon still starts: the upstream key
# line is dropped from a copy, so each client's own Authorization header passes through.
DEFAULT_CONFIG := etc/llm-sidecar/config.toml
RUN_CONFIG := .build/config.without-key.toml
run: build
	@if [ "$(CONFIG)" = "$(DEFAULT_CONFIG)" ] && [ -z "$$OPENAI_API_KEY" ]; then \
		echo "make run: OPENAI_API_KEY is not set: serving without an upstream key; clients' own keys pass through"; \
		sed '/^api_key_env[[:space:]]*=/d' $(DEFAULT_CONFIG) > $(RUN_CONFIG); \
		exec $(BIN) serve --config $(RUN_CONFIG); \
	fi; \
	exec $(BIN) serve --config $(CONFIG)

# The tests parse /metrics with Prometheus' own Python parser and call the sidecar with the
# official `openai` client, from a venv of our own (the stamp names what is installed).
VENV := .build/venv
VENV_STAMP := $(VENV)/.installed-prometheus-client-0.26.0-openai-1.109.1
$(VENV_STAMP):
	python3 -m venv $(VENV)
	$(VENV)/bin/pip install -q prometheus-client==0.26.0 openai==1.109.1
	touch $@

test: test-deps $(VENV_STAMP)
	$(SWIFT) build --build-tests
	LLM_SIDECAR_TEST_PYTHON=$(CURDIR)/$(VENV)/bin/python $(SWIFT) test --skip-build --disable-swift-testing

bench: bench-deps build
	bash bench/run.sh

install: build
	install -D -m 0755 $(BIN) $(DESTDIR)$(PREFIX)/bin/llm-sidecar
	install -d -m 0755 $(DESTDIR)/etc/llm-sidecar
	@if [ -e $(DESTDIR)/etc/llm-sidecar/config.toml ]; then \
		echo "keeping existing $(DESTDIR)/etc/llm-sidecar/config.toml"; \
	else \
		install -m 0644 etc/llm-sidecar/config.toml $(DESTDIR)/etc/llm-sidecar/config.toml; \
	fi
	install -m 0644 etc/llm-sidecar/config.minimal.toml $(DESTDIR)/etc/llm-sidecar/config.minimal.toml
	@if [ -e $(DESTDIR)/etc/default/llm-sidecar ]; then \
		echo "keeping existing $(DESTDIR)/etc/default/llm-sidecar"; \
	else \
		install -D -m 0600 etc/default/llm-sidecar $(DESTDIR)/etc/default/llm-sidecar; \
	fi
	install -d -m 0755 $(DESTDIR)$(UNITDIR)
	sed 's|/usr/local/bin/llm-sidecar|$(PREFIX)/bin/llm-sidecar|g; s|/usr/local/share/doc|$(PREFIX)/share/doc|g' \
		systemd/llm-sidecar.service > $(DESTDIR)$(UNITDIR)/llm-sidecar.service
	install -m 0644 systemd/llm-sidecar.socket $(DESTDIR)$(UNITDIR)/llm-sidecar.socket
	install -D -m 0644 README.md $(DESTDIR)$(PREFIX)/share/doc/llm-sidecar/README.md
	@echo "installed; next: systemctl daemon-reload && systemctl enable --now llm-sidecar"

uninstall:
	rm -f $(DESTDIR)$(PREFIX)/bin/llm-sidecar $(DESTDIR)$(UNITDIR)/llm-sidecar.service $(DESTDIR)$(UNITDIR)/llm-sidecar.socket

clean:
	rm -rf .build
