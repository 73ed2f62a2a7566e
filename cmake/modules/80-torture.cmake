# Torture suite (tests/torture/, docs/reliability.md): ledger producer + checker, kill -9 loop,
# lost unsynced writes and I/O faults through an LD_PRELOAD shim, abuse of a real tallyd.
# Short versions run in `make test` (label torture); tests/torture/run.sh runs the long ones.
add_library(tally_torturelib STATIC tests/torture/torture_lib.c)
target_include_directories(tally_torturelib PUBLIC ${PROJECT_SOURCE_DIR}/include
                           ${PROJECT_SOURCE_DIR}/tests/torture)
target_compile_options(tally_torturelib PRIVATE ${TALLY_WARNINGS})
target_link_libraries(tally_torturelib PUBLIC tally_core)

tally_tool(torture_producer SOURCES tests/torture/torture_producer.c
  DEPS tally_torturelib tally_client Threads::Threads)
tally_tool(torture_check SOURCES tests/torture/torture_check.c
  DEPS tally_torturelib tally_wal tally_rate PkgConfig::JANSSON)

# The LD_PRELOAD fault shim. Built without sanitizers: it is preloaded into tallyd.
add_library(torture_iofault SHARED tests/torture/iofault.c)
target_compile_options(torture_iofault PRIVATE -Wall -Wextra -fno-sanitize=all)
target_link_options(torture_iofault PRIVATE -fno-sanitize=all)
target_link_libraries(torture_iofault PRIVATE ${CMAKE_DL_LIBS} Threads::Threads)
set_target_properties(torture_iofault PROPERTIES LIBRARY_OUTPUT_DIRECTORY ${CMAKE_BINARY_DIR}/bin
                      OUTPUT_NAME torture_iofault)

tally_tool(torture_abuse SOURCES tests/torture/torture_abuse.c
  DEPS tally_torturelib tally_client tally_wal Threads::Threads)

# ctest: the short versions (label torture). `tests/torture/run.sh all` with TORTURE_CYCLES=100
# (make torture) or 1000 runs the long ones; docs/reliability.md has the figures.
set(TORTURE_ENV "TALLY_BIN=${CMAKE_BINARY_DIR}/bin" "TALLY_SRC=${PROJECT_SOURCE_DIR}")
add_test(NAME torture_selftest COMMAND bash ${PROJECT_SOURCE_DIR}/tests/torture/run.sh selftest)
add_test(NAME torture_kill9 COMMAND bash ${PROJECT_SOURCE_DIR}/tests/torture/run.sh kill9)
add_test(NAME torture_lostwrites COMMAND bash ${PROJECT_SOURCE_DIR}/tests/torture/run.sh lostwrites)
# Two shards on one thread: one sync group, so most group commits write back both files and
# flush the device through one of them (the shim's device-cache model); every 11th op.
add_test(NAME torture_lostwrites_group COMMAND bash ${PROJECT_SOURCE_DIR}/tests/torture/run.sh lostwrites)
# Prefill ahead: 8 KiB prefill in 64 KiB segments, so the prefill thread makes a new stretch
# durable every few KiB while group commits write inside the previous one; every 7th op.
add_test(NAME torture_lostwrites_ahead COMMAND bash ${PROJECT_SOURCE_DIR}/tests/torture/run.sh lostwrites)
add_test(NAME torture_faults COMMAND bash ${PROJECT_SOURCE_DIR}/tests/torture/run.sh faults)
add_test(NAME torture_abuse COMMAND torture_abuse)
set_tests_properties(torture_selftest PROPERTIES ENVIRONMENT "${TORTURE_ENV}")
set_tests_properties(torture_kill9 PROPERTIES ENVIRONMENT "${TORTURE_ENV};TORTURE_CYCLES=10;TORTURE_MAX_MS=3000;TORTURE_RATE=5000")
set_tests_properties(torture_lostwrites PROPERTIES ENVIRONMENT "${TORTURE_ENV};TORTURE_LW_SHORT=1")
set_tests_properties(torture_lostwrites_group PROPERTIES ENVIRONMENT "${TORTURE_ENV};TORTURE_LW_SHARDS=2;TORTURE_LW_STEP=11")
set_tests_properties(torture_lostwrites_ahead PROPERTIES ENVIRONMENT "${TORTURE_ENV};TORTURE_LW_SHARDS=2;TORTURE_LW_STEP=7;TORTURE_LW_PREFILL_KB=8")
set_tests_properties(torture_faults PROPERTIES ENVIRONMENT "${TORTURE_ENV};TORTURE_FAULT_RUNS=1")
set_tests_properties(torture_abuse PROPERTIES ENVIRONMENT "${TORTURE_ENV}")
set_tests_properties(torture_selftest torture_kill9 torture_lostwrites torture_lostwrites_group
  torture_lostwrites_ahead torture_faults torture_abuse
  PROPERTIES LABELS torture SKIP_RETURN_CODE 77 TIMEOUT 300 RUN_SERIAL TRUE)
# tally-rate kill -9 with 2 s periods closing during the run: 10 kills (5 aimed at a close).
add_test(NAME torture_rate COMMAND bash ${PROJECT_SOURCE_DIR}/tests/torture/run.sh rate)
set_tests_properties(torture_rate PROPERTIES ENVIRONMENT "${TORTURE_ENV};TORTURE_CYCLES=10;TORTURE_MAX_MS=2000"
  LABELS torture SKIP_RETURN_CODE 77 TIMEOUT 300 RUN_SERIAL TRUE)
