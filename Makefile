# lua-vpp: `make demo`, `make`, `make test`, `make test-all`, `make valgrind`,
# `make asan`, `make lint`, `make install PREFIX=DIR`.
# LUA_VERSION is 5.1, 5.2, 5.3, 5.4 or jit (LuaJIT 2.1, which loads 5.1 modules).
LUA_VERSION ?= 5.4
LUA_VERSIONS = 5.1 5.2 5.3 5.4 jit
PREFIX ?= /usr/local
# The one place the version is written: src/vpp.h (vpp._VERSION); the
# rockspecs, the Debian changelog, CHANGELOG.md, vpp(1) and the README are
# checked against it (spec/release_spec.lua).
VERSION := $(shell sed -n 's/^\#define VPP_VERSION *"\(.*\)"/\1/p' src/vpp.h)
DESTDIR ?=
PKG_CONFIG ?= pkg-config
BUSTED ?= busted

# Per Lua: the interpreter, its pkg-config name, the module ABI (install
# paths) and its Debian packages.
LUA_BIN_jit = luajit
LUA_ABI_jit = 5.1
# OpenResty's LuaJIT 2.1: Debian's other luajit conflicts with nginx's Lua module,
# which the fake Graph needs.
LUA_DEB_jit = luajit2 libluajit2-5.1-dev
LUA_DEB_5.1 = lua5.1 liblua5.1-0-dev
LUA ?= $(or $(LUA_BIN_$(LUA_VERSION)),lua$(LUA_VERSION))
LUA_PC ?= $(or $(LUA_BIN_$(LUA_VERSION)),lua$(LUA_VERSION))
LUA_ABI = $(or $(LUA_ABI_$(LUA_VERSION)),$(LUA_VERSION))
LUA_DEB = $(or $(LUA_DEB_$(LUA_VERSION)),lua$(LUA_VERSION) liblua$(LUA_VERSION)-dev)

LUA_CFLAGS ?= $(shell $(PKG_CONFIG) --cflags $(LUA_PC) 2>/dev/null)
CURL_CFLAGS ?= $(shell $(PKG_CONFIG) --cflags libcurl 2>/dev/null)
CURL_LIBS ?= $(shell $(PKG_CONFIG) --libs libcurl 2>/dev/null)
CRYPTO_CFLAGS ?= $(shell $(PKG_CONFIG) --cflags libcrypto 2>/dev/null)
CRYPTO_LIBS ?= $(shell $(PKG_CONFIG) --libs libcrypto 2>/dev/null)

CFLAGS ?= -O2 -g
# What the module needs whatever CFLAGS says (a command-line CFLAGS would
# override a `+=`).
VPP_CFLAGS = -std=c99 -D_GNU_SOURCE -fPIC -Wall -Wextra $(LUA_CFLAGS) $(CURL_CFLAGS) $(CRYPTO_CFLAGS)
# A Lua C module never links liblua: the host provides its symbols (on
# macOS a bundle that leaves them to the loader; untested here).
ifeq ($(shell uname -s),Darwin)
LDFLAGS_SHARED ?= -bundle -undefined dynamic_lookup
else
LDFLAGS_SHARED ?= -shared
endif
LIBS = $(CURL_LIBS) $(CRYPTO_LIBS) -lm -lpthread

MANDIR ?= $(PREFIX)/share/man
BASH_COMPLETION_DIR ?= $(PREFIX)/share/bash-completion/completions
ZSH_COMPLETION_DIR ?= $(PREFIX)/share/zsh/site-functions
FISH_COMPLETION_DIR ?= $(PREFIX)/share/fish/vendor_completions.d
LUA_LIBDIR = $(PREFIX)/lib/lua/$(LUA_ABI)
LUA_SHAREDIR = $(PREFIX)/share/lua/$(LUA_ABI)
BINDIR = $(PREFIX)/bin

