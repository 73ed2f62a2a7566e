/*
 * test_ring — the ring mesh between broker threads: every message sent arrives exactly once,
 * in order per (from, to) pair, with eventfd wake-ups and no busy-spinning consumer. Run under
 * ThreadSanitizer by `make tsan` (label tsan) as well as under ASan in `make test`.
 */
#include <poll.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "tally/ring.h"

#define THREADS 4
static uint32_t PER_PAIR = 100000; /* argv[1] overrides */

static struct ring_mesh *mesh;
static int failures;

struct msg {
	uint32_t from;
	uint32_t seq;
	uint64_t payload; /* written before sending: must be visible to the consumer */
};

static struct msg *msgs[THREADS][THREADS];
static uint64_t received[THREADS];

static void *thread_main(void *arg)
{
	uint16_t me = (uint16_t)(uintptr_t)arg;
	uint32_t sent[THREADS] = {0}, next_seq[THREADS] = {0};
	uint64_t got = 0, want = (uint64_t)PER_PAIR * (THREADS - 1);
	void *in[256];
	int bad = 0;
	for (;;) {
		bool progress = false;
		/* Send a burst to every other thread. */
		for (uint16_t to = 0; to < THREADS; to++) {
			if (to == me)
				continue;
			for (int k = 0; k < 64 && sent[to] < PER_PAIR; k++) {
				struct msg *m = &msgs[me][to][sent[to]];
				m->from = me;
				m->seq = sent[to];
				m->payload = ((uint64_t)me << 32) ^ sent[to] ^ 0xabcdef;
				if (!ring_send(mesh, me, to, m))
					break;
				sent[to]++;
				progress = true;
			}
			ring_wake(mesh, to);
		}
		ring_wake_clear(mesh, me);
		size_t n;
		while ((n = ring_drain(mesh, me, in, 256)) > 0) {
			progress = true;
			for (size_t i = 0; i < n; i++) {
				struct msg *m = in[i];
				if (m->seq != next_seq[m->from] ||
				    m->payload != (((uint64_t)m->from << 32) ^ m->seq ^ 0xabcdef))
					bad++;
				next_seq[m->from] = m->seq + 1;
				got++;
			}
		}
		bool all_sent = true;
		for (uint16_t to = 0; to < THREADS; to++)
			if (to != me && sent[to] < PER_PAIR)
				all_sent = false;
		if (got >= want && all_sent)
			break;
		if (!progress && all_sent) {
			/* Nothing to do: sleep on the eventfd, as the broker does. */
			struct pollfd p = {.fd = ring_wake_fd(mesh, me), .events = POLLIN};
			poll(&p, 1, 100);
		}
	}
	received[me] = got;
	if (bad) {
		fprintf(stderr, "thread %u: %d messages out of order or torn\n", me, bad);
		__atomic_add_fetch(&failures, 1, __ATOMIC_RELAXED);
	}
	return NULL;
}

int main(int argc, char **argv)
{
	if (argc > 1)
		PER_PAIR = (uint32_t)strtoul(argv[1], NULL, 10);
	if (ring_mesh_create(THREADS, 1024, &mesh) != 0) {
		fprintf(stderr, "ring_mesh_create failed\n");
		return 1;
	}
	/* Bad arguments are refused. */
	struct ring_mesh *m2;
	if (ring_mesh_create(0, 1024, &m2) == 0 || ring_mesh_create(2, 1000, &m2) == 0 ||
	    ring_mesh_create(RING_THREADS_MAX + 1, 1024, &m2) == 0) {
		fprintf(stderr, "bad arguments accepted\n");
		failures++;
	}
	/* A full ring says so instead of overwriting. */
	struct ring_mesh *small;
	if (ring_mesh_create(2, 4, &small) == 0) {
		int x[8];
		int ok = 0;
		for (int i = 0; i < 8; i++)
			ok += ring_send(small, 0, 1, &x[i]);
		if (ok != 3) { /* a CK ring of size 4 holds 3 */
			fprintf(stderr, "ring of 4 took %d messages, want 3\n", ok);
			failures++;
		}
		void *out[8];
		size_t n = ring_drain(small, 1, out, 8);
		if (n != 3 || out[0] != &x[0] || out[2] != &x[2]) {
			fprintf(stderr, "drain returned %zu\n", n);
			failures++;
		}
		ring_mesh_destroy(small);
	}
	for (int i = 0; i < THREADS; i++)
		for (int j = 0; j < THREADS; j++)
			msgs[i][j] = calloc(PER_PAIR, sizeof(struct msg));
	pthread_t th[THREADS];
	for (uintptr_t i = 0; i < THREADS; i++)
		pthread_create(&th[i], NULL, thread_main, (void *)i);
	for (int i = 0; i < THREADS; i++)
		pthread_join(th[i], NULL);
	for (int i = 0; i < THREADS; i++)
		if (received[i] != (uint64_t)PER_PAIR * (THREADS - 1)) {
			fprintf(stderr, "thread %d received %llu\n", i,
				(unsigned long long)received[i]);
			failures++;
		}
	for (int i = 0; i < THREADS; i++)
		for (int j = 0; j < THREADS; j++)
			free(msgs[i][j]);
	ring_mesh_destroy(mesh);
	printf("test_ring: %s (%u messages per pair, %d threads)\n",
	       failures ? "FAILED" : "passed", PER_PAIR, THREADS);
	return failures ? 1 : 0;
}
