/*
 * fake_tallyd — the test fake server (tests/client_fake_server.c) as a program, to try
 * `tally send` or a client by hand, or to drive a producer when no broker is at hand.
 * It stores nothing durably: it answers the protocol, deduplicates in memory and can dump
 * the events it receives. Not the broker.
 */
#include <errno.h>
#include <getopt.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "client_fake_server.h"

static volatile sig_atomic_t stop_flag;

static void on_signal(int sig)
{
	(void)sig;
	stop_flag = 1;
}

static void usage(FILE *f)
{
	fprintf(f,
		"usage: fake_tallyd [options]\n"
		"A fake tally server for tests: answers HELLO, ACKs batches (ACCEPTED with\n"
		"increasing offsets per shard, DUPLICATE/CONFLICT for repeated keys, REJECTED\n"
		"with the decoder's reason). Nothing is stored durably.\n"
		"  --port N          listen on 127.0.0.1:N (default 0 = any free port)\n"
		"  --port-file PATH  write the port there once listening\n"
		"  --api-key KEY     accept only this key (default: any)\n"
		"  --dump PATH       append one line per received event\n"
		"  --mode M          normal | reverse | silent | garbage | close-mid-frame\n"
		"  --batch-max N     advertised batch_events_max (default 4096)\n"
		"  --frame-max N     advertised frame_bytes_max (default 1048576)\n"
		"  --inflight-max N  advertised inflight_max (default 64)\n"
		"  --max-conns N     exit after serving N connections (default: run until signal)\n"
		"  --help\n");
}

int main(int argc, char **argv)
{
	static const struct option longopts[] = {
		{"port", required_argument, NULL, 'p'},      {"port-file", required_argument, NULL, 'P'},
		{"api-key", required_argument, NULL, 'k'},   {"dump", required_argument, NULL, 'd'},
		{"mode", required_argument, NULL, 'm'},      {"batch-max", required_argument, NULL, 'b'},
		{"frame-max", required_argument, NULL, 'f'}, {"inflight-max", required_argument, NULL, 'i'},
		{"max-conns", required_argument, NULL, 'n'}, {"help", no_argument, NULL, 'h'},
		{NULL, 0, NULL, 0},
	};
	struct fake_server_config cfg = {0};
	const char *port_file = NULL, *dump = NULL;
	int opt;
	while ((opt = getopt_long(argc, argv, "h", longopts, NULL)) != -1) {
		switch (opt) {
		case 'p': cfg.port = (uint16_t)atoi(optarg); break;
		case 'P': port_file = optarg; break;
		case 'k': cfg.api_key = optarg; break;
		case 'd': dump = optarg; break;
		case 'b': cfg.batch_events_max = (uint32_t)atol(optarg); break;
		case 'f': cfg.frame_bytes_max = (uint32_t)atol(optarg); break;
		case 'i': cfg.inflight_max = (uint32_t)atol(optarg); break;
		case 'n': cfg.max_conns = atoi(optarg); break;
		case 'm':
			if (!strcmp(optarg, "normal"))
				cfg.mode = FAKE_NORMAL;
			else if (!strcmp(optarg, "reverse"))
				cfg.mode = FAKE_REVERSE;
			else if (!strcmp(optarg, "silent"))
				cfg.mode = FAKE_SILENT;
			else if (!strcmp(optarg, "garbage"))
				cfg.mode = FAKE_GARBAGE;
			else if (!strcmp(optarg, "close-mid-frame"))
				cfg.mode = FAKE_CLOSE_MID_FRAME;
			else {
				fprintf(stderr, "fake_tallyd: unknown mode \"%s\"\n", optarg);
				return 2;
			}
			break;
		case 'h': usage(stdout); return 0;
		default: usage(stderr); return 2;
		}
	}
	if (dump) {
		cfg.dump = fopen(dump, "a");
		if (!cfg.dump) {
			fprintf(stderr, "fake_tallyd: cannot open %s: %s\n", dump, strerror(errno));
			return 2;
		}
	}
	struct fake_server *s;
	int rc = fake_server_start(&cfg, &s);
	if (rc < 0) {
		fprintf(stderr, "fake_tallyd: cannot listen: %s\n", strerror(-rc));
		return 2;
	}
	if (port_file) {
		FILE *f = fopen(port_file, "w");
		if (!f || fprintf(f, "%u\n", fake_server_port(s)) < 0 || fclose(f) != 0) {
			fprintf(stderr, "fake_tallyd: cannot write %s\n", port_file);
			fake_server_stop(s);
			return 2;
		}
	}
	printf("fake_tallyd listening on 127.0.0.1:%u\n", fake_server_port(s));
	fflush(stdout);
	signal(SIGINT, on_signal);
	signal(SIGTERM, on_signal);
	/* Wait for a signal, or for the server thread to end after max_conns. */
	for (;;) {
		struct fake_server_stats st;
		fake_server_stats(s, &st);
		if (stop_flag || (cfg.max_conns && (int)st.conns >= cfg.max_conns))
			break;
		usleep(50 * 1000);
	}
	if (cfg.max_conns && !stop_flag)
		fake_server_wait(s);
	fake_server_stop(s);
	if (cfg.dump)
		fclose(cfg.dump);
	return 0;
}
