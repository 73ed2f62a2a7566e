# Client library (include/tally/client.h), the `tally send` subcommand, and their tests.
# The tests run against an in-process fake server built from the protocol codec
# (tests/client_fake_server.c).
tally_library(tally_client SOURCES src/client.c DEPS tally_core)

tally_library(tally_client_fake SOURCES tests/client_fake_server.c DEPS tally_core Threads::Threads)
target_include_directories(tally_client_fake PUBLIC ${PROJECT_SOURCE_DIR}/tests)

tally_test(test_client SOURCES tests/test_client.c DEPS tally_client tally_client_fake TIMEOUT 60)
