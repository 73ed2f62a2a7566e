# Core: the event model and the wire protocol codec.
tally_library(tally_core SOURCES src/event.c src/proto.c DEPS PkgConfig::XXHASH)
