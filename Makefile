# orchestrate: one Makefile for the library, the CLI, the Lua module, the
# tests, the benchmarks and the demo. `make help` lists the targets.

PREFIX  ?= /usr/local
DESTDIR ?=
BUILD   ?= build
CC      ?= cc
SAN     ?=

VERSION  := 0.1.0
SOMAJOR  := 0

PKGS     := lua5.4 libuv libcurl libpq sqlite3 jansson libmicrohttpd libcrypto
PKG_CFLAGS := $(shell pkg-config --cflags $(PKGS) 2>/dev/null)
PKG_LIBS   := $(shell pkg-config --libs $(PKGS) 2>/dev/null)
# orch.so is loaded by a Lua interpreter that already holds Lua: no -llua.
MOD_LIBS   := $(filter-out -llua5.4,$(PKG_LIBS))

WARN := -Wall -Wextra -Werror -Wshadow -Wundef -Wwrite-strings \
        -Wmissing-declarations -Wno-unused-parameter
OPT  ?= -O2 -g
ifeq ($(SAN),1)
OPT  := -O1 -g -fno-omit-frame-pointer -fsanitize=address,undefined \
        -fno-sanitize-recover=undefined
LDSAN := -fsanitize=address,undefined
endif

CFLAGS_ALL  = -std=c11 -D_GNU_SOURCE -pthread -fPIC -fvisibility=hidden \
              -I$(BUILD)/gen \
              $(OPT) $(WARN) -MMD -MP -Iruntime $(PKG_CFLAGS) $(CFLAGS)
LDFLAGS_ALL = -pthread $(LDSAN) $(LDFLAGS)

LIB_SRCS := $(filter-out runtime/main.c runtime/luamod.c,$(wildcard runtime/*.c))
LIB_OBJS := $(LIB_SRCS:runtime/%.c=$(BUILD)/obj/%.o)
# The SQL migrations, embedded into the library (store helper: sql/embed.awk).
SQL_SRCS := $(sort $(wildcard sql/*/*.sql))
LIB_OBJS += $(BUILD)/obj/store_sql.o

LIBA    := $(BUILD)/liborch.a
LIBSO   := $(BUILD)/liborch.so.$(VERSION)
BIN     := $(BUILD)/orchestrate
LUAMOD  := $(BUILD)/orch.so
EMBED   := $(BUILD)/embed
CTEST   := $(BUILD)/test_c
TEST_SRCS := $(wildcard test/test_*.c)
TEST_OBJS := $(TEST_SRCS:test/%.c=$(BUILD)/tobj/%.o)

.PHONY: all deps test test-fast bench demo fuzz install uninstall clean help FORCE
FORCE:

all: $(LIBA) $(LIBSO) $(BIN) $(LUAMOD) $(EMBED) $(BUILD)/orch.pc

help:
	@echo "make          build liborch (.a, .so), orchestrate, orch.so, examples"
	@echo "make deps     install the Debian packages the project uses"
	@echo "make demo     run the main job end to end"
	@echo "make test     build and run every test (also under ASan/UBSan)"
	@echo "make bench    run the benchmarks, write bench/RESULTS.md"
	@echo "make fuzz     fuzz plans, provider answers, spools and config files (clang libFuzzer; FUZZ_SECONDS=60 each)"
	@echo "make install  PREFIX=/usr/local DESTDIR="

$(BUILD)/obj/%.o: runtime/%.c
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS_ALL) -c $< -o $@

# Where the installed scripts live; rewritten only when PREFIX changes.
$(BUILD)/gen/orch_paths.h: FORCE
	@mkdir -p $(dir $@)
	@printf '#define ORCH_DATADIR "%s/share/orchestrate"\n' '$(PREFIX)' > $@.tmp
	@cmp -s $@.tmp $@ && rm -f $@.tmp || mv $@.tmp $@
$(BUILD)/obj/config.o: $(BUILD)/gen/orch_paths.h

$(BUILD)/gen/store_sql.c: $(SQL_SRCS) sql/embed.awk
	@mkdir -p $(dir $@)
	LC_ALL=C awk -f sql/embed.awk $(SQL_SRCS) > $@

$(BUILD)/obj/store_sql.o: $(BUILD)/gen/store_sql.c
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS_ALL) -c $< -o $@

$(BUILD)/tobj/%.o: test/%.c
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS_ALL) -c $< -o $@

