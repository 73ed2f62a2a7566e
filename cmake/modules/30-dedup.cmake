# dedup: idempotency-key dedup (hot table, cold .keys runs + blooms). See docs/dedup.md.
# dedup only needs struct tally_fp from event.h; it links tally_core when that target exists.
set(_dedup_deps PkgConfig::XXHASH m)
if(TARGET tally_core)
  list(PREPEND _dedup_deps tally_core)
endif()
tally_library(tally_dedup SOURCES src/dedup.c src/dedup_hot.c src/dedup_cold.c src/dedup_compact.c
  src/dedup_seal.c DEPS ${_dedup_deps})
tally_test(test_dedup SOURCES tests/test_dedup.c DEPS tally_dedup TIMEOUT 120)
tally_test(test_dedup_cold SOURCES tests/test_dedup_cold.c DEPS tally_dedup Threads::Threads
  TIMEOUT 120 LABELS tsan)
tally_test(test_dedup_model SOURCES tests/test_dedup_model.c DEPS tally_dedup TIMEOUT 120)
tally_bench(bench_dedup SOURCES bench/bench_dedup.c DEPS tally_dedup)

# Restart wiring with the WAL (dedup_recover_from_wal), apart so tally_dedup needs no WAL.
if(TARGET tally_wal)
  tally_library(tally_dedup_wal SOURCES src/dedup_wal.c DEPS tally_dedup tally_wal tally_core)
  tally_test(test_dedup_wal SOURCES tests/test_dedup_wal.c DEPS tally_dedup_wal TIMEOUT 120)
endif()

# The .keys run loader is a parser of on-disk bytes: fuzzed (clang only).
tally_fuzz(fuzz_dedup_run SOURCES tests/fuzz/fuzz_dedup_run.c src/dedup.c src/dedup_hot.c
  src/dedup_cold.c src/dedup_compact.c src/dedup_seal.c DEPS PkgConfig::XXHASH m
  CORPUS ${PROJECT_SOURCE_DIR}/tests/fuzz/corpus/dedup_run)
