/*
 * client_fake_server.h — an in-process fake tally server for client tests, built only from
 * the protocol codec (src/proto.c) and the event decoder (src/event.c). It is NOT the broker:
 * nothing is durable; it exists to drive clients through every reply the protocol allows.
 *
 * One thread listens on 127.0.0.1 (ephemeral port unless `port` is set) and serves one
 * connection at a time, synchronously. By default (FAKE_NORMAL) it answers HELLO with
 * HELLO_OK (or ERROR AUTH fatal when api_key is set and differs), and each BATCH with an
 * ACK: REJECTED with event_decode()'s reason, DUPLICATE for a key seen before with the same
 * content digest, CONFLICT for a key seen before with a different digest, else ACCEPTED at
 * (shard = fingerprint % shard_count, next offset of that shard, from 0). The other modes
 * misbehave on purpose, see enum fake_mode. Malformed frames get ERROR (fatal) + close.
 *
 * Each event it receives (whatever its receipt) can be dumped as one line to `dump`, in the
 * format of fake_server_event_line(), so tests can compare exactly what arrived.
 */
#ifndef TALLY_TESTS_CLIENT_FAKE_SERVER_H
#define TALLY_TESTS_CLIENT_FAKE_SERVER_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include "tally/event.h"
#include "tally/protocol.h"

enum fake_mode {
	FAKE_NORMAL = 0,       /* answer every frame at once */
	FAKE_REVERSE,          /* hold ACKs until `hold` are pending, send them newest first */
	FAKE_ERROR_ON_BATCH,   /* batch number error_on_batch (1-based) gets ERROR(error_*) */
	FAKE_GARBAGE,          /* the first BATCH is answered with non-protocol bytes */
	FAKE_SILENT,           /* HELLO is answered, nothing after it */
	FAKE_SILENT_HELLO,     /* HELLO is never answered */
	FAKE_CLOSE_MID_FRAME,  /* the first BATCH gets half of its ACK, then the server closes */
	FAKE_HELLO_ERROR,      /* HELLO is answered with ERROR(error_*) */
	FAKE_TRICKLE,          /* every reply is written in pieces (7 bytes, 10 bytes, the rest)
				  with 2 ms pauses, so the client must reassemble partial frames */
	FAKE_WRONG_ACK_ID,     /* ACKs carry request_id + 1000 */
	FAKE_SHORT_ACK,        /* ACKs carry one receipt fewer than the batch had events */
};

struct fake_server_config {
	uint16_t port;              /* 0 = ephemeral */
	const char *api_key;        /* NULL = any key is accepted */
	uint32_t frame_bytes_max;   /* advertised; 0 = PROTO_FRAME_BYTES_DEFAULT */
	uint32_t batch_events_max;  /* 0 = PROTO_BATCH_EVENTS_DEFAULT */
	uint32_t inflight_max;      /* 0 = PROTO_INFLIGHT_DEFAULT */
	uint16_t shard_count;       /* 0 = 4 */
	const char *tenant;         /* NULL = "test" */
	int mode;                   /* enum fake_mode */
	uint32_t hold;              /* FAKE_REVERSE: ACKs held before flushing; 0 = 2 */
	uint32_t error_on_batch;    /* FAKE_ERROR_ON_BATCH */
	uint16_t error_code;        /* FAKE_ERROR_ON_BATCH, FAKE_HELLO_ERROR */
	bool error_fatal;           /* fatal: the server closes after sending the ERROR */
	const char *error_message;
	FILE *dump;                 /* NULL = no dump; flushed after each batch */
	int max_conns;              /* connections served before the thread ends; 0 = until stop */
};

struct fake_server_stats {
	uint32_t conns;       /* connections accepted */
	uint32_t hellos_ok;
	uint64_t batches;     /* BATCH frames parsed */
	uint64_t events;
	uint64_t accepted;
	uint64_t duplicates;
	uint64_t conflicts;
	uint64_t rejected;
	uint64_t pings;
	int last_frame_error;  /* the last proto_error found in a client's frame, 0 if none */
	char last_client_name[PROTO_CLIENT_NAME_BYTES_MAX + 1];
};

struct fake_server;

/* Binds, listens and starts the thread. Returns 0 or -errno. */
int fake_server_start(const struct fake_server_config *cfg, struct fake_server **out)
	__attribute__((warn_unused_result));

/* The port it listens on. */
uint16_t fake_server_port(const struct fake_server *s);

/* Snapshot of the counters (taken under the server's lock). */
void fake_server_stats(struct fake_server *s, struct fake_server_stats *out);

/* Stops the thread (closing any connection), joins it and frees everything. */
void fake_server_stop(struct fake_server *s);

/* Waits until the server thread ended by itself (max_conns reached). */
void fake_server_wait(struct fake_server *s);

/*
 * Formats a decoded event as one line (no newline), every byte outside [0x21, 0x7e] and
 * the characters % , = written as %XX:
 *   key=K customer=C name=N time_us=T props=k1:int:5,k2:dec:-12.50,k3:str:abc
 * A DECIMAL is written exactly, with `scale` digits after the point. Returns the length, or
 * -ENOSPC if cap is too small.
 */
int fake_server_event_line(const struct tally_event *ev, char *buf, size_t cap);

#endif
