/* fuzz.h — what every fuzz harness in fuzz/ shares. */
#ifndef AUTHPROXY_FUZZ_H
#define AUTHPROXY_FUZZ_H

#include <stdio.h>
#include <stdlib.h>

/* An invariant the code under test must keep for any input: on failure it names the harness
 * file, the line and the condition, then aborts, which libFuzzer records as a crash and keeps
 * the input for. */
#define CHECK(cond)                                                                                \
    do {                                                                                           \
        if (!(cond)) {                                                                             \
            fprintf(stderr, "%s:%d: check failed: %s\n", __FILE__, __LINE__, #cond);               \
            abort();                                                                               \
        }                                                                                          \
    } while (0)

#endif
