# authproxy build.
#
#   make            build build/authproxy
#   make run        install missing packages, build, start with the embedded defaults
#   make test       install missing packages, build, run unit + e2e tests, then again under ASan+UBSan,
#                   then a short run of every fuzz harness
#   make unit       unit tests only (cmocka)
#   make e2e        end-to-end tests only (pytest, real daemon)
#   make attack     the attack suite only (tests/attack: pytest, real daemon and sandboxes)
#   make fuzz       run each libFuzzer harness for FUZZ_SECONDS
#   make bench      run the benchmarks in bench/
#   make valgrind   e2e tests with the daemon under valgrind memcheck (slow), then a leak scan
#
# BUILD selects the flavour: BUILD=release (default) or BUILD=asan. Each has its own
# directory under build/, so both can exist side by side.

BUILD    ?= release
PKGS     := openssl libevent libevent_openssl libevent_pthreads jansson sqlite3 libnftables
CC       ?= cc
PYTHON   := /usr/bin/python3

ifeq ($(BUILD),asan)
  OUT      := build/asan
  SANFLAGS := -fsanitize=address,undefined -fno-sanitize-recover=undefined -fno-omit-frame-pointer
  OPTFLAGS := -O1 -g
else
  OUT      := build
  SANFLAGS :=
  OPTFLAGS := -O2 -g
endif

VERSION  := 0.1.0
CPPFLAGS += -D_GNU_SOURCE -Isrc -DAUTHPROXY_VERSION=\"$(VERSION)\"
CFLAGS   += -std=c11 -Wall -Wextra -Werror -Wshadow -Wstrict-prototypes -Wmissing-prototypes \
            -fno-strict-aliasing -pthread $(OPTFLAGS) $(SANFLAGS) \
            $(shell pkg-config --cflags $(PKGS) 2>/dev/null)
LDFLAGS  += -pthread $(SANFLAGS)
LDLIBS   += $(shell pkg-config --libs $(PKGS) 2>/dev/null)

SRCS      := $(filter-out src/main.c,$(wildcard src/*.c))
OBJS      := $(SRCS:src/%.c=$(OUT)/obj/%.o)
LIB       := $(OUT)/libauthproxy.a
BIN       := $(OUT)/authproxy
UNIT_SRCS := $(wildcard tests/unit/test_*.c)
UNIT_BINS := $(UNIT_SRCS:tests/unit/%.c=$(OUT)/tests/%)

.PHONY: all deps run test unit e2e attack test-release test-asan fuzz bench valgrind clean format

all: $(BIN)

$(OUT)/obj/%.o: src/%.c $(wildcard src/*.h) | $(OUT)/obj
	$(CC) $(CPPFLAGS) $(CFLAGS) -c -o $@ $<

$(LIB): $(OBJS)
	ar rcs $@ $^

$(BIN): $(OUT)/obj/main.o $(LIB)
	$(CC) $(LDFLAGS) -o $@ $^ $(LDLIBS)

$(OUT)/tests/%: tests/unit/%.c $(wildcard tests/unit/*.h) $(LIB) | $(OUT)/tests
	$(CC) $(CPPFLAGS) -Itests/unit $(CFLAGS) $(shell pkg-config --cflags cmocka) -o $@ $< $(LIB) \
	      $(LDFLAGS) $(LDLIBS) $(shell pkg-config --libs cmocka)

$(OUT)/obj $(OUT)/tests:
	mkdir -p $@

# Installs what is missing (apt), once per machine; a no-op when everything is present.
deps:
	@scripts/install-deps.sh

run: deps
	@$(MAKE) --no-print-directory all
	@scripts/run-demo.sh

unit: $(UNIT_BINS)
	@scripts/run-unit.sh $(UNIT_BINS)

e2e: $(BIN)
	AUTHPROXY_BIN=$(abspath $(BIN)) $(PYTHON) -m pytest -q -p no:cacheprovider tests/e2e

attack: $(BIN)
	AUTHPROXY_BIN=$(abspath $(BIN)) $(PYTHON) -m pytest -q -p no:cacheprovider tests/attack

test-release:
	@$(MAKE) --no-print-directory BUILD=release unit e2e attack

test-asan:
	@$(MAKE) --no-print-directory BUILD=asan unit e2e attack

# The fuzz step is a short smoke run of every harness (FUZZ_SECONDS each): it proves they build
# and catches shallow regressions; long campaigns are `make fuzz FUZZ_SECONDS=...`.
test: deps
	@$(MAKE) --no-print-directory test-release
	@$(MAKE) --no-print-directory test-asan
	@FUZZ_SECONDS=$${FUZZ_SECONDS:-10} scripts/run-fuzz.sh

fuzz:
	@scripts/run-fuzz.sh

bench: $(BIN)
	@bench/run.sh
	@bench/callbacks.sh

# Issue 6: zero leaks and memory errors in src/ under memcheck (scripts/valgrind-e2e.sh).
valgrind: $(BIN)
	@scripts/valgrind-e2e.sh $(BIN) $(VALGRIND_TESTS)

format:
	clang-format -i src/*.c src/*.h tests/unit/*.c tests/unit/*.h

clean:
	rm -rf build
