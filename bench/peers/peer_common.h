/*
 * bench/peers/peer_common.h — the shared driver of the peer benchmarks (docs/benchmarks.md,
 * "Peers: NATS JetStream, Redis Streams, PostgreSQL").
 *
 * Each peer binary (peer-nats, peer-redis, peer-pg) is this driver plus one `struct peer_ops`
 * that knows how to store a batch of events in that system with deduplication by key and
 * how to count what was stored. The driver generates exactly the events tally-bench sends
 * with the same options (bench_gen: one stream per connection, same seed, payload size,
 * dup-rate, time base, and the same resend distance as tally-bench --inflight 1), encodes each
 * as the canonical event body (the ~150 bytes tally stores), and runs a closed loop: every
 * connection has ONE batch in flight, sends the next when the previous one is fully
 * acknowledged by the peer. Latency is one sample per batch, send to last ack, in µs.
 *
 * Threads: one per connection, each with its own peer connection (ops->conn_open), its own
 * generator and histogram; they share only the read-only options. ops->setup and
 * ops->stored_count run on the main thread before and after the load.
 */
#ifndef TALLY_PEER_COMMON_H
#define TALLY_PEER_COMMON_H

#include <stddef.h>
#include <stdint.h>

#define PEER_CONNS_MAX  64u
#define PEER_BATCH_MAX  1000u
#define PEER_TARGET_MAX 512u
#define PEER_ERR_BYTES  256u

/* One event of a batch: views into the driver's per-connection buffers. */
struct peer_ev {
	const char *key; /* NUL-terminated idempotency key */
	uint32_t key_len;
	const uint8_t *body; /* canonical event body (include/tally/event.h) */
	uint32_t body_len;
};

struct peer_opts {
	char target[PEER_TARGET_MAX]; /* peer address: URL, host:port or conninfo (peer-specific) */
	uint32_t connections;
	uint32_t batch;
	uint64_t events;
	uint64_t seed;
	uint32_t customers;
	uint32_t payload_bytes;
	uint32_t dup_ppm;
	int64_t base_time_us;
	int json;
};

struct peer_ops {
	const char *name;        /* "nats", "redis", "pg" */
	const char *target_help; /* what --target means, with the default */
	const char *target_def;
	/* Creates the stream/table/script. Returns 0 or -1 with a message in err. */
	int (*setup)(const struct peer_opts *o, char *err, size_t err_len);
	/* Opens one connection; NULL with a message in err on failure. */
	void *(*conn_open)(const struct peer_opts *o, uint32_t conn_id, char *err, size_t err_len);
	/*
	 * Stores evs[0..n) and returns when the peer has acknowledged all of them: 0 with
	 * *accepted_out = events newly stored (the rest were recognised as duplicates), or -1 with
	 * a message in err.
	 */
	int (*send_batch)(void *conn, const struct peer_ev *evs, uint32_t n, uint32_t *accepted_out,
	                  char *err, size_t err_len);
	void (*conn_close)(void *conn);
	/* Events stored by the peer in total. Returns 0 or -1 with a message in err. */
	int (*stored_count)(const struct peer_opts *o, uint64_t *count_out, char *err,
	                    size_t err_len);
};

/* Runs the benchmark for `ops` with the command line; returns the process exit status. */
int peer_main(const struct peer_ops *ops, int argc, char **argv);

#endif /* TALLY_PEER_COMMON_H */
