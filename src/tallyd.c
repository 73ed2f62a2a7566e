/*
 * tallyd — the tally broker. Parses flags, opens (and recovers) the WAL, starts the threads
 * (src/net.c), and turns SIGTERM/SIGINT into a clean stop: stop accepting, finish in-flight
 * batches, seal and sync, exit 0. A storage failure (failed fdatasync) exits 1 without any
 * further acknowledgement. Architecture and flags: docs/architecture.md.
 */
#include <errno.h>
#include <getopt.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/signalfd.h>
#include <sys/stat.h>
#include <unistd.h>

#include "broker.h"
#include "net.h"
#include "tally/dedup.h"
#include "tally/version.h"
#include "tally/wal.h"

static struct broker *g_broker;
static volatile sig_atomic_t g_signalled;

static void on_signal(int sig)
{
	(void)sig;
	g_signalled = 1;
	if (g_broker)
		broker_request_stop(g_broker);
}


static void usage(FILE *f)
{
	fprintf(f,
		"usage: tallyd [options]\n"
		"\n"
		"The tally broker: takes usage events over the tally protocol, deduplicates them by\n"
		"idempotency key, writes them to the WAL and acknowledges each once it is durable.\n"
		"\n"
		"  --listen HOST:PORT     address to listen on (default 127.0.0.1:7878; port 0 = any)\n"
		"  --data DIR             data directory (default ./var)\n"
		"  --threads N            event-loop threads (default: online CPUs)\n"
		"  --shards N             shards of a NEW data directory (default 8; fixed after)\n"
		"  --io uring|epoll       I/O backend (default uring, falls back to epoll)\n"
		"  --fsync always|interval=MS\n"
		"                         always (default): acknowledge only after fdatasync;\n"
		"                         interval=MS: acknowledge on write, sync every MS ms (a power\n"
		"                         loss can lose up to MS ms of acknowledged events)\n"
		"  --dedup-window DAYS    how long idempotency keys are remembered (default 35, max 400)\n"
		"  --max-age DAYS         reject events older than this (default = dedup window)\n"
		"  --max-future SECONDS   reject events further ahead than this (default 300)\n"
		"  --auth-file FILE       API keys -> tenants ('<tenant> <key>' per line, mode 600);\n"
		"                         SIGHUP reads it again (docs/architecture.md)\n"
		"  --insecure             allow a non-loopback --listen without --auth-file\n"
		"  --max-conns N          connection limit (default 10000)\n"
		"  --max-frame BYTES      largest frame (default 1048576)\n"
		"  --max-batch N          events per batch (default 4096)\n"
		"  --max-inflight N       un-acknowledged batches per connection (default 64)\n"
		"  --idle-timeout S       close idle connections after S seconds (default 300)\n"
		"  --read-timeout S       a started frame must complete within S seconds (default 10)\n"
		"  --max-buffer-mb N      receive buffers of all connections together (default 1024)\n"
		"  --segment-bytes N      WAL segment roll size (default 128 MiB)\n"
		"  --wal-prefill-kb N     zero-fill WAL segments N KiB ahead of the data, so that\n"
		"                         fdatasync need not commit a new file size (default 1024;\n"
		"                         0 = off, append only)\n"
		"  --wal-prefill-ahead on|off  zero-fill the next stretch while half the prefill is\n"
		"                         left, and make its size durable on a background thread,\n"
		"                         so group commits never wait for it (default on; off =\n"
		"                         the group commit that reaches it syncs the new size)\n"
		"  --wal-cache-mb N       page cache each WAL shard keeps behind its end: older\n"
		"                         durable bytes are dropped after each sync, so the cache\n"
		"                         is reused instead of growing (default 8; 0 = keep all)\n"
		"  --wal-lz4-accel N      LZ4 acceleration of WAL blocks: 1 = best ratio, higher is\n"
		"                         faster with a lower ratio (default 4; 1..64)\n"
		"  --expected-keys N      dedup hot-table keys to preallocate per shard (default 1Mi)\n"
		"  --dedup-write-mb-per-s N  cap on the rate each shard's sealer writes dedup runs,\n"
		"                         so WAL syncs do not queue behind them (default 128; 0 = none)\n"
		"  --commit-window-us N   group commit: each thread's shards start at most one sync\n"
		"                         per window of N us, all threads in step (default 2500;\n"
		"                         0 = sync as soon as the previous sync is done)\n"
		"  --group-flush on|off   one device cache flush per group commit for all of a\n"
		"                         thread's shards (their blocks written back first), where\n"
		"                         the file system is known to honour it: ext4, XFS (default\n"
		"                         on; off = a syncer thread and an fdatasync per shard)\n"
		"  --shared-flush on|off  threads whose group commits overlap share one device\n"
		"                         flush (default on; off = one flush per thread's group)\n"
		"  --stats-interval S     log a stats line (events by receipt, batches, connections)\n"
		"                         every S seconds that saw traffic (default 60; 0 = only the\n"
		"                         total at stop)\n"
		"  --slow-sync-ms N       log a warning when a group commit's sync takes N ms or\n"
		"                         more (default 100; 0 = never; at most one line per 10 s)\n"
		"  --sync-delay-us N      inject N us of latency per fdatasync (benchmarks)\n"
		"  --repair               on a corrupt WAL tail, move the bad bytes to a .quarantine file\n"
		"                         and start (default: refuse to start and say where)\n"
		"  --port-file FILE       write the port listened on to FILE (tests)\n"
		"  --log-level debug|info|warn|error\n"
		"  --version              print the version and the libraries' versions\n"
		"  --help                 this text\n");
}

