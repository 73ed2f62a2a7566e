# tallyd: the broker (src/net.c, src/shard.c, src/ring.c, src/auth.c, src/log.c).
tally_library(tally_ring SOURCES src/ring.c DEPS PkgConfig::CK)
tally_library(tally_broker SOURCES src/net.c src/shard.c src/auth.c src/log.c
  DEPS tally_ring tally_wal tally_dedup tally_core PkgConfig::URING Threads::Threads)
tally_tool(tallyd SOURCES src/tallyd.c DEPS tally_broker)
tally_test(test_tallyd_epoll SOURCES tests/test_tallyd.c DEPS tally_client tally_wal
  ARGS epoll off TIMEOUT 600 LABELS broker tsan)
add_dependencies(test_tallyd_epoll tallyd tally)
tally_test(test_tallyd_uring SOURCES tests/test_tallyd.c DEPS tally_client tally_wal
  ARGS uring on TIMEOUT 600 LABELS broker tsan)
add_dependencies(test_tallyd_uring tallyd tally)
tally_test(test_ring SOURCES tests/test_ring.c DEPS tally_ring Threads::Threads ARGS 20000 LABELS tsan)
tally_test(test_shard SOURCES tests/test_shard.c DEPS tally_broker LABELS tsan)
tally_test(test_lathist SOURCES tests/test_lathist.c)
if(CMAKE_BUILD_TYPE STREQUAL "Tsan")
  # halt_on_error: a race in tallyd aborts it, which fails the integration test.
  set_tests_properties(test_ring test_shard test_wal_group test_tallyd_epoll test_tallyd_uring PROPERTIES
    ENVIRONMENT "TSAN_OPTIONS=suppressions=${PROJECT_SOURCE_DIR}/tests/tsan.supp halt_on_error=1 exitcode=66;TALLY_BIN=${CMAKE_BINARY_DIR}/bin;TALLY_SRC=${PROJECT_SOURCE_DIR}")
endif()
# The HELLO path (frames before authentication, broker_hello_answer, the --auth-file loader).
tally_fuzz(fuzz_hello SOURCES tests/fuzz/fuzz_hello.c src/auth.c src/proto.c src/event.c
           DEPS PkgConfig::XXHASH CORPUS ${PROJECT_SOURCE_DIR}/tests/fuzz/corpus/hello)
