# almabridge — make | make setup | make test | make run | make SANITIZER=address|undefined|address,undefined|thread
CC      ?= cc
SANITIZER ?=
comma   := ,
BUILD   := build$(if $(SANITIZER),-$(subst $(comma),+,$(SANITIZER)))
PKGS    := libevent libevent_openssl libevent_pthreads openssl rdkafka hiredis libcjson libxml-2.0 libcurl
VERSION := $(shell cat VERSION 2>/dev/null || echo 0.0.0)

WARN    := -Wall -Wextra -Wstrict-prototypes -Wwrite-strings -Wshadow -Wno-unused-parameter
CFLAGS  ?= -O2 -g
CFLAGS  += -std=c11 -D_GNU_SOURCE -pthread $(WARN) -MMD -MP -I. -Icore -Isinks \
           -DAB_VERSION='"$(VERSION)"' $(shell pkg-config --cflags $(PKGS) 2>/dev/null)
LDLIBS  += $(shell pkg-config --libs $(PKGS) 2>/dev/null) -pthread
ifdef CI
CFLAGS  += -Werror
endif
ifneq ($(SANITIZER),)
CFLAGS  += -fsanitize=$(SANITIZER) -fno-omit-frame-pointer -O1
# UBSan only prints by default: make every report fatal so that the tests see it
CFLAGS  += $(if $(findstring undefined,$(SANITIZER)),-fno-sanitize-recover=undefined)
LDFLAGS += -fsanitize=$(SANITIZER)
endif