static int parse_u64(const char *s, uint64_t max, uint64_t *out)
{
	char *end;
	errno = 0;
	unsigned long long v = strtoull(s, &end, 10);
	if (errno || end == s || *end || v > max || s[0] == '-')
		return -EINVAL;
	*out = v;
	return 0;
}

/* "on" or "off" into *out; -EINVAL (and *out unchanged) for anything else. */
static int parse_onoff(const char *s, bool *out)
{
	if (strcmp(s, "on") && strcmp(s, "off"))
		return -EINVAL;
	*out = !strcmp(s, "on");
	return 0;
}

static int parse_listen(const char *s, char *host, size_t hostlen, uint16_t *port)
{
	const char *colon = strrchr(s, ':');
	uint64_t p;
	if (!colon || colon == s || (size_t)(colon - s) >= hostlen ||
	    parse_u64(colon + 1, 65535, &p) < 0)
		return -EINVAL;
	memcpy(host, s, (size_t)(colon - s));
	host[colon - s] = 0;
	if (!strcmp(host, "localhost"))
		strcpy(host, "127.0.0.1");
	*port = (uint16_t)p;
	return 0;
}

static bool is_loopback(const char *host)
{
	return !strncmp(host, "127.", 4);
}

int main(int argc, char **argv)
{
	static char host[64] = "127.0.0.1";
	struct broker_config cfg = {
		.listen_host = host,
		.port = 7878,
		.data_dir = "./var",
		.threads = (uint16_t)sysconf(_SC_NPROCESSORS_ONLN),
		.shards = 0,
		.io = BROKER_IO_URING,
		.fsync_mode = WAL_FSYNC_ALWAYS,
		.fsync_interval_ms = 0,
		.dedup_window_us = DEDUP_WINDOW_US_DEFAULT,
		.max_future_us = 300LL * 1000000,
		.max_age_us = 0,
		.max_conns = 10000,
		.frame_bytes_max = PROTO_FRAME_BYTES_DEFAULT,
		.batch_events_max = PROTO_BATCH_EVENTS_DEFAULT,
		.inflight_max = PROTO_INFLIGHT_DEFAULT,
		.hello_timeout_ms = 5000,
		.idle_timeout_ms = 300000,
		.read_timeout_ms = 10000,
		.auth_fail_delay_ms = 500,
		.expected_keys = 0,
		.tick_idle_ms = 1000,
		.rbuf_budget_bytes = 1024ull << 20,
		.dedup_write_rate = 128ull << 20,
		.commit_window_us = 2500,
		.slow_sync_ms = 100,
		.stats_interval_s = 60,
		.reload_fd = -1,
	};
	const char *port_file = NULL;
	uint32_t prefill_kb = 1024;
	uint32_t cache_mb = 8;
	uint32_t lz4_accel = 4;
	bool repair = false;
	bool group_flush = true;
	bool shared_flush = true;
	bool prefill_ahead = true;
	enum {
		O_LISTEN = 256, O_DATA, O_THREADS, O_SHARDS, O_IO, O_FSYNC, O_WINDOW, O_MAXAGE,
		O_FUTURE, O_AUTH, O_INSECURE, O_CONNS, O_FRAME, O_BATCH, O_INFLIGHT, O_IDLE,
		O_READ, O_BUFMB, O_SEGMENT, O_PREFILL, O_LZ4, O_KEYS, O_DWRATE, O_SYNCDELAY, O_SLOWSYNC, O_STATS, O_WINDOWUS, O_GROUPFLUSH, O_SHAREDFLUSH, O_PREFILLAHEAD, O_CACHEMB, O_REPAIR, O_PORTFILE, O_LOG, O_HELP, O_VERSION
	};
	static const struct option opts[] = {
		{"listen", 1, 0, O_LISTEN},       {"data", 1, 0, O_DATA},
		{"threads", 1, 0, O_THREADS},     {"shards", 1, 0, O_SHARDS},
		{"io", 1, 0, O_IO},               {"fsync", 1, 0, O_FSYNC},
		{"dedup-window", 1, 0, O_WINDOW}, {"max-age", 1, 0, O_MAXAGE},
		{"max-future", 1, 0, O_FUTURE},   {"auth-file", 1, 0, O_AUTH},
		{"insecure", 0, 0, O_INSECURE},   {"max-conns", 1, 0, O_CONNS},
		{"max-frame", 1, 0, O_FRAME},     {"max-batch", 1, 0, O_BATCH},
		{"max-inflight", 1, 0, O_INFLIGHT}, {"idle-timeout", 1, 0, O_IDLE},
		{"read-timeout", 1, 0, O_READ},   {"segment-bytes", 1, 0, O_SEGMENT},
		{"wal-prefill-kb", 1, 0, O_PREFILL},
		{"wal-lz4-accel", 1, 0, O_LZ4},
		{"dedup-write-mb-per-s", 1, 0, O_DWRATE},
		{"max-buffer-mb", 1, 0, O_BUFMB},
		{"expected-keys", 1, 0, O_KEYS},  {"sync-delay-us", 1, 0, O_SYNCDELAY},
		{"slow-sync-ms", 1, 0, O_SLOWSYNC},
		{"stats-interval", 1, 0, O_STATS},
		{"port-file", 1, 0, O_PORTFILE},  {"log-level", 1, 0, O_LOG},
		{"repair", 0, 0, O_REPAIR},
		{"commit-window-us", 1, 0, O_WINDOWUS},
		{"group-flush", 1, 0, O_GROUPFLUSH},
		{"shared-flush", 1, 0, O_SHAREDFLUSH},
		{"wal-prefill-ahead", 1, 0, O_PREFILLAHEAD},
		{"wal-cache-mb", 1, 0, O_CACHEMB},
		{"help", 0, 0, O_HELP},           {"version", 0, 0, O_VERSION},
		{0, 0, 0, 0},
	};
	uint64_t v;
	int64_t max_age_days = -1;
	int c;
	while ((c = getopt_long(argc, argv, "h", opts, NULL)) != -1) {
		const char *bad = NULL;
		switch (c) {
		case O_LISTEN:
			if (parse_listen(optarg, host, sizeof host, &cfg.port) < 0)
				bad = "--listen wants HOST:PORT, e.g. 127.0.0.1:7878";
			break;
		case O_DATA:
			cfg.data_dir = optarg;
			break;
		case O_THREADS:
			if (parse_u64(optarg, BROKER_THREADS_MAX, &v) < 0 || v == 0)
				bad = "--threads wants 1..64";
			cfg.threads = (uint16_t)v;
			break;
		case O_SHARDS:
			if (parse_u64(optarg, BROKER_SHARDS_MAX, &v) < 0 || v == 0)
				bad = "--shards wants 1..256";
			cfg.shards = (uint16_t)v;
			break;
		case O_IO:
			if (!strcmp(optarg, "uring"))
				cfg.io = BROKER_IO_URING;
			else if (!strcmp(optarg, "epoll"))
				cfg.io = BROKER_IO_EPOLL;
			else
				bad = "--io wants uring or epoll";
			break;
		case O_FSYNC:
			if (!strcmp(optarg, "always")) {
				cfg.fsync_mode = WAL_FSYNC_ALWAYS;
			} else if (!strncmp(optarg, "interval=", 9) &&
				   parse_u64(optarg + 9, 60000, &v) == 0 && v > 0) {
				cfg.fsync_mode = WAL_FSYNC_INTERVAL;
				cfg.fsync_interval_ms = (uint32_t)v;
			} else {
				bad = "--fsync wants always or interval=MS (1..60000)";
			}
			break;
		case O_WINDOW:
			if (parse_u64(optarg, 400, &v) < 0 || v == 0)
				bad = "--dedup-window wants 1..400 days";
			cfg.dedup_window_us = (int64_t)v * 86400 * 1000000;
			break;
		case O_MAXAGE:
			if (parse_u64(optarg, 400, &v) < 0 || v == 0)
				bad = "--max-age wants 1..400 days";
			max_age_days = (int64_t)v;
			break;
		case O_FUTURE:
			if (parse_u64(optarg, 86400 * 7, &v) < 0)
				bad = "--max-future wants 0..604800 seconds";
			cfg.max_future_us = (int64_t)v * 1000000;
			break;
		case O_AUTH:
			cfg.auth_file = optarg;
			break;
		case O_INSECURE:
			cfg.insecure = true;
			break;
		case O_CONNS:
			if (parse_u64(optarg, 1000000, &v) < 0 || v == 0)
				bad = "--max-conns wants 1..1000000";
			cfg.max_conns = (uint32_t)v;
			break;
		case O_FRAME:
			if (parse_u64(optarg, PROTO_FRAME_BYTES_MAX, &v) < 0 ||
			    v < PROTO_FRAME_BYTES_MIN)
				bad = "--max-frame wants 4096..67108864";
			cfg.frame_bytes_max = (uint32_t)v;
			break;
		case O_BATCH:
			if (parse_u64(optarg, PROTO_BATCH_EVENTS_MAX, &v) < 0 || v == 0)
				bad = "--max-batch wants 1..65535";
			cfg.batch_events_max = (uint32_t)v;
			break;
		case O_INFLIGHT:
			if (parse_u64(optarg, 4096, &v) < 0 || v == 0)
				bad = "--max-inflight wants 1..4096";
			cfg.inflight_max = (uint32_t)v;
			break;
		case O_IDLE:
			if (parse_u64(optarg, 86400, &v) < 0 || v == 0)
				bad = "--idle-timeout wants 1..86400 seconds";
			cfg.idle_timeout_ms = (uint32_t)v * 1000;
			break;
		case O_READ:
			if (parse_u64(optarg, 3600, &v) < 0 || v == 0)
				bad = "--read-timeout wants 1..3600 seconds";
			cfg.read_timeout_ms = (uint32_t)v * 1000;
			break;
		case O_BUFMB:
			if (parse_u64(optarg, 1u << 20, &v) < 0 || v < 2)
				bad = "--max-buffer-mb wants 2..1048576";
			cfg.rbuf_budget_bytes = v << 20;
			break;
		case O_SEGMENT:
			if (parse_u64(optarg, 1ull << 40, &v) < 0 || v < WAL_SEGMENT_BYTES_MIN)
				bad = "--segment-bytes wants at least 65536";
			cfg.segment_bytes_max = v;
			break;
		case O_PREFILL:
			if (parse_u64(optarg, 1u << 20, &v) < 0)
				bad = "--wal-prefill-kb wants 0..1048576";
			prefill_kb = (uint32_t)v;
			break;
		case O_CACHEMB:
			if (parse_u64(optarg, 4095, &v) < 0)
				bad = "--wal-cache-mb wants 0..4095";
			cache_mb = (uint32_t)v;
			break;
		case O_WINDOWUS:
			if (parse_u64(optarg, 1000000, &v) < 0)
				bad = "--commit-window-us wants 0..1000000";
			cfg.commit_window_us = (uint32_t)v;
			break;
		case O_GROUPFLUSH:
			if (parse_onoff(optarg, &group_flush) < 0)
				bad = "--group-flush wants on or off";
			break;
		case O_SHAREDFLUSH:
			if (parse_onoff(optarg, &shared_flush) < 0)
				bad = "--shared-flush wants on or off";
			break;
		case O_PREFILLAHEAD:
			if (parse_onoff(optarg, &prefill_ahead) < 0)
				bad = "--wal-prefill-ahead wants on or off";
			break;
		case O_LZ4:
			if (parse_u64(optarg, 64, &v) < 0 || v < 1)
				bad = "--wal-lz4-accel wants 1..64";
			lz4_accel = (uint32_t)v;
			break;
		case O_DWRATE:
			if (parse_u64(optarg, 1u << 20, &v) < 0)
				bad = "--dedup-write-mb-per-s wants 0..1048576";
			cfg.dedup_write_rate = v << 20;
			break;
		case O_KEYS:
			if (parse_u64(optarg, 1ull << 31, &v) < 0)
				bad = "--expected-keys wants 0..2^31";
			cfg.expected_keys = v;
			break;
		case O_SYNCDELAY:
			if (parse_u64(optarg, 1000000, &v) < 0)
				bad = "--sync-delay-us wants 0..1000000";
			cfg.sync_delay_us = (uint32_t)v;
			break;
		case O_STATS:
			if (parse_u64(optarg, 86400, &v) < 0)
				bad = "--stats-interval wants 0..86400 (seconds)";
			cfg.stats_interval_s = (uint32_t)v;
			break;
		case O_SLOWSYNC:
			if (parse_u64(optarg, 3600000, &v) < 0)
				bad = "--slow-sync-ms wants 0..3600000";
			cfg.slow_sync_ms = (uint32_t)v;
			break;
		case O_PORTFILE:
			port_file = optarg;
			break;
		case O_REPAIR:
			repair = true;
			break;
		case O_LOG:
			if (!strcmp(optarg, "debug"))
				broker_log_min = LOG_DEBUG;
			else if (!strcmp(optarg, "info"))
				broker_log_min = LOG_INFO;
			else if (!strcmp(optarg, "warn"))
				broker_log_min = LOG_WARN;
			else if (!strcmp(optarg, "error"))
				broker_log_min = LOG_ERROR;
			else
				bad = "--log-level wants debug, info, warn or error";
			break;
		case O_HELP:
		case 'h':
			usage(stdout);
			return 0;
		case O_VERSION:
			TALLY_PRINT_VERSION("tallyd");
			return 0;
		default:
			usage(stderr);
			return 2;
		}
		if (bad) {
			fprintf(stderr, "tallyd: %s (got '%s')\n", bad, optarg);
			return 2;
		}
	}
	if (optind < argc) {
		fprintf(stderr, "tallyd: unexpected argument '%s'\n", argv[optind]);
		return 2;
	}
	cfg.max_age_us = max_age_days > 0 ? max_age_days * 86400 * 1000000 : cfg.dedup_window_us;
	if (cfg.max_age_us > cfg.dedup_window_us) {
		fprintf(stderr, "tallyd: --max-age (%lld days) may not exceed --dedup-window (%lld "
				"days): a retry of an older event could no longer be recognised\n",
			(long long)(cfg.max_age_us / 86400000000LL),
			(long long)(cfg.dedup_window_us / 86400000000LL));
		return 2;
	}
	if (!cfg.auth_file && !is_loopback(host) && !cfg.insecure) {
		fprintf(stderr, "tallyd: refusing to listen on %s without --auth-file (every client "
				"would share one tenant); add --auth-file, or --insecure\n", host);
		return 2;
	}

	struct broker_auth *auth = NULL;
	if (cfg.auth_file) {
		char err[512];
		if (broker_auth_load(cfg.auth_file, &auth, err, sizeof err) < 0) {
			fprintf(stderr, "tallyd: %s\n", err);
			return 2;
		}
		broker_log(LOG_INFO, "auth: %zu API key(s) from %s", broker_auth_count(auth),
			   cfg.auth_file);
	}

	if (mkdir(cfg.data_dir, 0750) < 0 && errno != EEXIST) {
		fprintf(stderr, "tallyd: cannot create data directory %s: %s\n", cfg.data_dir,
			strerror(errno));
		return 1;
	}
	uint16_t stored = 0;
	if (wal_stored_shard_count(cfg.data_dir, &stored) == 0) {
		if (cfg.shards && cfg.shards != stored) {
			fprintf(stderr, "tallyd: %s was created with %u shards; --shards %u is refused "
					"(the shard count is fixed when the data directory is created)\n",
				cfg.data_dir, stored, cfg.shards);
			return 2;
		}
		cfg.shards = stored;
	} else if (!cfg.shards) {
		cfg.shards = 8;
	}

	struct wal_io_delay delay;
	struct wal_options wopt = {
		.shard_count = cfg.shards,
		.segment_bytes_max = cfg.segment_bytes_max,
		.fsync_mode = cfg.fsync_mode,
		.fsync_interval_ms = cfg.fsync_interval_ms,
		.on_segment_sealed = broker_on_segment_sealed,
		.ctx = &g_broker,
		.repair = repair,
		.prefill_bytes = prefill_kb ? prefill_kb << 10 : WAL_PREFILL_OFF,
		.lz4_acceleration = lz4_accel,
		.no_group_flush = !group_flush,
		.no_shared_flush = !shared_flush,
		.no_prefill_ahead = !prefill_ahead,
		.cache_keep_bytes = cache_mb ? cache_mb << 20 : WAL_CACHE_KEEP_ALL,
	};
	if (cfg.sync_delay_us) {
		wal_io_delay_init(&delay, NULL, cfg.sync_delay_us);
		wopt.io = &delay.io;
		broker_log(LOG_INFO, "injecting %u us per sync (--sync-delay-us)", cfg.sync_delay_us);
	}
	/* SIGHUP reloads the API keys: blocked in every thread (before the first one starts, so
	   all inherit the mask) and read by the broker's admin thread from a signalfd. A HUP
	   before the broker runs stays pending and is handled then. */
	sigset_t hup;
	sigemptyset(&hup);
	sigaddset(&hup, SIGHUP);
	if (pthread_sigmask(SIG_BLOCK, &hup, NULL) == 0)
		cfg.reload_fd = signalfd(-1, &hup, SFD_NONBLOCK | SFD_CLOEXEC);
	if (cfg.reload_fd < 0)
		broker_log(LOG_WARN, "no signalfd for SIGHUP (%s): the API keys cannot be reloaded",
			   strerror(errno));
	int64_t t0 = broker_now_us();
	struct wal *wal;
	int rc = wal_open(cfg.data_dir, &wopt, &wal);
	if (rc < 0) {
		broker_log(LOG_ERROR, "cannot open the WAL in %s: %s%s%s", cfg.data_dir,
			   strerror(-rc), wal_last_error()[0] ? ": " : "", wal_last_error());
		if (rc == -EBADMSG && !repair)
			broker_log(LOG_ERROR, "nothing was changed; inspect with `tally wal verify "
					      "--data %s`, or start with --repair to quarantine the "
					      "damaged bytes", cfg.data_dir);
		return 1;
	}

	if (group_flush && wal_shard_count(wal) > 0 && !wal_shard_group_flush(wal_shard(wal, 0)))
		broker_log(LOG_INFO, "group flush off: the file system of %s is not known to flush the "
				     "device on fdatasync (ext4, XFS are); one fdatasync per shard",
			   cfg.data_dir);

	struct sigaction sa = {.sa_handler = on_signal};
	sigemptyset(&sa.sa_mask);
	sigaction(SIGTERM, &sa, NULL);
	sigaction(SIGINT, &sa, NULL);
	signal(SIGPIPE, SIG_IGN);

	rc = broker_start(&cfg, wal, auth, &g_broker);
	if (rc < 0) {
		broker_log(LOG_ERROR, "start failed: %s", strerror(-rc));
		(void)wal_close(wal);
		broker_auth_free(auth);
		return 1;
	}
	if (port_file) {
		char tmp[4096];
		snprintf(tmp, sizeof tmp, "%s.tmp", port_file);
		FILE *f = fopen(tmp, "w");
		if (f) {
			fprintf(f, "%u\n", broker_port(g_broker));
			fclose(f);
			rename(tmp, port_file);
		}
	}
	broker_log(LOG_INFO,
		   "tallyd listening on %s:%u (data %s, %u shards, %u threads, io %s, fsync %s, "
		   "ready in %lld ms)",
		   host, broker_port(g_broker), cfg.data_dir, cfg.shards, cfg.threads,
		   broker_io(g_broker) == BROKER_IO_URING ? "uring" : "epoll",
		   cfg.fsync_mode == WAL_FSYNC_ALWAYS ? "always" : "interval",
		   (long long)((broker_now_us() - t0) / 1000));
	if (g_signalled)
		broker_request_stop(g_broker);

	rc = broker_wait(g_broker);
	g_broker = NULL;
	uint64_t sf_calls, sf_flushes;
	wal_shared_flush_stats(wal, &sf_calls, &sf_flushes);
	if (sf_calls)
		broker_log(LOG_INFO, "shared flush: %llu group commits took %llu device flushes",
			   (unsigned long long)sf_calls, (unsigned long long)sf_flushes);
	int wrc = rc < 0 ? 0 : wal_close(wal);
	broker_auth_free(auth);
	if (rc < 0) {
		broker_log(LOG_ERROR, "stopped on a storage failure: %s", strerror(-rc));
		return 1;
	}
	if (wrc < 0) {
		broker_log(LOG_ERROR, "closing the WAL failed: %s", strerror(-wrc));
		return 1;
	}
	broker_log(LOG_INFO, "tallyd stopped cleanly");
	return 0;
}
