# tally-bench: the load harness (bench/), its workload generator and latency histogram.
# The generator and histogram form tally_benchlib so tests and other tools can use them.
tally_library(tally_benchlib SOURCES bench/bench_gen.c bench/bench_hist.c DEPS tally_core m)
target_include_directories(tally_benchlib PUBLIC ${PROJECT_SOURCE_DIR}/bench)

tally_test(test_bench_gen SOURCES tests/test_bench_gen.c DEPS tally_benchlib TIMEOUT 120)
tally_test(test_bench_hist SOURCES tests/test_bench_hist.c DEPS tally_benchlib TIMEOUT 60)
