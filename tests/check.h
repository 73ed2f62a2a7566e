/*
 * check.h — the counting assertions of the tests that keep going after a failure (each
 * failure is printed with its file and line and counted in `failures`; main() exits non-zero
 * if any). Tests that stop at the first failure use wal_testutil.h's instead.
 */
#ifndef TALLY_TEST_CHECK_H
#define TALLY_TEST_CHECK_H

#include <stdio.h>

static int failures;

#define CHECK(cond)                                                                              \
	do {                                                                                     \
		if (!(cond)) {                                                                   \
			fprintf(stderr, "%s:%d: CHECK failed: %s\n", __FILE__, __LINE__, #cond); \
			failures++;                                                              \
		}                                                                                \
	} while (0)

#define CHECK_EQ(a, b)                                                                           \
	do {                                                                                     \
		long long a_ = (long long)(a), b_ = (long long)(b);                              \
		if (a_ != b_) {                                                                  \
			fprintf(stderr, "%s:%d: CHECK_EQ failed: %s = %lld, %s = %lld\n",         \
				__FILE__, __LINE__, #a, a_, #b, b_);                             \
			failures++;                                                              \
		}                                                                                \
	} while (0)

#endif
