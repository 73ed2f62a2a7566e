# Protocol and event codec: tests, fuzz target, seed-corpus writer, hex-dump tool, benchmark.
# The codec itself (tally_core: src/event.c, src/proto.c) is declared in 00-core.cmake.
if(TARGET tally_core)
  tally_test(test_event SOURCES tests/test_event.c DEPS tally_core PkgConfig::XXHASH TIMEOUT 60)
  tally_test(test_proto SOURCES tests/test_proto.c DEPS tally_core PkgConfig::XXHASH TIMEOUT 60)
endif()
