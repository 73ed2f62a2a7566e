# Thin wrapper around CMake. `make run` and `make test` do all set-up on a fresh Debian 12.
#   make test     Sanitize build (ASan+UBSan, clang when present), then the whole ctest suite
#   make run      Release build, then the main job on the embedded default (./var, 127.0.0.1:7878)
#   make release  Release build only (build-release/bin)
#   make bench    Release build, then the benchmarks under bench/
#   make fuzz     Each fuzz target for FUZZ_SECONDS (default 600)
#   make fuzz-campaign  All fuzz targets at once, each until FUZZ_CPU_SECONDS of CPU (default
#                 3600: the CPU-hour per target of issue 8), at nice 19; work in build/fuzz-campaign
#   make tsan     ThreadSanitizer build of the threaded tests
#   make bench-compare  tally against NATS JetStream, Redis and PostgreSQL (docs/benchmarks.md)
#   make profile  perf flame graph of tallyd under tally-bench load (perf/)
#   make torture  the torture suite (tests/torture/run.sh all): TORTURE_CYCLES kill -9 cycles
#                 (default 100; `make torture TORTURE_CYCLES=1000` for the long run)
CLANG := $(shell command -v clang 2>/dev/null)
TEST_CC ?= $(if $(CLANG),clang,gcc)
JOBS ?= $(shell nproc 2>/dev/null || echo 2)
WERROR ?= $(if $(CI),ON,OFF)
FUZZ_SECONDS ?= 600
FUZZ_CPU_SECONDS ?= 3600
TORTURE_CYCLES ?= 100
# The peer smoke test starts real NATS/Redis/PostgreSQL servers: `make bench-compare` runs
# those comparisons; `make test` leaves them out.
CTEST_ARGS ?= -LE peers

.PHONY: all deps build release test run bench fuzz fuzz-campaign tsan clean bench-compare profile torture
all: build

deps:
	@sh tools/ensure-deps.sh

build: deps
	@cmake -S . -B build -DCMAKE_BUILD_TYPE=Sanitize -DCMAKE_C_COMPILER=$(TEST_CC) -DTALLY_WERROR=$(WERROR) >/dev/null
	@cmake --build build -j $(JOBS)

release: deps
	@cmake -S . -B build-release -DCMAKE_BUILD_TYPE=Release -DTALLY_WERROR=$(WERROR) >/dev/null
	@cmake --build build-release -j $(JOBS)

test: build
	cd build && ctest --output-on-failure -j $(JOBS) $(CTEST_ARGS)

run: release
	@sh tools/run-default.sh build-release/bin

bench: release
	@sh bench/run-all.sh build-release/bin

fuzz: build
	@cd build && for f in bin/fuzz_*; do \
	  [ -x "$$f" ] || continue; n=$$(basename $$f); \
	  echo "== $$n for $(FUZZ_SECONDS)s"; \
	  sh ../tests/fuzz/run-fuzzer.sh $$f ../tests/fuzz/corpus/$${n#fuzz_} $(FUZZ_SECONDS) || exit 1; \
	done

fuzz-campaign: build
	@bash tests/fuzz/campaign.sh build/bin build/fuzz-campaign $(FUZZ_CPU_SECONDS)

bench-compare: export TALLY_EXTRA_PKGS = nats-server libnats-dev redis-server libhiredis-dev postgresql libpq-dev linux-perf
bench-compare: release
	@bash bench/peers/compare.sh build-release/bin --out build-release/bench-compare.md

profile: export TALLY_EXTRA_PKGS = linux-perf
profile: release
	@bash perf/profile-tallyd.sh build-release/bin

torture: release
	TALLY_BIN=build-release/bin TORTURE_CYCLES=$(TORTURE_CYCLES) bash tests/torture/run.sh all

tsan: deps
	@cmake -S . -B build-tsan -DCMAKE_BUILD_TYPE=Tsan -DCMAKE_C_COMPILER=$(TEST_CC) >/dev/null
	@cmake --build build-tsan -j $(JOBS)
	cd build-tsan && ctest --output-on-failure -L tsan

clean:
	rm -rf build build-release build-tsan
