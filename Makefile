# ferry — developer entry points. `make help` lists the targets.
#
#   make demo    build, then send a sample folder between two local nodes and verify it
#   make test    release tests, then the same tests under ASan+UBSan and under TSan, then
#                the libFuzzer targets briefly (build/fuzz, clang-14, ~20 s each)
#   make fuzz    longer libFuzzer runs: FUZZ_SECONDS (default 300) per target, one target
#                after the other; FUZZ_TARGETS="..." picks some (docs/fuzzing.md)
#   make bench   loopback benchmark against nc / tar+nc (bench/run.sh; BENCH_ARGS=--quick)
#   make bench-wan  the same over an emulated WAN link (bench/wan.sh; BENCH_WAN_ARGS=--quick)
#   make bench-discovery  LAN discovery latency between two network namespaces (bench/discovery.sh; root)
#   make bench-multi  multi-source get over two emulated 100 Mbit/s links against one (bench/multi_source.sh; root)
#   make bench-micro  Google Benchmark micro benchmarks (every bench/*_bench binary of the release build)
#   make package  the Debian package build/release/ferry_VERSION_ARCH.deb (CPack; docs/service.md)
#
# Variables: JOBS=N (build parallelism; default: ninja's own, about nproc+2),
# CTEST_JOBS=N (default 2), CMAKE_ARGS="..." (extra configure flags for every build, e.g.
# -DCMAKE_CXX_COMPILER=clang++), BENCH_ARGS="..." (passed to bench/run.sh), BENCH_WAN_ARGS="..."
# (passed to bench/wan.sh), BENCH_MICRO_ARGS="..." (passed to every micro benchmark, e.g.
# --benchmark_filter=zstd), FUZZ_SECONDS=N and FUZZ_TARGETS="..." (make fuzz).

SHELL := /bin/bash
.SHELLFLAGS := -euo pipefail -c
.DEFAULT_GOAL := build
# Targets run in the order given (test = release, asan, tsan, then fuzz), even under make -j.
.NOTPARALLEL:

CMAKE      ?= cmake
CTEST      ?= ctest
JOBS       ?=
CTEST_JOBS ?= 2
BENCH_ARGS ?=
BENCH_WAN_ARGS ?=
BENCH_MICRO_ARGS ?=
CMAKE_ARGS ?=
FUZZ_SECONDS ?= 300
FUZZ_TARGETS ?= frame_decoder_fuzz header_fuzz receiver_machine_fuzz sender_machine_fuzz path_fuzz compression_fuzz

RELEASE_DIR := build/release
ASAN_DIR    := build/asan
TSAN_DIR    := build/tsan
FUZZ_DIR    := build/fuzz
FERRY_BIN   := $(RELEASE_DIR)/tools/ferry

BUILD_JOBS := $(if $(JOBS),-j $(JOBS),)

RELEASE_FLAGS := -DCMAKE_BUILD_TYPE=Release -DCMAKE_INSTALL_PREFIX=/usr
# Sanitizer builds: -O1 and line tables only (-g1). Reports keep file:line; the build is
# about 3x faster than -O2 -g (tools/ferry.cpp under ASan+UBSan: 312 s -> 74 s), which is
# most of `make test`'s time on 2 cores.
SAN_OPT       := '-DCMAKE_CXX_FLAGS_RELWITHDEBINFO=-O1 -g1 -DNDEBUG' '-DCMAKE_C_FLAGS_RELWITHDEBINFO=-O1 -g1 -DNDEBUG'
# Built with clang-14 (as the fuzz targets are): GCC 12 under -fsanitize=address,undefined
# spends 2-3x longer per file (tools/ferry.cpp 110 s against 77 s; docs/decisions.md, "The
# test suite's time").
CLANG         := -DCMAKE_C_COMPILER=clang-14 -DCMAKE_CXX_COMPILER=clang++-14
ASAN_FLAGS    := -DCMAKE_BUILD_TYPE=RelWithDebInfo -DFERRY_ASAN=ON -DFERRY_BENCH=OFF $(SAN_OPT) $(CLANG)
TSAN_FLAGS    := -DCMAKE_BUILD_TYPE=RelWithDebInfo -DFERRY_TSAN=ON -DFERRY_BENCH=OFF $(SAN_OPT)
# Only proto/ and protocol/ and the fuzz targets (tests/fuzz), under ASan+UBSan.
FUZZ_FLAGS    := -DCMAKE_BUILD_TYPE=RelWithDebInfo $(CLANG) -DFERRY_FUZZ=ON

