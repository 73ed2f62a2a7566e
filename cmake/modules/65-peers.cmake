# Peer benchmarks (bench/peers/, docs/benchmarks.md "Peers"): the same generated events as
# tally-bench sent to NATS JetStream, Redis Streams and PostgreSQL. Each driver is built only
# when its client library is found (Debian: libnats-dev, libhiredis-dev, libpq-dev); a missing
# one is skipped with a message, and bench/peers/compare.sh skips that peer.
pkg_check_modules(PEER_NATS QUIET IMPORTED_TARGET libnats)
pkg_check_modules(PEER_HIREDIS QUIET IMPORTED_TARGET hiredis)
pkg_check_modules(PEER_PQ QUIET IMPORTED_TARGET libpq)

set(_peer_bins "")
set(_peer_common bench/peers/peer_common.c)
if(PEER_NATS_FOUND)
  tally_bench(peer-nats SOURCES bench/peers/peer_nats.c ${_peer_common}
              DEPS tally_benchlib PkgConfig::PEER_NATS Threads::Threads)
  list(APPEND _peer_bins peer-nats)
else()
  message(STATUS "peers: libnats not found (apt-get install libnats-dev): peer-nats not built")
endif()
if(PEER_HIREDIS_FOUND)
  tally_bench(peer-redis SOURCES bench/peers/peer_redis.c ${_peer_common}
              DEPS tally_benchlib PkgConfig::PEER_HIREDIS Threads::Threads)
  list(APPEND _peer_bins peer-redis)
else()
  message(STATUS "peers: hiredis not found (apt-get install libhiredis-dev): peer-redis not built")
endif()
if(PEER_PQ_FOUND)
  tally_bench(peer-pg SOURCES bench/peers/peer_pg.c ${_peer_common}
              DEPS tally_benchlib PkgConfig::PEER_PQ Threads::Threads)
  list(APPEND _peer_bins peer-pg)
else()
  message(STATUS "peers: libpq not found (apt-get install libpq-dev): peer-pg not built")
endif()

# `cmake --build B --target bench-peers` builds every driver that can be built, and what
# compare.sh also runs (tallyd, tally-bench).
add_custom_target(bench-peers)
if(_peer_bins)
  add_dependencies(bench-peers ${_peer_bins})
endif()
# tallyd is declared by a later fragment: add these dependencies once every fragment is read.
function(_peers_late_deps)
  foreach(_t tallyd tally-bench)
    if(TARGET ${_t})
      add_dependencies(bench-peers ${_t})
    endif()
  endforeach()
endfunction()
cmake_language(DEFER DIRECTORY ${PROJECT_SOURCE_DIR} CALL _peers_late_deps)

# Smoke run of the comparison: 2000 events through every system that is installed (tally
# always), checking stored = unique counts; a few seconds per system. Exit 77 (skipped) only
# when nothing can run.
add_test(NAME test_peers_smoke
         COMMAND bash ${PROJECT_SOURCE_DIR}/bench/peers/compare.sh ${CMAKE_BINARY_DIR}/bin
                 --events 2000 --runs 1)
set_tests_properties(test_peers_smoke PROPERTIES SKIP_RETURN_CODE 77 TIMEOUT 240 LABELS peers)
