# The `tally` command-line tool: a dispatcher (tools/tally.c) plus one source per subcommand,
# registered by each module's fragment through the TALLY_CLI_SOURCES / TALLY_CLI_DEPS properties.
get_property(_cli_sources GLOBAL PROPERTY TALLY_CLI_SOURCES)
get_property(_cli_deps GLOBAL PROPERTY TALLY_CLI_DEPS)
tally_tool(tally SOURCES tools/tally.c tools/cli_common.c ${_cli_sources} DEPS tally_core ${_cli_deps})
# Every binary's --version against the project's VERSION.
add_test(NAME test_version COMMAND sh ${PROJECT_SOURCE_DIR}/tests/test_version.sh ${PROJECT_VERSION})
set_tests_properties(test_version PROPERTIES TIMEOUT 30
                     ENVIRONMENT "TALLY_BIN=${CMAKE_BINARY_DIR}/bin")
