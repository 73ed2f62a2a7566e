/*
 * net.h — the broker's threads: one per core, each with its own SO_REUSEPORT listener, event
 * loop (io_uring or epoll), connections and owned shards. See src/net.c.
 */
#ifndef TALLY_NET_H
#define TALLY_NET_H

#include <stdbool.h>
#include <stdint.h>

#include "broker.h"

struct broker;
struct wal;

/*
 * Creates the listeners (binding --listen; port 0 picks one, see broker_port()), opens every
 * shard (dedup rebuild included) and starts the threads. Returns 0 or -errno with a message
 * logged.
 */
int broker_start(const struct broker_config *cfg, struct wal *wal, struct broker_auth *auth,
		 struct broker **out) __attribute__((warn_unused_result));

/* The port actually listened on. */
uint16_t broker_port(const struct broker *b);

/* The I/O backend actually in use (io_uring falls back to epoll when unavailable). */
int broker_io(const struct broker *b);

/* Asks every thread to stop accepting and reading, finish in-flight batches and exit.
   Async-signal-safe. */
void broker_request_stop(struct broker *b);

/* Blocks until all threads exited; closes shards (final flush + sync). Returns 0 after a clean
   stop, or the fatal -errno that stopped the broker (e.g. a failed fdatasync). Frees b. */
int broker_wait(struct broker *b);

/* For wal_options.on_segment_sealed, with ctx = the `struct broker **` given to
   broker_start() as `out` (set before any append can happen). */
void broker_on_segment_sealed(void *ctx, uint16_t shard, uint64_t base, uint64_t next);

/* Wait-free: true once a fatal storage error happened. */
bool broker_failed(const struct broker *b);

#endif