# Any sanitizer report fails the run: halt on the first error, non-zero exit, leaks count.
ASAN_ENV := ASAN_OPTIONS=halt_on_error=1:detect_leaks=1 \
            UBSAN_OPTIONS=halt_on_error=1:print_stacktrace=1
TSAN_ENV := TSAN_OPTIONS=halt_on_error=1:second_deadlock_stack=1 \
            UBSAN_OPTIONS=halt_on_error=1:print_stacktrace=1

# Kernels with more than 28 bits of mmap randomness break older TSan runtimes
# ("unexpected memory mapping"); there the TSan tests run with ASLR off.
TSAN_WRAP := $(shell if [ "$$(cat /proc/sys/vm/mmap_rnd_bits 2>/dev/null || echo 0)" -gt 28 ] \
                && command -v setarch >/dev/null; then echo "setarch $$(uname -m) -R"; fi)

# $(call quiet,LOG,COMMAND...): run quietly into LOG; on failure print LOG (without
# ninja's [n/m] progress lines) and fail.
define quiet
mkdir -p $(dir $(1)); \
if ! ( $(2) ) >$(1) 2>&1; then \
  echo "make: FAILED: $(strip $(2))" >&2; echo "---- $(1) ----" >&2; \
  grep -Ev '^\[[0-9]+/[0-9]+\] ' $(1) >&2 || true; exit 1; \
fi
endef

# $(call configure_build,DIR,CMAKE FLAGS): configure (Ninja) and build DIR quietly.
define configure_build
echo "make: building $(1) (quietly: a first build takes some minutes; log in $(1)/.make-build.log)"; \
$(call quiet,$(1)/.make-configure.log,$(CMAKE) -S . -B $(1) -G Ninja $(2) $(CMAKE_ARGS)); \
$(call quiet,$(1)/.make-build.log,$(CMAKE) --build $(1) $(BUILD_JOBS))
endef

# $(call run_tests,DIR,ENV,WRAPPER): ctest DIR; print the summary, or on failure the log
# without the start/passed lines (failing tests' output and the list of failures).
define run_tests
echo "make: testing $(1)"; \
log=$(1)/.make-ctest.log; \
if env $(2) $(3) $(CTEST) --test-dir $(1) --output-on-failure -j$(CTEST_JOBS) >$$log 2>&1; then \
  grep -E 'tests passed|No tests were found' $$log || tail -n 3 $$log; \
else \
  echo "make: tests FAILED in $(1)" >&2; \
  grep -Ev '^ *Start +[0-9]+: |Test +#[0-9]+: .* Passed ' $$log >&2 || true; exit 1; \
fi
endef

.PHONY: help deps deps-bench build release asan tsan fuzz-build demo test test-release test-asan test-tsan test-fuzz \
        fuzz bench bench-wan bench-discovery bench-multi bench-micro package clean

help:
	@echo "make deps          install the Debian packages needed to build and test (scripts/install-deps.sh)"
	@echo "make build         configure and build $(RELEASE_DIR) (Release, Ninja)"
	@echo "make demo          build, then run scripts/demo.sh: a folder sent between two local nodes"
	@echo "make test          test-release, then test-asan (ASan+UBSan), then test-tsan, then test-fuzz"
	@echo "make test-release  ctest in $(RELEASE_DIR)"
	@echo "make test-asan     build $(ASAN_DIR) with ASan+UBSan and run ctest there"
	@echo "make test-tsan     build $(TSAN_DIR) with TSan and run ctest there"
	@echo "make test-fuzz     build the libFuzzer targets in $(FUZZ_DIR) (clang-14) and run each ~20 s under ctest"
	@echo "make fuzz          run each fuzz target for \$$FUZZ_SECONDS s (default 300; \$$FUZZ_TARGETS picks some)"
	@echo "make bench         loopback benchmark vs nc and tar+nc (bench/run.sh \$$BENCH_ARGS)"
	@echo "make bench-wan     WAN benchmark over ../shared/linkem vs iperf3, rsync, scp (bench/wan.sh \$$BENCH_WAN_ARGS; root)"
	@echo "make bench-discovery  LAN discovery latency in two network namespaces (bench/discovery.sh; root)"
	@echo "make bench-multi   ferry get --from over two emulated 100 Mbit/s links vs one (bench/multi_source.sh; root)"
	@echo "make package       the Debian package in $(RELEASE_DIR) (CPack; install: apt install ./$(RELEASE_DIR)/ferry_*.deb)"
	@echo "make bench-micro   build release, run every micro benchmark $(RELEASE_DIR)/bench/*_bench (\$$BENCH_MICRO_ARGS)"
	@echo "make clean         remove build/"

