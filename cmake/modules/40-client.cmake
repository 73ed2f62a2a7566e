# Client library (include/tally/client.h), the `tally send` subcommand, and their tests.
# The tests run against an in-process fake server built from the protocol codec
# (tests/client_fake_server.c), also wrapped as the executable fake_tallyd for manual use.
tally_library(tally_client SOURCES src/client.c DEPS tally_core)

set_property(GLOBAL APPEND PROPERTY TALLY_CLI_SOURCES ${PROJECT_SOURCE_DIR}/tools/cmd_send.c
             ${PROJECT_SOURCE_DIR}/tools/cmd_ping.c)
set_property(GLOBAL APPEND PROPERTY TALLY_CLI_DEPS tally_client PkgConfig::JANSSON)

tally_library(tally_client_fake SOURCES tests/client_fake_server.c DEPS tally_core Threads::Threads)
target_include_directories(tally_client_fake PUBLIC ${PROJECT_SOURCE_DIR}/tests)

tally_tool(fake_tallyd SOURCES tests/fake_tallyd.c DEPS tally_client_fake)

tally_test(test_client SOURCES tests/test_client.c DEPS tally_client tally_client_fake TIMEOUT 60)

# Runs $TALLY_BIN/tally send against the in-process fake server: needs the tally binary.
tally_test(test_send SOURCES tests/test_send.c DEPS tally_client_fake TIMEOUT 60)
add_dependencies(test_send tally)
