/* conn: one client connection to the proxy and everything it leads to.
 *
 * A conn holds the client side and, while a request is in flight or a tunnel is open, the
 * upstream side; an explicit state machine (enum conn_state in conn.c) says which callbacks are
 * live, and conn_close is the single, idempotent teardown every error path ends in. */
#ifndef AUTHPROXY_CONN_H
#define AUTHPROXY_CONN_H

#include <sys/socket.h>

#include "worker.h"

/* Takes ownership of the accepted socket fd on the explicit proxy port. */
void conn_accept_explicit(struct worker *w, int fd, const struct sockaddr *peer, int peer_len);

/* Takes ownership of a socket accepted on the transparent port: a sandbox's TCP connection,
 * redirected by its capture rules. The original destination comes from SO_ORIGINAL_DST, the
 * name from the TLS SNI or the HTTP Host; peers that are not sandboxes are closed. */
void conn_accept_transparent(struct worker *w, int fd, const struct sockaddr *peer, int peer_len);

/* Closes every connection of w that is between requests (the worker drains for shutdown;
 * busy connections close when their exchange ends, because w->draining is set). */
void conn_close_idle(struct worker *w);

/* Closes c unconditionally (shutdown grace period over). */
void conn_abort(struct conn *c);

#endif
