/*
 * broker.h — internals shared by the broker's modules (net*.c, shard.c, tallyd.c).
 * Not a public API: tools and clients use include/tally/client.h.
 *
 * A BATCH becomes a `struct broker_slot`: one allocation per batch (never per event) that is
 * also the ACK frame being built. Its receipts are written in place, by whichever thread owns
 * the event's shard (distinct indices, so no two threads write the same bytes); `pending`
 * counts the events not yet resolved. The thread that brings it to zero hands the slot back to
 * the connection's thread, which alone sends it and frees it.
 */
#ifndef TALLY_BROKER_H
#define TALLY_BROKER_H

#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>

#include "tally/event.h"
#include "tally/protocol.h"
#include "byteorder.h"

#define BROKER_THREADS_MAX 64
#define BROKER_SHARDS_MAX 256

enum broker_io { BROKER_IO_URING = 0, BROKER_IO_EPOLL = 1 };

struct broker_config {
	const char *listen_host;
	uint16_t port;
	const char *data_dir;
	uint16_t threads;
	uint16_t shards;           /* 0 = stored, or 8 for a new data directory */
	int io;                    /* enum broker_io */
	int fsync_mode;            /* enum wal_fsync_mode */
	uint32_t fsync_interval_ms;
	int64_t dedup_window_us;
	int64_t max_future_us;
	int64_t max_age_us;
	const char *auth_file;
	bool insecure;
	uint32_t max_conns;
	uint32_t frame_bytes_max;
	uint32_t batch_events_max;
	uint32_t inflight_max;      /* per connection */
	uint32_t hello_timeout_ms;
	uint32_t idle_timeout_ms;
	uint32_t read_timeout_ms;   /* a started frame must complete within this */
	uint32_t auth_fail_delay_ms;
	uint32_t sync_delay_us;     /* injected latency per fdatasync (benchmarks) */
	uint32_t slow_sync_ms;      /* a group commit's sync this long is logged (WARN); 0 = never */
	uint32_t stats_interval_s;  /* a stats line per interval with traffic; 0 = only at stop */
	/* Readable (a signalfd for SIGHUP, in tallyd): the admin thread reads the --auth-file
	   again. On success HELLOs from then on are checked against the new keys, connections
	   already authenticated keep their tenant; on failure the keys in use stay. -1: none. */
	int reload_fd;
	/* Group-commit window (--fsync always): a shard starts at most one fdatasync per window of
	   this many microseconds, windows aligned on the clock so all shards sync together.
	   0 = a sync starts whenever the previous one has finished. */
	uint32_t commit_window_us;
	uint64_t expected_keys;     /* per shard, dedup hot-table preallocation */
	uint64_t segment_bytes_max;
	uint32_t tick_idle_ms;
	uint64_t rbuf_budget_bytes; /* all connections' receive buffers above their initial size */
	uint64_t dedup_write_rate;  /* bytes/s for .keys/.bloom files written by sealers; 0 = no cap */
};

struct broker_tenant {
	uint8_t len;
	char name[TALLY_TENANT_BYTES_MAX + 1];
};

struct conn;

struct broker_slot {
	struct broker_slot *next;   /* connection send queue */
	struct conn *conn;
	uint16_t worker;            /* the connection's thread */
	uint32_t n;
	uint64_t request_id;
	const struct broker_tenant *tenant;
	_Atomic uint32_t pending;   /* events not yet resolved */
	_Atomic uint16_t error;     /* 0, or a PROTO_E_* that fails the whole batch */
	uint32_t len;               /* bytes to send */
	uint32_t sent;
	uint32_t cap;
	/* Where the batch's time went (µs, broker_now_us), logged at stop: its frame's first
	   bytes read, parsed, last event resolved (by that event's shard owner), queued for
	   sending on the connection's thread (0 for an ERROR answer). */
	int64_t t_recv_us, t_parsed_us, t_resolved_us, t_queued_us;
	uint8_t frame[];            /* the ACK (or ERROR) frame */
};

static inline void broker_slot_receipt(struct broker_slot *s, uint32_t idx, uint8_t status,
				       uint8_t reason, uint16_t shard, uint64_t offset)
{
	uint8_t *r = s->frame + PROTO_HEADER_BYTES + PROTO_ACK_HEADER_BYTES +
		     (size_t)idx * PROTO_RECEIPT_BYTES;
	r[0] = status;
	r[1] = reason;
	tally_put_u16(r + 2, shard);
	tally_put_u32(r + 4, 0);
	tally_put_u64(r + 8, offset);
}

/* Logging: one line to stderr, "2026-11-21T08:40:00.123456Z LEVEL message". */
enum broker_log_level { LOG_DEBUG = 0, LOG_INFO, LOG_WARN, LOG_ERROR };
extern int broker_log_min;
void broker_log(int level, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

int64_t broker_now_us(void);

/* auth.c: API keys -> tenants. */
struct broker_auth;
int broker_auth_load(const char *path, struct broker_auth **out, char *err, size_t errlen)
	__attribute__((warn_unused_result));
/* Constant-time over all keys: the time taken does not depend on which key matched. */
const struct broker_tenant *broker_auth_lookup(const struct broker_auth *a, const uint8_t *key,
					       size_t len);
size_t broker_auth_count(const struct broker_auth *a);
void broker_auth_free(struct broker_auth *a);

/*
 * The HELLO decision, without I/O (auth.c; fuzzed by tests/fuzz/fuzz_hello.c). With `auth`,
 * the tenant comes from the API key alone; without it, from `default_tenant`. On success the
 * HELLO_OK frame is encoded into buf and its size returned, with *tenant and *frame_bytes_max
 * set (the client's wish, clamped to [PROTO_FRAME_BYTES_MIN, cfg->frame_bytes_max]). Returns 0
 * with *error = PROTO_E_UNSUPPORTED (wrong version) or PROTO_E_AUTH (unknown key, the caller
 * delays before closing) and *message set; a negative -errno if buf is too small.
 */
struct broker_hello_env {
	const struct broker_config *cfg;
	const struct broker_auth *auth;         /* NULL: single-tenant */
	const struct broker_tenant *default_tenant;
	uint16_t nshards;
	int64_t now_us;
};
#define BROKER_HELLO_OK_BYTES_MAX (PROTO_HEADER_BYTES + 41 + TALLY_TENANT_BYTES_MAX)
long broker_hello_answer(const struct broker_hello_env *env, const struct proto_hello *h,
			 uint8_t *buf, size_t cap, const struct broker_tenant **tenant,
			 uint32_t *frame_bytes_max, uint16_t *error, const char **message);

#endif
