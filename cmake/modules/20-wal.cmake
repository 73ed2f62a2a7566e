# WAL: segmented LZ4-compressed write-ahead log (include/tally/wal.h, docs/wal-format.md).
tally_library(tally_wal
  SOURCES src/wal_format.c src/wal_io.c src/wal_writer.c src/wal_reader.c src/wal_ckpt.c
  DEPS tally_core PkgConfig::LZ4 PkgConfig::XXHASH Threads::Threads)

tally_test(test_wal SOURCES tests/test_wal.c DEPS tally_wal TIMEOUT 120)
tally_test(test_wal_crash SOURCES tests/test_wal_crash.c DEPS tally_wal TIMEOUT 300)
tally_test(test_wal_fault SOURCES tests/test_wal_fault.c DEPS tally_wal TIMEOUT 120)
tally_test(test_wal_group SOURCES tests/test_wal_group.c DEPS tally_wal TIMEOUT 120 LABELS tsan)
tally_test(test_wal_xproc SOURCES tests/test_wal_xproc.c DEPS tally_wal TIMEOUT 180)
tally_bench(bench_wal SOURCES bench/bench_wal.c DEPS tally_wal tally_benchlib Threads::Threads)

# `tally wal dump|verify|stats|retain`
set_property(GLOBAL APPEND PROPERTY TALLY_CLI_SOURCES ${PROJECT_SOURCE_DIR}/tools/cmd_wal.c)
set_property(GLOBAL APPEND PROPERTY TALLY_CLI_DEPS tally_wal)
tally_test(test_wal_cli SOURCES tests/test_wal_cli.c DEPS tally_wal TIMEOUT 120)
add_dependencies(test_wal_cli tally) # runs bin/tally (skips with 77 if it is missing)
tally_test(test_wal_threads SOURCES tests/test_wal_threads.c DEPS tally_wal Threads::Threads TIMEOUT 120)
tally_fuzz(fuzz_wal SOURCES tests/fuzz/fuzz_wal.c src/wal_format.c src/wal_io.c src/wal_reader.c
           src/wal_writer.c src/event.c
           DEPS PkgConfig::LZ4 PkgConfig::XXHASH Threads::Threads
           CORPUS ${PROJECT_SOURCE_DIR}/tests/fuzz/corpus/wal)
# Recovery as tallyd runs it: wal_open() (and --repair) on a directory holding the input as
# segment files, then read back, append, reopen.
tally_fuzz(fuzz_wal_recover SOURCES tests/fuzz/fuzz_wal_recover.c src/wal_format.c src/wal_io.c
           src/wal_reader.c src/wal_writer.c src/event.c
           DEPS PkgConfig::LZ4 PkgConfig::XXHASH Threads::Threads
           CORPUS ${PROJECT_SOURCE_DIR}/tests/fuzz/corpus/wal_recover)
