# Rating engine: exact money, config, metering by event time, periods, invoices (docs/rating.md).
tally_library(tally_rate
  SOURCES src/rate_money.c src/rate_price.c src/rate_config.c src/rate_engine.c src/rate_ckpt.c
          src/rate_invoice.c
  DEPS tally_core PkgConfig::JANSSON PkgConfig::XXHASH)

tally_test(test_rate_money SOURCES tests/test_rate_money.c DEPS tally_rate TIMEOUT 60)
tally_test(test_rate_config SOURCES tests/test_rate_config.c DEPS tally_rate TIMEOUT 60)
tally_test(test_rate_engine SOURCES tests/test_rate_engine.c DEPS tally_rate TIMEOUT 120)

# tally-rate: the rating process (tails the WAL). Needs the WAL reader.
if(TARGET tally_wal)
  tally_tool(tally-rate SOURCES tools/tally_rate.c DEPS tally_rate tally_wal)
  tally_test(test_rate_tool SOURCES tests/test_rate_tool.c DEPS tally_rate tally_wal TIMEOUT 300)
  add_dependencies(test_rate_tool tally-rate tally)
  if(EXISTS ${PROJECT_SOURCE_DIR}/src/tallyd.c) # tallyd is declared by 70-broker.cmake, after us
    tally_test(test_rate_e2e SOURCES tests/test_rate_e2e.c DEPS tally_rate tally_wal PkgConfig::JANSSON
               TIMEOUT 120)
    add_dependencies(test_rate_e2e tally-rate tally tallyd)
  endif()
  tally_bench(bench_rate SOURCES bench/bench_rate.c DEPS tally_rate tally_wal)
  # tally usage / explain / invoice subcommands
  set_property(GLOBAL APPEND PROPERTY TALLY_CLI_SOURCES ${PROJECT_SOURCE_DIR}/tools/cmd_usage.c
               ${PROJECT_SOURCE_DIR}/tools/cmd_explain.c)
  set_property(GLOBAL APPEND PROPERTY TALLY_CLI_DEPS tally_rate tally_wal PkgConfig::JANSSON)
endif()

tally_fuzz(fuzz_rate SOURCES tests/fuzz/fuzz_rate.c src/rate_money.c src/rate_price.c src/rate_config.c
           src/event.c DEPS PkgConfig::JANSSON PkgConfig::XXHASH CORPUS ${PROJECT_SOURCE_DIR}/tests/fuzz/corpus/rate)
