/*
 * tally/ring.h — the mesh of lock-free rings between broker threads.
 *
 * One Concurrency Kit SPSC pointer ring per ordered pair (from, to) of threads, so every ring
 * has exactly one producer and one consumer (the contract is in the name: ring_send() may only
 * be called by thread `from`, ring_drain() only by thread `to`). Each thread also has an
 * eventfd: a producer enqueues, then calls ring_wake(); the consumer reads the eventfd
 * (ring_wake_clear()) BEFORE draining, so a message enqueued after the drain always leaves the
 * eventfd readable and is never slept on. The mesh allocates everything at creation; sending
 * and draining never allocate.
 */
#ifndef TALLY_RING_H
#define TALLY_RING_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define RING_THREADS_MAX 64

struct ring_mesh;

/* Creates a mesh for n threads (1..64) with rings of `capacity` slots (a power of two >= 4).
   Returns 0 or -errno. */
int ring_mesh_create(uint16_t n, uint32_t capacity, struct ring_mesh **out)
	__attribute__((warn_unused_result));
void ring_mesh_destroy(struct ring_mesh *m);

/* Thread `from` sends msg (not NULL) to thread `to` (!= from). False if that ring is full. */
bool ring_send(struct ring_mesh *m, uint16_t from, uint16_t to, void *msg)
	__attribute__((warn_unused_result));

/* Makes thread `to`'s eventfd readable. Async-signal-safe and callable from any thread. */
void ring_wake(struct ring_mesh *m, uint16_t to);

/* The eventfd thread `w` polls for wake-ups. */
int ring_wake_fd(const struct ring_mesh *m, uint16_t w);

/* Consumes pending wake-ups of thread w (non-blocking). */
void ring_wake_clear(struct ring_mesh *m, uint16_t w);

/* Thread `to` takes up to cap messages from all its rings (round robin). Returns the count. */
size_t ring_drain(struct ring_mesh *m, uint16_t to, void **out, size_t cap);

#endif
