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
tally_tool(torture_check SOURCES tests/torture/torture_check.c DEPS tally_torturelib tally_wal)

# The LD_PRELOAD fault shim. Built without sanitizers: it is preloaded into tallyd.
add_library(torture_iofault SHARED tests/torture/iofault.c)
target_compile_options(torture_iofault PRIVATE -Wall -Wextra -fno-sanitize=all)
target_link_options(torture_iofault PRIVATE -fno-sanitize=all)
target_link_libraries(torture_iofault PRIVATE ${CMAKE_DL_LIBS} Threads::Threads)
set_target_properties(torture_iofault PROPERTIES LIBRARY_OUTPUT_DIRECTORY ${CMAKE_BINARY_DIR}/bin
                      OUTPUT_NAME torture_iofault)

tally_tool(torture_abuse SOURCES tests/torture/torture_abuse.c
  DEPS tally_torturelib tally_client tally_wal Threads::Threads)
