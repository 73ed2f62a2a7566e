/*
 * shard.h — one broker shard: a WAL shard, its dedup shard, its sync group and the FIFO of
 * events waiting to be durable. Owned by exactly one broker thread (the "owner"); only the
 * group's syncer thread (and the shard's sealer) runs beside it; owner and syncer meet only
 * through the WAL's watermarks, an atomic `busy` flag and a mutex/condvar used to sleep. See src/shard.c for the invariants.
 */
#ifndef TALLY_SHARD_H
#define TALLY_SHARD_H

#include <stdbool.h>
#include <stdint.h>

#include "broker.h"
#include "tally/wal.h"

/* One event on its way into a shard. `body` stays valid for the duration of shard_submit(). */
struct shard_item {
	struct broker_slot *slot;
	uint32_t idx;
	uint32_t digest;
	struct tally_fp fp;
	int64_t event_time_us;
	const uint8_t *body;
	uint16_t body_len;
	const struct broker_tenant *tenant;
};

/* Called on the owner thread when `count` events of `slot` were resolved (receipt written or
   slot->error set). */
typedef void (*shard_resolve_fn)(void *ctx, struct broker_slot *slot, uint32_t count);

struct shard;
struct shard_group;

/*
 * A sync group: shards of one owner thread and their one syncer thread, which makes them
 * durable together (wal_sync_group: one device flush for all of them where that is sound).
 * The broker makes one group per owner when its shards can share a flush, else one per shard
 * (a group's syncer syncs its shards one after the other).
 * Starts the syncer. `wake` is called from the syncer thread after each sync, and from the
 * members' sealer threads (it must wake the owner). Close it after all its shards.
 */
int shard_group_open(const struct broker_config *cfg, unsigned id, void (*wake)(void *ctx),
		     void *wake_ctx, struct shard_group **out) __attribute__((warn_unused_result));
/* Stops the syncer; logs its group-commit latencies. Returns the first sync error. */
int shard_group_close(struct shard_group *g);

/*
 * Opens shard `id` of the open WAL `wal` as a member of group `g` (any thread; members of one
 * group may be opened concurrently): opens the dedup shard (cold runs under DATA/dedup),
 * rebuilds missing runs and the hot tier from the WAL.
 */
int shard_open(const struct broker_config *cfg, struct wal *wal, uint16_t id,
	       struct shard_group *g, shard_resolve_fn resolve, void *resolve_ctx,
	       struct shard **out) __attribute__((warn_unused_result));

/* Owner thread: runs items[0..n) through dedup and into the WAL. */
void shard_submit(struct shard *s, struct shard_item *items, size_t n, int64_t now_us);

/*
 * Owner thread, for every shard of the group: resolves the events the WAL made durable since
 * the last call, flushes the open blocks and starts one sync for all of them when the syncer
 * is idle and this commit window has had none yet (group commit), writes idle ticks. Returns a
 * fatal -errno if storage failed (the broker must stop acknowledging and exit), else 0.
 * *sync_at_us is lowered to the time the group wants to be polled again to start a sync it is
 * holding back for the next window (left alone if none).
 */
int shard_group_poll(struct shard_group *g, int64_t now_us, int64_t *sync_at_us)
	__attribute__((warn_unused_result));

/* Events waiting for durability, and whether the open block holds unflushed records. */
bool shard_busy(const struct shard *s);

/* Flushes and syncs the shard's last records, leaves its group, frees everything. Returns the
   first error. */
int shard_close(struct shard *s);

uint16_t shard_id(const struct shard *s);

/* Owner thread, from the WAL's on_segment_sealed: moves the segment's keys to the cold tier
   and expires generations that left the dedup window. */
void shard_segment_sealed(struct shard *s, uint64_t base, uint64_t next);

#endif
