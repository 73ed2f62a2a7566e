# tally-bench: the load harness (bench/), its workload generator and latency histogram.
# The generator and histogram form tally_benchlib so tests and other tools can use them.
tally_library(tally_benchlib SOURCES bench/bench_gen.c bench/bench_hist.c DEPS tally_core m)
target_include_directories(tally_benchlib PUBLIC ${PROJECT_SOURCE_DIR}/bench)

tally_test(test_bench_gen SOURCES tests/test_bench_gen.c DEPS tally_benchlib TIMEOUT 120)
tally_test(test_bench_hist SOURCES tests/test_bench_hist.c DEPS tally_benchlib TIMEOUT 60)

# tally-bench itself. --verify-wal needs the WAL reader (include/tally/wal.h, wal_reader_*):
# compiled in only when the tally_wal library defines it, otherwise the option says so.
set(_bench_wal_deps "")
set(_bench_have_wal 0)
if(TARGET tally_wal)
  get_target_property(_wal_srcs tally_wal SOURCES)
  foreach(_s ${_wal_srcs})
    if(NOT IS_ABSOLUTE ${_s})
      set(_s ${PROJECT_SOURCE_DIR}/${_s})
    endif()
    if(EXISTS ${_s})
      file(STRINGS ${_s} _hit REGEX "^int wal_reader_open\\(")
      if(_hit)
        set(_bench_have_wal 1)
      endif()
    endif()
  endforeach()
  if(_bench_have_wal)
    set(_bench_wal_deps tally_wal)
  endif()
endif()
tally_bench(tally-bench SOURCES bench/tally_bench.c DEPS tally_benchlib ${_bench_wal_deps} Threads::Threads)
target_compile_definitions(tally-bench PRIVATE TALLY_BENCH_HAVE_WAL_READER=${_bench_have_wal})

# tally-bench end to end against the in-process fake server (owned by the client module).
if(TARGET tally_client_fake)
  tally_test(test_bench_fake SOURCES tests/test_bench_fake.c DEPS tally_client_fake TIMEOUT 120)
  add_dependencies(test_bench_fake tally-bench)
endif()

# A tiny run against a real tallyd with --expect and --verify-wal; skipped (77) without tallyd.
add_test(NAME test_bench_smoke COMMAND sh ${PROJECT_SOURCE_DIR}/tests/test_bench_smoke.sh)
set_tests_properties(test_bench_smoke PROPERTIES SKIP_RETURN_CODE 77 TIMEOUT 120
                     ENVIRONMENT "TALLY_BIN=${CMAKE_BINARY_DIR}/bin;TALLY_SRC=${PROJECT_SOURCE_DIR}")
if(TARGET tallyd)
  add_dependencies(tally-bench tallyd) # so that building the bench also builds what it smokes
endif()
# fdatasync latency of appends vs preallocated (zero-filled / fallocated) files: the WAL I/O question.
tally_bench(bench_fsync SOURCES bench/bench_fsync.c DEPS Threads::Threads)
tally_bench(bench_flush SOURCES bench/bench_flush.c DEPS Threads::Threads)
