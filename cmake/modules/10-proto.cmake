# Protocol and event codec: tests, fuzz target, seed-corpus writer, hex-dump tool, benchmark.
# The codec itself (tally_core: src/event.c, src/proto.c) is declared in 00-core.cmake.
if(TARGET tally_core)
  tally_test(test_event SOURCES tests/test_event.c DEPS tally_core PkgConfig::XXHASH TIMEOUT 60)
  tally_test(test_proto SOURCES tests/test_proto.c DEPS tally_core PkgConfig::XXHASH TIMEOUT 60)
  # proto_corpus DIR: writes the fuzz seed corpus (tests/fuzz/corpus/proto/ is its committed output).
  tally_tool(proto_corpus SOURCES tests/proto_corpus.c DEPS tally_core PkgConfig::XXHASH)
  # proto_hexdump: prints the annotated example frames pasted into docs/protocol.md.
  tally_tool(proto_hexdump SOURCES tests/proto_hexdump.c DEPS tally_core PkgConfig::XXHASH)
  tally_bench(bench_proto SOURCES bench/bench_proto.c DEPS tally_core)
  # The annotated dumps in docs/protocol.md must be exactly what the encoders produce.
  add_test(NAME proto_doc_hexdump
           COMMAND sh ${PROJECT_SOURCE_DIR}/tests/proto_doc_check.sh $<TARGET_FILE:proto_hexdump>
                   ${PROJECT_SOURCE_DIR}/docs/protocol.md)
  set_tests_properties(proto_doc_hexdump PROPERTIES TIMEOUT 60)
endif()
tally_fuzz(fuzz_proto SOURCES tests/fuzz/fuzz_proto.c src/proto.c src/event.c DEPS PkgConfig::XXHASH
           CORPUS ${PROJECT_SOURCE_DIR}/tests/fuzz/corpus/proto)