$(LIBA): $(LIB_OBJS)
	@rm -f $@
	ar rcs $@ $^

$(LIBSO): $(LIB_OBJS)
	$(CC) -shared -Wl,-soname,liborch.so.$(SOMAJOR) -o $@ $^ $(LDFLAGS_ALL) $(PKG_LIBS) -lm
	ln -sf liborch.so.$(VERSION) $(BUILD)/liborch.so.$(SOMAJOR)
	ln -sf liborch.so.$(SOMAJOR) $(BUILD)/liborch.so

$(BIN): $(BUILD)/obj/main.o $(LIBA)
	$(CC) -o $@ $^ $(LDFLAGS_ALL) $(PKG_LIBS) -lm

$(LUAMOD): $(BUILD)/obj/luamod.o $(LIB_OBJS)
	$(CC) -shared -o $@ $^ $(LDFLAGS_ALL) $(MOD_LIBS) -lm

$(EMBED): examples/embed.c $(LIBA)
	$(CC) $(CFLAGS_ALL) -o $@ $< $(LIBA) $(LDFLAGS_ALL) $(PKG_LIBS) -lm

$(CTEST): $(TEST_OBJS) $(LIBA)
	$(CC) -o $@ $(TEST_OBJS) $(LIBA) $(LDFLAGS_ALL) $(PKG_LIBS) -lm

$(BUILD)/orch.pc: Makefile FORCE
	@mkdir -p $(BUILD)
	@printf 'prefix=%s\nlibdir=$${prefix}/lib\nincludedir=$${prefix}/include\n\nName: orch\nDescription: orchestrate runtime for teams of AI agents\nVersion: %s\nRequires.private: %s\nLibs: -L$${libdir} -lorch\nCflags: -I$${includedir}\n' \
	  '$(PREFIX)' '$(VERSION)' '$(PKGS)' > $@.tmp
	@cmp -s $@.tmp $@ && rm -f $@.tmp || mv $@.tmp $@

# ---- dependencies -----------------------------------------------------

deps:
	@sh .ci/deps.sh

# Run deps first when something is missing (quiet when all is present).
.deps-ok: .ci/deps.sh
	@sh .ci/deps.sh && touch $@

# ---- tests ------------------------------------------------------------

test: .deps-ok
	@sh test/run.sh

# ---- benchmarks, demo -------------------------------------------------

bench: .deps-ok all
	@sh bench/run.sh

demo: .deps-ok all
	@sh examples/demo.sh

# ---- fuzzing (clang's libFuzzer, ASan + UBSan) -----------------------
# make fuzz [FUZZ_SECONDS=60]: builds build-fuzz/fuzz_plan, fuzz_gap,
# fuzz_llm, fuzz_spool, fuzz_config and fuzz_pattern from the sources and
# runs each for FUZZ_SECONDS over fuzz/corpus (new inputs go to
# build-fuzz/corpus-*, crashes to build-fuzz/). fuzz_llm serves each input
# as a provider's answer on loopback to a real model call; fuzz_spool
# replays it as the spool a crash left; fuzz_config loads it as the config
# file; fuzz_pattern runs it as a call of a pattern function in the sandbox
# and in the stock library and compares the two (see each one's header for
# the input layout). Not part of make test.
FUZZ_SECONDS ?= 60
FUZZ_DIR := build-fuzz
# (UBSan stops at its first report, as in SAN=1 builds: by default it
# prints and goes on, and libFuzzer never counts the input as a crash)
FUZZ_FLAGS = -std=c11 -D_GNU_SOURCE -pthread -O1 -g -fno-omit-frame-pointer \
  -fsanitize=fuzzer,address,undefined -fno-sanitize-recover=undefined \
  -I$(FUZZ_DIR)/gen -Iruntime $(PKG_CFLAGS)

