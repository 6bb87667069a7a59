/* httpc: the proxy's own outgoing HTTP requests — credential callbacks (SPEC §4) and token
 * endpoints (GCP) — as one-shot HTTP/1.1 exchanges inside a worker's event loop.
 *
 * It goes through the same door as the data path: upstream_connect (dns_remap, verified TLS
 * against the system store plus upstream_ca_file, refusal of authproxy's own listeners) and
 * the strict response parser of http1. One connection per exchange ("Connection: close"):
 * these requests are rare (their answers are cached) and a fresh connection keeps no state
 * between callers. The response body is bounded; content-length, chunked and until-close
 * framings are accepted, chunked is decoded.
 *
 * Everything the exchange needs is copied at start, so the caller's buffers may go away. Request
 * and response bytes may hold credentials: the copies this module makes are zeroed when freed. */
#ifndef AUTHPROXY_HTTPC_H
#define AUTHPROXY_HTTPC_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "worker.h"

struct httpc_header {
    const char *name;
    const char *value;
};

struct httpc_request {
    const char *method;                 /* e.g. "POST" */
    const char *url;                    /* absolute http:// or https:// URL */
    const struct httpc_header *headers; /* besides Host, Content-Length and Connection */
    size_t n_headers;
    const void *body;
    size_t body_len;
    unsigned timeout_ms; /* for the whole exchange: resolve, connect, TLS, request, response */
    size_t max_body;     /* a longer response body fails the exchange */
};

struct httpc_response {
    int status;
    const char *body; /* decoded (no chunk framing), NUL-terminated, valid during the callback */
    size_t body_len;
};

/* Called exactly once per started exchange, unless it was cancelled first, never from inside
 * httpc_start. On success resp is set and error NULL; on failure (DNS, connect, TLS
 * verification, timeout, malformed or oversized response) resp is NULL and error a short,
 * secret-free description. The exchange is freed after the callback returns. */
typedef void (*httpc_done_cb)(const struct httpc_response *resp, const char *error, void *arg);

struct httpc;

/* Starts the exchange on worker w, with snap's remaps and trust settings (snap gets a reference
 * for the exchange's life). Returns NULL, without calling cb, only if rq->url is not usable
 * (http1_parse_url) or a header is not sendable. */
struct httpc *httpc_start(struct worker *w, struct snapshot *snap, const struct httpc_request *rq,
                          httpc_done_cb cb, void *arg);

/* Abandons an exchange that has not called back yet; cb will not be called. */
void httpc_cancel(struct httpc *h);

#endif