# Where the module is built; `make asan` uses a directory of its own.
BUILD ?= build/$(LUA_VERSION)
SRCS = $(wildcard src/*.c)
OBJS = $(patsubst src/%.c,$(BUILD)/obj/%.o,$(SRCS))
CORE = $(BUILD)/vpp/core.so

# What `make test` needs on Debian 12; installed when missing (as root).
DEB_PACKAGES = gcc make pkg-config $(LUA_DEB) \
  libcurl4-openssl-dev libssl-dev lua-cjson lua-busted lua-socket nginx-light \
  libnginx-mod-http-lua openssl ca-certificates luarocks valgrind curl lua-check lua-argparse \
  lua-cqueues lua-luv lua-yaml python3-prometheus-client bash util-linux tinyproxy lua-ldoc

export LUA_PATH := $(CURDIR)/lua/?.lua;$(CURDIR)/lua/?/init.lua;$(CURDIR)/fake-graph/?.lua;;
export LUA_CPATH := $(CURDIR)/$(BUILD)/?.so;;

.PHONY: doc rockspec deb deb-smoke build-cli install-cli all deps demo test test-all valgrind asan tsan fuzz lint bench install uninstall clean

all: $(CORE)

$(CORE): $(OBJS)
	@mkdir -p $(dir $@)
	$(CC) $(LDFLAGS_SHARED) $(LDFLAGS) -o $@ $(OBJS) $(LIBS)

$(BUILD)/obj/%.o: src/%.c src/vpp.h src/compat.h src/codes.h src/curl_codes.h
	@mkdir -p $(dir $@)
	$(CC) $(VPP_CFLAGS) $(CFLAGS) -c -o $@ $<

deps:
	@sh .ci/deps.sh $(DEB_PACKAGES)

# The README's first command: the vpp command against a fake tenant.
demo: deps
	@$(MAKE) -s all
	@$(LUA) fake-graph/demo.lua

test: deps
	$(MAKE) all
	$(BUSTED) --lua=$(LUA) spec

# The suite on every supported Lua, one after the other.
test-all:
	@set -e; for v in $(LUA_VERSIONS); do $(MAKE) --no-print-directory test LUA_VERSION=$$v; done

valgrind: deps
	$(MAKE) all
	VPP_VALGRIND=1 valgrind --quiet --error-exitcode=99 --leak-check=full \
	  --show-leak-kinds=definite,indirect --errors-for-leak-kinds=definite,indirect \
	  --suppressions=spec/valgrind.supp --num-callers=30 \
	  $(LUA) spec/run_busted.lua spec

# The suite with AddressSanitizer (leaks included) and UBSan: the module
# and a small Lua host built instrumented, any report fails the run.
# MAKEFLAGS is dropped so that the specs' own `make install` builds the
# plain module for plain lua.  Then the embedding host with each Lua
# allocation failing in turn (spec/host/): a memory error or a result,
# never a crash, a hang or a leak.
SANITIZE = -fsanitize=address,undefined -fno-sanitize-recover=undefined -fno-omit-frame-pointer
ASAN_BUILD = build/asan-$(LUA_VERSION)
ASAN_ENV = ASAN_OPTIONS=detect_leaks=1:abort_on_error=0:exitcode=99 \
  UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1:exitcode=99
LUA_LIBS = $$($(PKG_CONFIG) --libs $(LUA_PC))
asan: deps
	$(MAKE) all BUILD=$(ASAN_BUILD) CFLAGS="-O1 -g $(SANITIZE)" LDFLAGS="$(SANITIZE)"
	$(CC) -O1 -g $(SANITIZE) $(LUA_CFLAGS) -o $(ASAN_BUILD)/lua_host spec/host/lua_host.c $(LUA_LIBS)
	$(CC) -O1 -g $(SANITIZE) $(LUA_CFLAGS) -o $(ASAN_BUILD)/embed_host spec/host/embed_host.c $(LUA_LIBS) -lpthread -ldl
	env -u MAKEFLAGS -u MFLAGS VPP_BUILD=$(ASAN_BUILD) LUA_CPATH='$(CURDIR)/$(ASAN_BUILD)/?.so;;' $(ASAN_ENV) \
	  LSAN_OPTIONS=suppressions=$(CURDIR)/spec/lsan.supp:print_suppressions=0 \
	  $(ASAN_BUILD)/lua_host spec/run_busted.lua spec
	LUA_CPATH='$(CURDIR)/$(ASAN_BUILD)/?.so;;' $(ASAN_ENV) \
	  LSAN_OPTIONS=suppressions=$(CURDIR)/spec/host/lsan-alloc.supp:print_suppressions=0 \
	  $(LUA) spec/host/run.lua $(ASAN_BUILD)/embed_host alloc

# Two threads, each with its own lua_State, syncing at once through the
# module, under ThreadSanitizer: any data race fails the run.
TSAN_BUILD = build/tsan-$(LUA_VERSION)
tsan: deps
	$(MAKE) all BUILD=$(TSAN_BUILD) CFLAGS="-O1 -g -fsanitize=thread" LDFLAGS="-fsanitize=thread"
	$(CC) -O1 -g -fsanitize=thread $(LUA_CFLAGS) -o $(TSAN_BUILD)/embed_host spec/host/embed_host.c $(LUA_LIBS) -lpthread -ldl
	LUA_CPATH='$(CURDIR)/$(TSAN_BUILD)/?.so;;' TSAN_OPTIONS=halt_on_error=1:exitcode=66 \
	  $(LUA) spec/host/run.lua $(TSAN_BUILD)/embed_host threads 20

# libFuzzer on every parser of untrusted input (fuzz/): each target runs
# FUZZ_SECONDS from the seed corpus in fuzz/corpus/<target>; what it finds
# new goes to build/fuzz/corpus/<target>, crashes to build/fuzz/.
FUZZ_SECONDS ?= 60
FUZZ_TARGETS = $(patsubst fuzz/fuzz_%.c,%,$(wildcard fuzz/fuzz_*.c))
FUZZ_BUILD = build/fuzz-$(LUA_VERSION)
FUZZ_SANITIZE = -fsanitize=address,undefined -fno-sanitize-recover=undefined -fno-omit-frame-pointer
fuzz: deps
	@sh .ci/deps.sh clang libclang-rt-14-dev
	$(MAKE) all CC=clang BUILD=$(FUZZ_BUILD) CFLAGS="-O1 -g -fsanitize=fuzzer-no-link $(FUZZ_SANITIZE)" LDFLAGS="$(FUZZ_SANITIZE)"
	@set -e; for t in $(FUZZ_TARGETS); do \
	  clang -O1 -g -fsanitize=fuzzer $(FUZZ_SANITIZE) $(VPP_CFLAGS) -o $(FUZZ_BUILD)/fuzz_$$t fuzz/fuzz_$$t.c \
	    $(patsubst src/%.c,$(FUZZ_BUILD)/obj/%.o,$(SRCS)) $(LUA_LIBS) $(LIBS); \
	  mkdir -p $(FUZZ_BUILD)/corpus/$$t; \
	  if ! ASAN_OPTIONS=detect_leaks=1 UBSAN_OPTIONS=print_stacktrace=1 \
	    $(FUZZ_BUILD)/fuzz_$$t -max_total_time=$(FUZZ_SECONDS) -max_len=65536 -print_final_stats=1 \
	    -artifact_prefix=$(FUZZ_BUILD)/$$t- $(FUZZ_BUILD)/corpus/$$t fuzz/corpus/$$t >$(FUZZ_BUILD)/$$t.log 2>&1; then \
	    tail -40 $(FUZZ_BUILD)/$$t.log; echo "fuzz $$t: FAILED (log: $(FUZZ_BUILD)/$$t.log)"; exit 1; \
	  fi; \
	  echo "fuzz $$t: $$(sed -n 's/^stat::number_of_executed_units: *//p' $(FUZZ_BUILD)/$$t.log) inputs in $(FUZZ_SECONDS) s, no finding"; \
	done

# lua-vpp against wrk, curl --parallel and Microsoft's Graph JS client, and
# instructions per call under callgrind beside a bare libcurl loop.
bench: deps
	$(MAKE) all
	@mkdir -p build/bench
	$(CC) -O2 $(CURL_CFLAGS) -o build/bench/easy_loop bench/peers/easy_loop.c $(CURL_LIBS)
	@sh .ci/deps.sh wrk time
	@command -v node >/dev/null && command -v npm >/dev/null || sh .ci/deps.sh nodejs npm
	cd bench && npm install --no-audit --no-fund --silent
	$(LUA) bench/run.lua

# luacheck (.luacheckrc), cppcheck and clang-tidy (.clang-tidy) with zero
# findings, every C file as clang-format (.clang-format) would lay it out,
# and the C files in layers: no cycle in who calls whom, system calls only
# in src/platform.c (.ci/layers.lua).
# cppcheck's toomanyconfigs is a note that it tried 12 of compat.h's #if
# combinations (each Lua is compiled and tested on its own), not a finding.
C_FILES = $(SRCS) $(wildcard src/*.h spec/host/*.c fuzz/*.c fuzz/*.h)
lint: deps
	@sh .ci/deps.sh cppcheck clang-tidy clang-format
	luacheck --no-color -q lua spec fake-graph bench examples bin/vpp .ci/layers.lua
	$(LUA) .ci/layers.lua $(SRCS)
	cppcheck --quiet --error-exitcode=1 --enable=warning,performance,portability --std=c99 \
	  --inline-suppr --suppress=missingIncludeSystem --suppress=toomanyconfigs $(LUA_CFLAGS) src/ spec/host/ fuzz/
	clang-tidy --quiet $(SRCS) spec/host/*.c fuzz/*.c -- $(VPP_CFLAGS)
	clang-format --dry-run --Werror $(C_FILES)

# Shell completions, generated from the command's own parser (vpp completion).
COMPLETIONS = $(BUILD)/completions/vpp.bash $(BUILD)/completions/_vpp $(BUILD)/completions/vpp.fish
$(BUILD)/completions/vpp.bash: $(CORE) lua/vpp/cli.lua
	@mkdir -p $(dir $@)
	$(LUA) bin/vpp completion bash > $@.tmp && mv $@.tmp $@
$(BUILD)/completions/_vpp: $(CORE) lua/vpp/cli.lua
	@mkdir -p $(dir $@)
	$(LUA) bin/vpp completion zsh > $@.tmp && mv $@.tmp $@
$(BUILD)/completions/vpp.fish: $(CORE) lua/vpp/cli.lua
	@mkdir -p $(dir $@)
	$(LUA) bin/vpp completion fish > $@.tmp && mv $@.tmp $@

# The HTML reference (LDoc, config.ld) into doc/: the vpp table and the
# client (doc/vpp.luadoc), and the pure Lua modules.
doc: deps
	ldoc .

# The release rockspec, for the tag vVERSION, from the scm one.
RELEASE_ROCKSPEC = rockspecs/lua-vpp-$(VERSION)-1.rockspec
rockspec: $(RELEASE_ROCKSPEC)
$(RELEASE_ROCKSPEC): rockspecs/lua-vpp-scm-1.rockspec src/vpp.h
	sed -e 's/^version = "scm-1"/version = "$(VERSION)-1"/' -e 's/^  branch = "main",/  tag = "v$(VERSION)",/' \
	  -e '/^-- The development rockspec/,/VPP_VERSION\.$$/c\-- Written by `make rockspec` from lua-vpp-scm-1.rockspec: edit that one.' $< > $@

# The command runs on the Lua it was installed for (LUA_SHEBANG); its man
# page and completions go beside it.  install-cli is the command alone (the
# Debian package's module comes from dh-lua).
LUA_SHEBANG ?= /usr/bin/env $(LUA)
build-cli: $(COMPLETIONS)
install-cli: $(COMPLETIONS)
	install -d $(DESTDIR)$(BINDIR) $(DESTDIR)$(BASH_COMPLETION_DIR) $(DESTDIR)$(ZSH_COMPLETION_DIR) $(DESTDIR)$(FISH_COMPLETION_DIR)
	sed '1s|.*|#!$(LUA_SHEBANG)|' bin/vpp > $(DESTDIR)$(BINDIR)/vpp
	chmod 755 $(DESTDIR)$(BINDIR)/vpp
	install -m 644 $(BUILD)/completions/vpp.bash $(DESTDIR)$(BASH_COMPLETION_DIR)/vpp
	install -m 644 $(BUILD)/completions/_vpp $(DESTDIR)$(ZSH_COMPLETION_DIR)/_vpp
	install -m 644 $(BUILD)/completions/vpp.fish $(DESTDIR)$(FISH_COMPLETION_DIR)/vpp.fish

install: $(CORE) install-cli
	install -d $(DESTDIR)$(LUA_LIBDIR)/vpp $(DESTDIR)$(LUA_SHAREDIR)/vpp/cli $(DESTDIR)$(LUA_SHAREDIR)/vpp/loop
	install -d $(DESTDIR)$(MANDIR)/man1
	install -m 644 doc/vpp.1 $(DESTDIR)$(MANDIR)/man1/vpp.1
	install -m 755 $(CORE) $(DESTDIR)$(LUA_LIBDIR)/vpp/core.so
	install -m 644 lua/vpp.lua $(DESTDIR)$(LUA_SHAREDIR)/vpp.lua
	install -m 644 lua/vpp/*.lua $(DESTDIR)$(LUA_SHAREDIR)/vpp/
	install -m 644 lua/vpp/cli/*.lua $(DESTDIR)$(LUA_SHAREDIR)/vpp/cli/
	install -m 644 lua/vpp/loop/*.lua $(DESTDIR)$(LUA_SHAREDIR)/vpp/loop/

# The Debian packages (lua-vpp, lua-vpp-dev) into build/deb/, built from a
# copy of the tree (dpkg-buildpackage writes beside its source), then
# lintian on them: no error, no warning (debian/*.lintian-overrides say why).
DEB_PACKAGES_BUILD = dh-lua debhelper devscripts lintian dpkg-dev fakeroot pkgconf
deb:
	@sh .ci/deps.sh $(DEB_PACKAGES_BUILD) $(DEB_PACKAGES)
	rm -rf build/deb && mkdir -p build/deb/lua-vpp-$(VERSION)
	tar --exclude=./build --exclude=./bench/node_modules --exclude=./.git -cf - . | tar -C build/deb/lua-vpp-$(VERSION) -xf -
	cd build/deb/lua-vpp-$(VERSION) && dpkg-buildpackage -us -uc -b
	lintian --fail-on error,warning build/deb/*.changes
	@ls build/deb/*.deb

# The packages installed on this machine (apt-get, as root), then the
# installed command alone: its version, and a sync against the fake Graph.
deb-smoke: deb
	apt-get install -y -qq ./build/deb/lua-vpp_$(VERSION)_*.deb
	env -u LUA_PATH -u LUA_CPATH $(LUA) fake-graph/deb_smoke.lua

uninstall:
	rm -f $(DESTDIR)$(LUA_LIBDIR)/vpp/core.so $(DESTDIR)$(LUA_SHAREDIR)/vpp.lua $(DESTDIR)$(BINDIR)/vpp
	rm -f $(DESTDIR)$(MANDIR)/man1/vpp.1 $(DESTDIR)$(BASH_COMPLETION_DIR)/vpp $(DESTDIR)$(ZSH_COMPLETION_DIR)/_vpp \
	  $(DESTDIR)$(FISH_COMPLETION_DIR)/vpp.fish
	rm -rf $(DESTDIR)$(LUA_SHAREDIR)/vpp

clean:
	rm -rf build src/*.o