$(FUZZ_DIR)/fuzz_%: fuzz/fuzz_%.c $(LIB_SRCS) $(BUILD)/gen/store_sql.c
	@mkdir -p $(FUZZ_DIR)/gen
	cp $(BUILD)/gen/*.h $(BUILD)/gen/store_sql.c $(FUZZ_DIR)/gen/
	clang $(FUZZ_FLAGS) -o $@ $< $(LIB_SRCS) $(FUZZ_DIR)/gen/store_sql.c \
	  $(PKG_LIBS) -lm

fuzz: .deps-ok all $(FUZZ_DIR)/fuzz_plan $(FUZZ_DIR)/fuzz_gap $(FUZZ_DIR)/fuzz_llm \
  $(FUZZ_DIR)/fuzz_spool $(FUZZ_DIR)/fuzz_config $(FUZZ_DIR)/fuzz_pattern
	@mkdir -p $(FUZZ_DIR)/corpus-plan $(FUZZ_DIR)/corpus-gap $(FUZZ_DIR)/corpus-llm
	cd $(FUZZ_DIR) && ./fuzz_plan -max_total_time=$(FUZZ_SECONDS) -max_len=4096 \
	  -dict=../fuzz/plan.dict corpus-plan ../fuzz/corpus/plan
	cd $(FUZZ_DIR) && FUZZ_SCRIPTS=../scripts ./fuzz_gap -max_total_time=$(FUZZ_SECONDS) \
	  -max_len=2048 -dict=../fuzz/plan.dict corpus-gap ../fuzz/corpus/gap
	cd $(FUZZ_DIR) && ./fuzz_llm -max_total_time=$(FUZZ_SECONDS) -max_len=4096 \
	  -timeout=30 -dict=../fuzz/llm.dict corpus-llm ../fuzz/corpus/llm
	@mkdir -p $(FUZZ_DIR)/corpus-spool $(FUZZ_DIR)/corpus-config
	cd $(FUZZ_DIR) && UBSAN_OPTIONS=halt_on_error=1 ./fuzz_spool \
	  -max_total_time=$(FUZZ_SECONDS) -max_len=8192 -close_fd_mask=2 \
	  -dict=../fuzz/spool.dict corpus-spool ../fuzz/corpus/spool
	cd $(FUZZ_DIR) && UBSAN_OPTIONS=halt_on_error=1 ./fuzz_config \
	  -max_total_time=$(FUZZ_SECONDS) -max_len=4096 -close_fd_mask=1 \
	  -dict=../fuzz/config.dict corpus-config ../fuzz/corpus/config
	@mkdir -p $(FUZZ_DIR)/corpus-pattern
	cd $(FUZZ_DIR) && UBSAN_OPTIONS=halt_on_error=1 ./fuzz_pattern \
	  -max_total_time=$(FUZZ_SECONDS) -max_len=256 \
	  -dict=../fuzz/pattern.dict corpus-pattern ../fuzz/corpus/pattern

# ---- install ----------------------------------------------------------

install: all
	install -d $(DESTDIR)$(PREFIX)/lib $(DESTDIR)$(PREFIX)/include \
	  $(DESTDIR)$(PREFIX)/bin $(DESTDIR)$(PREFIX)/lib/pkgconfig \
	  $(DESTDIR)$(PREFIX)/lib/lua/5.4 $(DESTDIR)$(PREFIX)/share/orchestrate
	install -m 644 $(LIBA) $(DESTDIR)$(PREFIX)/lib/
	install -m 755 $(LIBSO) $(DESTDIR)$(PREFIX)/lib/
	ln -sf liborch.so.$(VERSION) $(DESTDIR)$(PREFIX)/lib/liborch.so.$(SOMAJOR)
	ln -sf liborch.so.$(SOMAJOR) $(DESTDIR)$(PREFIX)/lib/liborch.so
	install -m 644 runtime/orch.h $(DESTDIR)$(PREFIX)/include/
	install -m 644 $(BUILD)/orch.pc $(DESTDIR)$(PREFIX)/lib/pkgconfig/
	install -m 755 $(BIN) $(DESTDIR)$(PREFIX)/bin/
	install -m 755 $(LUAMOD) $(DESTDIR)$(PREFIX)/lib/lua/5.4/
	cp -R scripts sql $(DESTDIR)$(PREFIX)/share/orchestrate/

uninstall:
	rm -f $(DESTDIR)$(PREFIX)/lib/liborch.* $(DESTDIR)$(PREFIX)/include/orch.h \
	  $(DESTDIR)$(PREFIX)/lib/pkgconfig/orch.pc $(DESTDIR)$(PREFIX)/bin/orchestrate \
	  $(DESTDIR)$(PREFIX)/lib/lua/5.4/orch.so
	rm -rf $(DESTDIR)$(PREFIX)/share/orchestrate

clean:
	rm -rf build build-asan build-fuzz .deps-ok

-include $(LIB_OBJS:.o=.d) $(TEST_OBJS:.o=.d) $(BUILD)/obj/main.d $(BUILD)/obj/luamod.d
