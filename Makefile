# almabridge — make | make setup | make test | make run | make SANITIZER=address|undefined|thread
CC      ?= cc
SANITIZER ?=
BUILD   := build$(if $(SANITIZER),-$(SANITIZER))
PKGS    := libevent libevent_openssl libevent_pthreads openssl rdkafka hiredis libcjson libxml-2.0
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
LDFLAGS += -fsanitize=$(SANITIZER)
endif

CORE_SRC  := $(wildcard core/*.c) $(wildcard sinks/*.c)
CORE_OBJ  := $(CORE_SRC:%.c=$(BUILD)/obj/%.o)
UNIT_SRC  := $(wildcard tests/unit/*_test.c)
UNIT_BIN  := $(UNIT_SRC:tests/unit/%.c=$(BUILD)/tests/%)
TOOLS_SRC := $(wildcard tests/tools/*.c)
TOOLS_BIN := $(TOOLS_SRC:tests/tools/%.c=$(BUILD)/tools/%)
FUZZ_SRC  := $(wildcard tests/fuzz/*_fuzz.c)

.PHONY: all setup test unit e2e run clean format fuzz bench docs
.SECONDARY:

all: $(BUILD)/almabridge $(UNIT_BIN) $(TOOLS_BIN) $(BUILD)/shim/slowsync.so

CMD_OBJ   := $(patsubst %.c,$(BUILD)/obj/%.o,$(wildcard cmd/*.c))

$(BUILD)/almabridge: $(CMD_OBJ) $(BUILD)/libalmabridge.a
	$(CC) $(LDFLAGS) -o $@ $^ $(LDLIBS)

$(BUILD)/libalmabridge.a: $(CORE_OBJ)
	@mkdir -p $(@D)
	$(AR) rcs $@ $^

$(BUILD)/obj/%.o: %.c
	@mkdir -p $(@D)
	$(CC) $(CFLAGS) -c -o $@ $<

$(BUILD)/tests/%: $(BUILD)/obj/tests/unit/%.o $(BUILD)/libalmabridge.a
	@mkdir -p $(@D)
	$(CC) $(LDFLAGS) -o $@ $^ $(LDLIBS)

$(BUILD)/tools/%: $(BUILD)/obj/tests/tools/%.o $(BUILD)/libalmabridge.a
	@mkdir -p $(@D)
	$(CC) $(LDFLAGS) -o $@ $^ $(LDLIBS)

# LD_PRELOAD fault injection for the end-to-end tests (a slow or failing disk).
$(BUILD)/shim/slowsync.so: tests/shim/slowsync.c
	@mkdir -p $(@D)
	$(CC) -shared -fPIC -O2 -Wall -o $@ $< -ldl

# Installs every Debian package the project needs; idempotent and non-interactive.
DEBS := build-essential pkg-config libevent-dev libssl-dev librdkafka-dev libhiredis-dev \
        libcjson-dev libxml2-dev redis-server kcat curl openssl ca-certificates \
        python3 python3-pytest maven default-jre-headless
setup:
	@if [ "$$(id -u)" != 0 ]; then SUDO=sudo; fi; \
	missing=$$(for p in $(DEBS); do dpkg-query -W -f='$${Status}' $$p 2>/dev/null | \
	    grep -q 'install ok installed' || echo $$p; done); \
	if [ -n "$$missing" ]; then \
	    echo "installing: $$missing"; \
	    $$SUDO env DEBIAN_FRONTEND=noninteractive apt-get update -qq && \
	    $$SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing; \
	else echo "all Debian packages present"; fi

test: all
	ALMABRIDGE_BUILD=$(BUILD) python3 tests/run.py

unit: all
	ALMABRIDGE_BUILD=$(BUILD) python3 tests/run.py --unit-only

run: $(BUILD)/almabridge
	@echo "almabridge on http://127.0.0.1:8080/webhook, file sink ./almabridge-events.jsonl, demo secret 'demo-secret'"
	@echo "send a signed sample from another shell:"
	@echo "  body=tests/fixtures/alma/loan_created.json"
	@echo "  sig=\$$(openssl dgst -sha256 -hmac demo-secret -binary \$$body | base64)"
	@echo "  curl -sS -H 'Content-Type: application/json' -H \"X-Exl-Signature: \$$sig\" --data-binary @\$$body http://127.0.0.1:8080/webhook"
	ALMABRIDGE_SECRET=demo-secret ./$(BUILD)/almabridge

fuzz:
	$(MAKE) -C tests/fuzz

# Regenerate the README's option reference from the option table.
docs: $(BUILD)/tools/options_md
	python3 tests/tools/readme_options.py $(BUILD)/tools/options_md README.md

format:
	clang-format -i $(wildcard cmd/*.c core/*.[ch] sinks/*.[ch] tests/unit/*.[ch])

clean:
	rm -rf build build-*

-include $(shell find $(BUILD) -name '*.d' 2>/dev/null)
