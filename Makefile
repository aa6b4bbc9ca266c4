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
TEST_DEBS := $(BUILD_DEBS) openssl systemd python3-venv chromium chromium-driver postgresql
BENCH_DEBS := $(BUILD_DEBS) nginx-light wrk openssl procps util-linux postgresql

.PHONY: all build run test bench install uninstall deps test-deps bench-deps clean fuzz bench-framing bench-affinity

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

# The tests parse /metrics with Prometheus' own Python parser, call the sidecar with the
# official `openai` (with its Realtime extra, `websockets`), `anthropic` and `google-genai` clients, decode
# exported spans with `opentelemetry-proto`, and load the
# dashboard in headless Chromium through selenium (with Debian's chromium-driver), from a venv of
# our own (the stamp names what is installed).
VENV := .build/venv
VENV_STAMP := $(VENV)/.installed-prometheus-client-0.26.0-openai-1.109.1-anthropic-2.16.0-websockets-15.0.1-google-genai-3.6.1-opentelemetry-proto-1.45.2-selenium-4.51.0
$(VENV_STAMP):
	python3 -m venv $(VENV)
	$(VENV)/bin/pip install -q prometheus-client==0.26.0 openai==1.109.1 anthropic==2.16.0 websockets==15.0.1 google-genai==3.6.1 opentelemetry-proto==1.45.2 selenium==4.51.0
	touch $@

test: test-deps $(VENV_STAMP)
	$(SWIFT) build --build-tests
	LLM_SIDECAR_TEST_PYTHON=$(CURDIR)/$(VENV)/bin/python $(SWIFT) test --skip-build --disable-swift-testing
	$(MAKE) --no-print-directory fuzz

# libFuzzer over the HTTP framing code (Sources/SidecarCore/HTTP/Framing, without its ByteBuffer
# file), built with swiftc outside SwiftPM: one binary per harness in Tests/Fuzz, each run for
# FUZZ_SECONDS. The corpus grows in .build/fuzz/corpus (not in git), from the committed seeds;
# a crash leaves its input in .build/fuzz/artifacts and fails the target. Where swiftc cannot
# -sanitize=fuzzer, it says so and succeeds.
FUZZ_SECONDS ?= 5
SWIFTC ?= swiftc
FUZZ_DIR := .build/fuzz
FUZZ_TARGETS := request-head response-head body-framer
FRAMING_SOURCES := $(filter-out %+ByteBuffer.swift,$(wildcard Sources/SidecarCore/HTTP/Framing/*.swift))
FUZZ_FLAGS := -O -wmo -swift-version 6 -warnings-as-errors -parse-as-library -module-name FramingFuzz

fuzz:
	@mkdir -p $(FUZZ_DIR)/artifacts
	@printf '@_cdecl("LLVMFuzzerTestOneInput") public func f(_ d: UnsafePointer<UInt8>?, _ n: Int) -> Int32 { 0 }\n' > $(FUZZ_DIR)/probe.swift
	@sanitizers=""; \
	for s in fuzzer,address fuzzer; do \
		if $(SWIFTC) -sanitize=$$s -use-ld=lld -parse-as-library $(FUZZ_DIR)/probe.swift -o $(FUZZ_DIR)/probe >/dev/null 2>&1; then ld=-use-ld=lld; sanitizers=$$s; break; fi; \
		if $(SWIFTC) -sanitize=$$s -parse-as-library $(FUZZ_DIR)/probe.swift -o $(FUZZ_DIR)/probe >/dev/null 2>&1; then ld=; sanitizers=$$s; break; fi; \
	done; \
	if [ -z "$$sanitizers" ]; then echo "make fuzz: skipped: $(SWIFTC) -sanitize=fuzzer does not work here"; exit 0; fi; \
	for t in $(FUZZ_TARGETS); do \
		case $$t in request-head) main=RequestHeadFuzz;; response-head) main=ResponseHeadFuzz;; *) main=BodyFramerFuzz;; esac; \
		$(SWIFTC) $(FUZZ_FLAGS) -sanitize=$$sanitizers $$ld $(FRAMING_SOURCES) Tests/Fuzz/FuzzSupport.swift Tests/Fuzz/$$main.swift \
			-o $(FUZZ_DIR)/$$t || exit 1; \
		mkdir -p $(FUZZ_DIR)/corpus/$$t; \
		if SWIFT_BACKTRACE=enable=no $(FUZZ_DIR)/$$t -max_total_time=$(FUZZ_SECONDS) -timeout=10 -print_final_stats=1 -dict=Tests/Fuzz/http.dict \
			-artifact_prefix=$(FUZZ_DIR)/artifacts/$$t- $(FUZZ_DIR)/corpus/$$t Tests/Fuzz/seeds/$$t > $(FUZZ_DIR)/$$t.log 2>&1; then \
			runs=$$(sed -n 's/^stat::number_of_executed_units: *//p' $(FUZZ_DIR)/$$t.log); \
			rate=$$(sed -n 's/^stat::average_exec_per_sec: *//p' $(FUZZ_DIR)/$$t.log); \
			echo "make fuzz: $$t ($$sanitizers): $$runs runs in $(FUZZ_SECONDS) s ($$rate/s), corpus $$(ls $(FUZZ_DIR)/corpus/$$t | wc -l)"; \
		else \
			tail -40 $(FUZZ_DIR)/$$t.log; echo "make fuzz: $$t FAILED (input in $(FUZZ_DIR)/artifacts)"; exit 1; \
		fi; \
	done

bench: bench-deps build
	bash bench/run.sh

# Nanoseconds per head scan of a typical 18-field chat request (bench/framing), swiftc -O.
bench-framing:
	@mkdir -p .build/bench-framing
	$(SWIFTC) -O -wmo -swift-version 6 -warnings-as-errors -parse-as-library -module-name FramingBench \
		$(FRAMING_SOURCES) bench/framing/FramingBench.swift -o .build/bench-framing/framing-bench
	.build/bench-framing/framing-bench

# Prompt-cache affinity on a simulated agent workload (Tests/SidecarCoreTests/AgentWorkload.swift:
# a shadow provider with one prompt cache per deployment, a manual clock, seeded randomness): the
# provider-cache hit ratio and input dollars with and without affinity, and each deployment's share.
bench-affinity:
	$(SWIFT) build --build-tests
	LLM_SIDECAR_AFFINITY_REPORT=1 $(SWIFT) test --skip-build --disable-swift-testing \
		--filter 'PromptAffinityTests/(testAffinityGetsNearlyTheIdealHitRatioAndPlainRoutingDoesNot|testWeightsHoldOverManyConversations)' \
		2>&1 | grep -v '^Test \(Suite\|Case\)' | grep -v '^\[' | sed '/^$$/N;/^\n$$/D'

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