CORE_SRC  := $(wildcard core/*.c) $(wildcard sinks/*.c)
CORE_OBJ  := $(CORE_SRC:%.c=$(BUILD)/obj/%.o)
UNIT_SRC  := $(wildcard tests/unit/*_test.c)
UNIT_BIN  := $(UNIT_SRC:tests/unit/%.c=$(BUILD)/tests/%)
TOOLS_SRC := $(wildcard tests/tools/*.c)
TOOLS_BIN := $(TOOLS_SRC:tests/tools/%.c=$(BUILD)/tools/%)
FUZZ_SRC  := $(wildcard tests/fuzz/*_fuzz.c)
# ThreadSanitizer builds link the C11-threads shim into every binary (tests/shim).
SAN_OBJ   := $(if $(filter thread,$(SANITIZER)),$(BUILD)/obj/tests/shim/tsan_c11threads.o)

.PHONY: all setup setup-test setup-fuzz test test-containers unit e2e run clean format fuzz fuzz-long bench bench-tools bench-smoke bench-smoke-record docs man install
.SECONDARY:

all: $(BUILD)/almabridge $(UNIT_BIN) $(TOOLS_BIN) $(BUILD)/shim/slowsync.so

CMD_OBJ   := $(patsubst %.c,$(BUILD)/obj/%.o,$(wildcard cmd/*.c))

$(BUILD)/almabridge: $(CMD_OBJ) $(SAN_OBJ) $(BUILD)/libalmabridge.a
	$(CC) $(LDFLAGS) -o $@ $^ $(LDLIBS)

$(BUILD)/libalmabridge.a: $(CORE_OBJ)
	@mkdir -p $(@D)
	rm -f $@ && $(AR) rcs $@ $^

$(BUILD)/obj/%.o: %.c
	@mkdir -p $(@D)
	$(CC) $(CFLAGS) -c -o $@ $<

$(BUILD)/tests/%: $(BUILD)/obj/tests/unit/%.o $(SAN_OBJ) $(BUILD)/libalmabridge.a
	@mkdir -p $(@D)
	$(CC) $(LDFLAGS) -o $@ $^ $(LDLIBS)

$(BUILD)/tools/%: $(BUILD)/obj/tests/tools/%.o $(SAN_OBJ) $(BUILD)/libalmabridge.a
	@mkdir -p $(@D)
	$(CC) $(LDFLAGS) -o $@ $^ $(LDLIBS)

# LD_PRELOAD fault injection for the end-to-end tests (a slow or failing disk).
$(BUILD)/shim/slowsync.so: tests/shim/slowsync.c
	@mkdir -p $(@D)
	$(CC) -shared -fPIC -O2 -Wall -o $@ $< -ldl

# `make setup` installs what building and running need; `make setup-test` (run by
# `make test`) adds what only the tests need. Idempotent, non-interactive, and no system
# service is enabled or started (policy-rc.d refuses service starts during the install).
# Works on slim images too: /usr/share/man/man1 is created first (debian:12-slim drops
# /usr/share/man, and the JRE's post-install script dies without it).
DEBS      := build-essential pkg-config libevent-dev libssl-dev librdkafka-dev libhiredis-dev \
             libcjson-dev libxml2-dev curl openssl ca-certificates libcurl4-openssl-dev
TEST_DEBS := redis-server kcat maven default-jdk-headless python3 python3-dev python3-venv python3-pytest \
             haproxy jq valgrind systemd
VENV      := .cache/venv
PYTHON    := $(VENV)/bin/python3
EXAMPLES_VENV := .cache/venv-examples
define apt_install
	@if [ "$$(id -u)" != 0 ]; then SUDO=sudo; fi; \
	missing=$$(for p in $(1); do dpkg-query -W -f='$${Status}' $$p 2>/dev/null | \
	    grep -q 'install ok installed' || echo $$p; done); \
	if [ -n "$$missing" ]; then \
	    echo "installing: $$missing"; \
	    printf '#!/bin/sh\nexit 101\n' | $$SUDO tee /usr/sbin/policy-rc.d >/dev/null; \
	    $$SUDO mkdir -p /usr/share/man/man1; \
	    $$SUDO chmod +x /usr/sbin/policy-rc.d; \
	    $$SUDO env DEBIAN_FRONTEND=noninteractive apt-get update -qq && \
	    $$SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing; \
	    rc=$$?; $$SUDO rm -f /usr/sbin/policy-rc.d; exit $$rc; \
	else echo "all Debian packages present"; fi
endef
setup:
	$(call apt_install,$(DEBS))

setup-test:
	$(call apt_install,$(DEBS) $(TEST_DEBS))
	@[ -x $(PYTHON) ] || /usr/bin/python3 -m venv --system-site-packages $(VENV)
	@$(PYTHON) -m pip install -q --disable-pip-version-check -r tests/requirements.txt
	@[ -x $(EXAMPLES_VENV)/bin/python3 ] || /usr/bin/python3 -m venv $(EXAMPLES_VENV)
	@$(EXAMPLES_VENV)/bin/python3 -m pip install -q --disable-pip-version-check -r examples/requirements.txt

test: setup-test all
	ALMABRIDGE_BUILD=$(BUILD) $(PYTHON) tests/run.py

# The compose stacks built and run in a real container engine (Debian's docker.io; dockerd
# is started with the vfs driver when none runs), with locally built stand-ins for the
# public images: tests/containers/run.sh. CI runs it after `make test`.
CONTAINER_DEBS := docker.io docker-compose mmdebstrap
test-containers: setup-test
	$(call apt_install,$(CONTAINER_DEBS))
	PYTHON=$(abspath $(PYTHON)) tests/containers/run.sh

unit: all
	ALMABRIDGE_BUILD=$(BUILD) python3 tests/run.py --unit-only

run: $(BUILD)/almabridge
	@echo "almabridge on http://127.0.0.1:8080/webhook, file sink ./almabridge-events.jsonl, demo secret 'demo-secret'"
	@echo "send a signed sample from another shell:"
	@echo "  body=tests/fixtures/alma/loan_created.json"
	@echo "  sig=\$$(openssl dgst -sha256 -hmac demo-secret -binary \$$body | base64)"
	@echo "  curl -sS -H 'Content-Type: application/json' -H \"X-Exl-Signature: \$$sig\" --data-binary @\$$body http://127.0.0.1:8080/webhook"
	ALMABRIDGE_SECRET=demo-secret ./$(BUILD)/almabridge

# libFuzzer drivers with ASan+UBSan (tests/fuzz/README.md); `make fuzz-long` runs each for
# 10 million executions, one after another, under nice. `make test` needs neither: it replays
# the corpora with gcc builds of the same drivers.
FUZZ_DEBS := clang libfuzzer-14-dev libclang-rt-14-dev
setup-fuzz:
	$(call apt_install,$(FUZZ_DEBS))

fuzz: setup-fuzz
	$(MAKE) -C tests/fuzz

fuzz-long: fuzz
	$(MAKE) -C tests/fuzz long

# Benchmark tools (bench/README.md): the fixed-rate load generator and the bare-evhttp peer.
BENCH_BIN := $(BUILD)/bench/ratepost $(BUILD)/bench/bare_evhttp
bench-tools: $(BENCH_BIN)

$(BUILD)/bench/ratepost: bench/ratepost.c
	@mkdir -p $(@D)
	$(CC) $(CFLAGS) -o $@ $< $(LDFLAGS) $(LDLIBS) -lm

$(BUILD)/bench/bare_evhttp: bench/peers/bare_evhttp.c
	@mkdir -p $(@D)
	$(CC) $(CFLAGS) -o $@ $< $(LDFLAGS) $(LDLIBS)

# Instructions per webhook under callgrind (500 requests, file sink) against the number in
# bench/smoke-baseline.json: fails above +10 %. `make bench-smoke-record` writes the current
# number as the new baseline (commit it with the change that moved it).
bench-smoke: $(BUILD)/almabridge $(BUILD)/bench/bare_evhttp
	python3 bench/smoke.py --build $(BUILD)

bench-smoke-record: $(BUILD)/almabridge $(BUILD)/bench/bare_evhttp
	python3 bench/smoke.py --build $(BUILD) --record

# Regenerate the README's option reference from the option table.
docs: $(BUILD)/tools/options_md
	python3 tests/tools/readme_options.py $(BUILD)/tools/options_md docs/OPTIONS.md

# The man page almabridge(1), generated from the option tables like --help and the README.
man: $(BUILD)/almabridge.1

$(BUILD)/almabridge.1: $(BUILD)/tools/options_md
	$(BUILD)/tools/options_md --man $(VERSION) > $@.tmp && mv $@.tmp $@

# `make install [PREFIX=/usr/local] [DESTDIR=...]`: the binary and the man page.
PREFIX  ?= /usr/local
install: $(BUILD)/almabridge $(BUILD)/almabridge.1
	install -d $(DESTDIR)$(PREFIX)/bin $(DESTDIR)$(PREFIX)/share/man/man1
	install -m 0755 $(BUILD)/almabridge $(DESTDIR)$(PREFIX)/bin/almabridge
	install -m 0644 $(BUILD)/almabridge.1 $(DESTDIR)$(PREFIX)/share/man/man1/almabridge.1

format:
	clang-format -i $(wildcard cmd/*.c core/*.[ch] sinks/*.[ch] tests/unit/*.[ch])

clean:
	rm -rf build build-*

-include $(shell find $(BUILD) -name '*.d' 2>/dev/null)