deps:
	@scripts/install-deps.sh

deps-bench:
	@scripts/install-deps.sh --bench

build release: deps
	@$(call configure_build,$(RELEASE_DIR),$(RELEASE_FLAGS))

asan: deps
	@$(call configure_build,$(ASAN_DIR),$(ASAN_FLAGS))

tsan: deps
	@$(call configure_build,$(TSAN_DIR),$(TSAN_FLAGS))

fuzz-build: deps
	@$(call configure_build,$(FUZZ_DIR),$(FUZZ_FLAGS))

demo: build
	@scripts/demo.sh $(FERRY_BIN)

package: build
	@cd $(RELEASE_DIR) && cpack -G DEB && ls -1 $(CURDIR)/$(RELEASE_DIR)/ferry_*.deb

test: test-release test-asan test-tsan test-fuzz
	@echo "make: all tests passed (release, asan+ubsan, tsan, fuzz)"

test-release: build
	@$(call run_tests,$(RELEASE_DIR),,)

test-asan: asan
	@$(call run_tests,$(ASAN_DIR),$(ASAN_ENV),)

test-tsan: tsan
	@$(call run_tests,$(TSAN_DIR),$(TSAN_ENV),$(TSAN_WRAP))

test-fuzz: fuzz-build
	@$(call run_tests,$(FUZZ_DIR),$(ASAN_ENV),)

# Longer runs than ctest's: the corpus each target grows is kept in build/fuzz/long/<target>
# between runs; findings land in build/fuzz/long/<target>/artifacts. Every target runs,
# then the ones that found something are listed.
fuzz: fuzz-build
	@failed=(); \
	for t in $(FUZZ_TARGETS); do \
	  echo "make: fuzzing $$t for $(FUZZ_SECONDS) s"; \
	  env $(ASAN_ENV) $(CMAKE) -DFUZZER=$(FUZZ_DIR)/tests/fuzz/$$t -DCORPUS=tests/fuzz/corpus/$$t \
	    -DWORK=$(FUZZ_DIR)/long/$$t -DSECONDS=$(FUZZ_SECONDS) -DRUNS=-1 -P tests/fuzz/run_fuzzer.cmake || failed+=($$t); \
	done; \
	if [ $${#failed[@]} -gt 0 ]; then echo "make: fuzz findings in: $${failed[*]}" >&2; exit 1; fi

bench: deps-bench build
	@bench/run.sh --ferry $(FERRY_BIN) $(BENCH_ARGS)

bench-wan: deps-bench build
	@bench/wan.sh --ferry $(FERRY_BIN) $(BENCH_WAN_ARGS)

bench-discovery: build
	@FERRY=$(FERRY_BIN) bench/discovery.sh

bench-multi: deps-bench build
	@FERRY=$(FERRY_BIN) bench/multi_source.sh $(BENCH_MULTI_ARGS)

# Each binary is one area (frame codec, digests, zstd, chunk codec, scheduler, buffer pool);
# the whole set runs in well under a minute.
bench-micro: build
	@found=0; \
	for b in $(RELEASE_DIR)/bench/*_bench; do \
	  [ -x "$$b" ] || continue; found=1; \
	  echo "make: $$b"; "$$b" $(BENCH_MICRO_ARGS); \
	done; \
	if [ $$found -eq 0 ]; then \
	  echo "make: no micro benchmarks in $(RELEASE_DIR)/bench (configured without libbenchmark-dev?)" >&2; exit 1; \
	fi

clean:
	rm -rf build
