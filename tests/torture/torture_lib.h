/*
 * tests/torture/torture_lib.h — shared pieces of the torture suite (docs/reliability.md):
 * the deterministic event of a ledger key, the ledger file format, spawning tallyd.
 *
 * Ledger keys are "<tag>-p<producer>-<seq>": the content of the event is a pure function of
 * (tag, producer, seq, base_us), so a retry sends byte-identical events and the checker can
 * recompute what the WAL must hold without storing bodies.
 *
 * Ledger file DIR/ledger-<tag>-p<producer>.txt, text, one line each, appended and fdatasync'd
 * before a receipt is counted:
 *   "# ledger v1 tag=<tag> producer=<p> base_us=<i64> cprefix=<customer prefix>"  first
 *   "<seq> <status> <reason> <shard> <offset>"               one receipt (offset -1 = unknown)
 *   "# end next_seq=<n> unacked=<k>"                          last line of a clean exit
 * Every seq < next_seq was sent at least once; a seq with no receipt line was never
 * acknowledged (its fate is unknown; it may be in the WAL at most once).
 */
#ifndef TORTURE_LIB_H
#define TORTURE_LIB_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#include "tally/event.h"

#define TORTURE_TAG_BYTES_MAX 32
#define TORTURE_KEY_BYTES_MAX 96
#define TORTURE_PATH_BYTES_MAX 1024

/* Storage for one generated event (the tally_event_in points into it). */
struct torture_event {
	char key[TORTURE_KEY_BYTES_MAX];
	char customer[64];
	char region[16];
	struct tally_prop props[2];
	struct tally_event_in in;
};

int64_t torture_now_us(void);
/* Fills e with the event of (tag, producer, seq); its time is base_us + seq (µs). */
void torture_event_make(struct torture_event *e, const char *tag, const char *customer_prefix,
			unsigned producer, uint64_t seq, int64_t base_us);
/* Customers per producer: the event of seq names customer "<prefix>_<producer>_<slot>". */
#define TORTURE_CUSTOMERS_PER_PRODUCER 17
unsigned torture_customer_slot(unsigned producer, uint64_t seq);
/* Parses "<tag>-p<producer>-<seq>". Returns true and fills the outputs (tag NUL-terminated). */
bool torture_key_parse(const uint8_t *key, size_t len, char tag[TORTURE_TAG_BYTES_MAX + 1],
		       unsigned *producer, uint64_t *seq);

/* A tallyd child. */
struct torture_server {
	pid_t pid;
	uint16_t port;
	char bin[TORTURE_PATH_BYTES_MAX]; /* path of tallyd */
	char data[TORTURE_PATH_BYTES_MAX];
	char port_file[TORTURE_PATH_BYTES_MAX];
	char log[TORTURE_PATH_BYTES_MAX];
};

/*
 * Starts tallyd --listen 127.0.0.1:<port or 0> --data s->data --port-file s->port_file
 * plus extra (NULL-terminated), stderr appended to s->log, env additions `env` (NULL-terminated
 * "K=V" list, e.g. LD_PRELOAD). Waits for the port file (up to 20 s). 0 or -errno; -ECHILD if
 * tallyd exited before listening (*exit_status gets its status, may be NULL).
 */
int torture_server_start(struct torture_server *s, const char *const *extra,
			 const char *const *env, int *exit_status) __attribute__((warn_unused_result));
/* Sends sig, waits; returns the exit code, or 128 + signal. */
int torture_server_stop(struct torture_server *s, int sig);
/* Resident set size of pid in KiB, or -1. */
long torture_rss_kib(pid_t pid);

#endif /* TORTURE_LIB_H */
