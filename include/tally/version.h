/*
 * version.h — the version every binary prints for --version: the CMake project's VERSION,
 * passed by CMakeLists.txt as TALLY_VERSION_STRING, and the versions of the libraries it was
 * built against (pkg-config's), as TALLY_DEPS_STRING.
 */
#ifndef TALLY_VERSION_H
#define TALLY_VERSION_H

#ifndef TALLY_VERSION_STRING
#define TALLY_VERSION_STRING "0.0.0-unknown"
#endif
#ifndef TALLY_DEPS_STRING
#define TALLY_DEPS_STRING "?"
#endif
#define TALLY_VERSION TALLY_VERSION_STRING

/* "NAME 0.1.0\n  built with liburing 2.3, LZ4 1.9.4, ...\n" on stdout, for --version. */
#define TALLY_PRINT_VERSION(name) \
	printf("%s %s\n  built with %s\n", (name), TALLY_VERSION, TALLY_DEPS_STRING)

#endif
