/*
 * tests/torture/torture_lib.c — see torture_lib.h. Used by the producer, the checker and the
 * abuse test; single-threaded helpers except torture_event_make (pure, any thread).
 */
#include "torture_lib.h"

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

int64_t torture_now_us(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_REALTIME, &ts);
	return (int64_t)ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
}

static uint64_t mix64(uint64_t x)
{
	x ^= x >> 33;
	x *= 0xff51afd7ed558ccdull;
	x ^= x >> 33;
	x *= 0xc4ceb9fe1a85ec53ull;
	x ^= x >> 33;
	return x;
}

unsigned torture_customer_slot(unsigned producer, uint64_t seq)
{
	return (unsigned)(mix64(seq * 1000003u + producer) % TORTURE_CUSTOMERS_PER_PRODUCER);
}

void torture_event_make(struct torture_event *e, const char *tag, const char *customer_prefix,
			unsigned producer, uint64_t seq, int64_t base_us)
{
	static const char *const regions[] = {"eu-west", "us-east", "ap-south"};
	uint64_t h = mix64(seq * 1000003u + producer);
	snprintf(e->key, sizeof e->key, "%s-p%u-%" PRIu64, tag, producer, seq);
	snprintf(e->customer, sizeof e->customer, "%s_%u_%" PRIu64, customer_prefix, producer,
		 h % TORTURE_CUSTOMERS_PER_PRODUCER);
	snprintf(e->region, sizeof e->region, "%s", regions[h % 3]);
	e->props[0] = (struct tally_prop){.key = {(const uint8_t *)"tokens", 6},
					  .kind = TALLY_VALUE_INT,
					  .i64 = (int64_t)(h % 100000)};
	e->props[1] = (struct tally_prop){.key = {(const uint8_t *)"region", 6},
					  .kind = TALLY_VALUE_STRING,
					  .str = {(const uint8_t *)e->region,
						  (uint32_t)strlen(e->region)}};
	e->in = (struct tally_event_in){
	    .key = {(const uint8_t *)e->key, (uint32_t)strlen(e->key)},
	    .customer = {(const uint8_t *)e->customer, (uint32_t)strlen(e->customer)},
	    .name = {(const uint8_t *)"ai.tokens", 9},
	    .event_time_us = base_us + (int64_t)seq,
	    .prop_count = 2,
	    .props = e->props,
	};
}

bool torture_key_parse(const uint8_t *key, size_t len, char tag[TORTURE_TAG_BYTES_MAX + 1],
		       unsigned *producer, uint64_t *seq)
{
	/* From the end: digits, '-', digits, 'p', '-', tag. */
	size_t i = len;
	uint64_t s = 0, mul = 1;
	size_t nd = 0;
	while (i > 0 && key[i - 1] >= '0' && key[i - 1] <= '9' && nd < 19) {
		s += (uint64_t)(key[i - 1] - '0') * mul;
		mul *= 10;
		i--;
		nd++;
	}
	if (nd == 0 || i < 1 || key[i - 1] != '-')
		return false;
	i--;
	unsigned p = 0, pm = 1;
	nd = 0;
	while (i > 0 && key[i - 1] >= '0' && key[i - 1] <= '9' && nd < 6) {
		p += (unsigned)(key[i - 1] - '0') * pm;
		pm *= 10;
		i--;
		nd++;
	}
	if (nd == 0 || i < 2 || key[i - 1] != 'p' || key[i - 2] != '-')
		return false;
	i -= 2;
	if (i == 0 || i > TORTURE_TAG_BYTES_MAX)
		return false;
	memcpy(tag, key, i);
	tag[i] = 0;
	*producer = p;
	*seq = s;
	return true;
}

int torture_server_start(struct torture_server *s, const char *const *extra,
			 const char *const *env, int *exit_status)
{
	const char *argv[64];
	int n = 0;
	argv[n++] = s->bin;
	argv[n++] = "--data";
	argv[n++] = s->data;
	argv[n++] = "--port-file";
	argv[n++] = s->port_file;
	char listen[64];
	snprintf(listen, sizeof listen, "127.0.0.1:%u", s->port);
	argv[n++] = "--listen";
	argv[n++] = listen;
	for (int i = 0; extra && extra[i] && n < 62; i++)
		argv[n++] = extra[i];
	argv[n] = NULL;
	unlink(s->port_file);
	s->pid = fork();
	if (s->pid < 0)
		return -errno;
	if (s->pid == 0) {
		int fd = open(s->log, O_WRONLY | O_CREAT | O_APPEND, 0644);
		if (fd >= 0) {
			dup2(fd, 2);
			dup2(fd, 1);
			close(fd);
		}
		for (int i = 0; env && env[i]; i++)
			putenv((char *)env[i]);
		execv(s->bin, (char **)argv);
		_exit(127);
	}
	for (int i = 0; i < 1000; i++) {
		FILE *f = fopen(s->port_file, "r");
		if (f) {
			unsigned p = 0;
			int ok = fscanf(f, "%u", &p) == 1 && p;
			fclose(f);
			if (ok) {
				s->port = (uint16_t)p;
				return 0;
			}
		}
		int st;
		if (waitpid(s->pid, &st, WNOHANG) == s->pid) {
			if (exit_status)
				*exit_status = st;
			s->pid = 0;
			return -ECHILD;
		}
		usleep(20000);
	}
	kill(s->pid, SIGKILL);
	waitpid(s->pid, NULL, 0);
	s->pid = 0;
	return -ETIMEDOUT;
}

int torture_server_stop(struct torture_server *s, int sig)
{
	int st = 0;
	if (s->pid <= 0)
		return -1;
	kill(s->pid, sig);
	waitpid(s->pid, &st, 0);
	s->pid = 0;
	return WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
}

long torture_rss_kib(pid_t pid)
{
	char path[64], line[256];
	snprintf(path, sizeof path, "/proc/%d/status", (int)pid);
	FILE *f = fopen(path, "r");
	if (!f)
		return -1;
	long kib = -1;
	while (fgets(line, sizeof line, f))
		if (!strncmp(line, "VmRSS:", 6)) {
			kib = strtol(line + 6, NULL, 10);
			break;
		}
	fclose(f);
	return kib;
}
