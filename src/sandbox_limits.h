/* sandbox_limits: per-sandbox connection and request-rate limits (issue 6), shared by every
 * worker, so one sandbox's flood is answered 429 instead of taking the proxy from the others.
 *
 * A sandbox is named by a key the data path chooses: the box id when the sandbox is known (its
 * proxy credential or its capture address), else the client's address. Connections are counted
 * from the moment the sandbox is known until they close; requests draw from a token bucket
 * refilled at the configured rate. One mutex guards a small hash table; the critical sections
 * are a lookup and a few additions. Entries of sandboxes with no connection left and a full
 * bucket are swept when the table grows, so memory follows the number of active sandboxes. */
#ifndef AUTHPROXY_SANDBOX_LIMITS_H
#define AUTHPROXY_SANDBOX_LIMITS_H

#include <stdbool.h>
#include <stdint.h>

struct sandbox_limits;

struct sandbox_limits *sandbox_limits_new(void);
/* Every acquired connection must have been released. */
void sandbox_limits_free(struct sandbox_limits *l);

/* Counts one more connection for key unless it already has max (0: no limit). Returns true when
 * counted (the caller must release it exactly once), false when over the limit. Thread-safe. */
bool sandbox_limits_conn_acquire(struct sandbox_limits *l, const char *key, unsigned max);
void sandbox_limits_conn_release(struct sandbox_limits *l, const char *key);

/* Takes one request token for key at time now_us: the bucket holds at most burst tokens (0:
 * rate) and gains rate per second. rate 0: no limit (always true). Thread-safe. */
bool sandbox_limits_request(struct sandbox_limits *l, const char *key, unsigned rate,
                            unsigned burst, uint64_t now_us);

/* Connections counted for key now (tests, metrics). */
unsigned sandbox_limits_connections(struct sandbox_limits *l, const char *key);

#endif
