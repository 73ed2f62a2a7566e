/*
 * ring.c — the mesh of SPSC rings between broker threads (see include/tally/ring.h).
 *
 * Memory ordering: ck_ring_enqueue_spsc() publishes the slot with a store fence before moving
 * the producer index, and ck_ring_dequeue_spsc() loads the index before the slot, so whatever
 * the producer wrote into a message before sending it is visible to the consumer after it
 * dequeues it. The eventfd write/read pair is a system call and orders nothing further that
 * the rings do not already order; it only ends the consumer's sleep.
 * Each ring and its buffer are separate allocations, and struct ck_ring pads its producer and
 * consumer indices onto their own cache lines.
 */
#include <errno.h>
#include <stdlib.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include <ck_ring.h>

#include "tally/ring.h"

/*
 * ThreadSanitizer does not see the ordering Concurrency Kit gets from x86's TSO plus compiler
 * barriers (inline asm), so under TSan the ring's publish/consume pair is declared to it as
 * the release/acquire it is. Other builds compile these to nothing.
 */
#if defined(__has_feature)
#if __has_feature(thread_sanitizer)
#define RING_TSAN 1
#endif
#endif
#if defined(__SANITIZE_THREAD__)
#define RING_TSAN 1
#endif
#ifdef RING_TSAN
void __tsan_acquire(void *addr);
void __tsan_release(void *addr);
#define ring_tsan_release(p) __tsan_release(p)
#define ring_tsan_acquire(p) __tsan_acquire(p)
#else
#define ring_tsan_release(p) ((void)(p))
#define ring_tsan_acquire(p) ((void)(p))
#endif

struct ring_pair {
	struct ck_ring ring;
	struct ck_ring_buffer *buf;
};

struct ring_mesh {
	uint16_t n;
	uint32_t capacity;
	int *efd;                 /* per thread */
	struct ring_pair *pairs;  /* n * n, [from * n + to]; the diagonal is unused */
	uint16_t *next_from;      /* per consumer: round-robin start */
};

int ring_mesh_create(uint16_t n, uint32_t capacity, struct ring_mesh **out)
{
	if (n == 0 || n > RING_THREADS_MAX || capacity < 4 || (capacity & (capacity - 1)))
		return -EINVAL;
	struct ring_mesh *m = calloc(1, sizeof *m);
	if (!m)
		return -ENOMEM;
	m->n = n;
	m->capacity = capacity;
	m->efd = calloc(n, sizeof *m->efd);
	m->pairs = calloc((size_t)n * n, sizeof *m->pairs);
	m->next_from = calloc(n, sizeof *m->next_from);
	if (!m->efd || !m->pairs || !m->next_from)
		goto out_free;
	for (uint16_t i = 0; i < n; i++)
		m->efd[i] = -1;
	for (uint16_t i = 0; i < n; i++) {
		m->efd[i] = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
		if (m->efd[i] < 0)
			goto out_free;
	}
	for (size_t i = 0; i < (size_t)n * n; i++) {
		if (i / n == i % n)
			continue;
		m->pairs[i].buf = calloc(capacity, sizeof(struct ck_ring_buffer));
		if (!m->pairs[i].buf)
			goto out_free;
		ck_ring_init(&m->pairs[i].ring, capacity);
	}
	*out = m;
	return 0;
out_free:
	ring_mesh_destroy(m);
	return -ENOMEM;
}

void ring_mesh_destroy(struct ring_mesh *m)
{
	if (!m)
		return;
	if (m->pairs)
		for (size_t i = 0; i < (size_t)m->n * m->n; i++)
			free(m->pairs[i].buf);
	if (m->efd)
		for (uint16_t i = 0; i < m->n; i++)
			if (m->efd[i] >= 0)
				close(m->efd[i]);
	free(m->pairs);
	free(m->efd);
	free(m->next_from);
	free(m);
}

bool ring_send(struct ring_mesh *m, uint16_t from, uint16_t to, void *msg)
{
	struct ring_pair *p = &m->pairs[(size_t)from * m->n + to];
	/* Reserve, write the slot, then commit (the commit's store fence publishes the slot
	   before the producer index). Split so that the TSan release sits between the two. */
	ring_tsan_acquire(&p->buf); /* the consumer is done with the slot we may reuse */
	struct ck_ring_buffer *slot = ck_ring_enqueue_reserve_spsc(&p->ring, p->buf);
	if (!slot)
		return false;
	slot->value = msg;
	ring_tsan_release(&p->ring);
	ck_ring_enqueue_commit_spsc(&p->ring);
	return true;
}

void ring_wake(struct ring_mesh *m, uint16_t to)
{
	uint64_t one = 1;
	/* EAGAIN means the counter is saturated: the consumer is already bound to wake. */
	ssize_t rc = write(m->efd[to], &one, sizeof one);
	(void)rc;
}

int ring_wake_fd(const struct ring_mesh *m, uint16_t w)
{
	return m->efd[w];
}

void ring_wake_clear(struct ring_mesh *m, uint16_t w)
{
	uint64_t v;
	ssize_t rc = read(m->efd[w], &v, sizeof v);
	(void)rc;
}

size_t ring_drain(struct ring_mesh *m, uint16_t to, void **out, size_t cap)
{
	size_t got = 0;
	uint16_t start = m->next_from[to];
	for (uint16_t k = 0; k < m->n && got < cap; k++) {
		uint16_t from = (uint16_t)((start + k) % m->n);
		if (from == to)
			continue;
		struct ring_pair *p = &m->pairs[(size_t)from * m->n + to];
		/* Take only what was published when we looked, after acquiring it. */
		unsigned avail = ck_ring_size(&p->ring);
		if (avail == 0)
			continue;
		ring_tsan_acquire(&p->ring);
		while (avail-- > 0 && got < cap && ck_ring_dequeue_spsc(&p->ring, p->buf, &out[got]))
			got++;
		ring_tsan_release(&p->buf);
	}
	m->next_from[to] = (uint16_t)((start + 1) % m->n);
	return got;
}
