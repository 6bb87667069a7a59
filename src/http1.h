/* http1: strict HTTP/1.1 message parsing (RFC 9112) and serialisation for the proxy.
 *
 * Everything here is a pure function of its input bytes: no I/O, no allocation in the parsers,
 * so it is unit-tested and fuzzed in isolation. The data path (conn.c) pulls the bytes of a
 * message head into one contiguous buffer, calls a parser, builds the head it forwards with a
 * serialiser, then drains the head from its input.
 *
 * Strictness is the point: a proxy that is more lenient than the origin behind it can be
 * used for request smuggling. Everything RFC 9112 lets a recipient reject is rejected:
 * CR or LF outside a CRLF line ending, obs-fold, whitespace before the colon, control
 * characters in names and values, both Content-Length and Transfer-Encoding, differing
 * Content-Length values, any transfer coding other than a single "chunked", malformed chunk
 * sizes or sizes that overflow, a missing or repeated Host in HTTP/1.1.
 *
 * Why hand-written: the maintained C parser (llhttp) is not packaged by Debian 12, and the old
 * nodejs http-parser is archived; we also need exact control over which inputs are refused. */
#ifndef AUTHPROXY_HTTP1_H
#define AUTHPROXY_HTTP1_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

struct evbuffer;

#define HTTP1_MAX_HEADERS 100

/* Parser results. Negative values are errors whose absolute value is the HTTP status the
 * proxy answers with before closing the connection. */
enum http1_result {
    HTTP1_INCOMPLETE = 0,       /* need more bytes; nothing consumed */
    HTTP1_OK = 1,               /* a complete head was parsed */
    HTTP1_ERR_BAD = -400,       /* malformed or ambiguous: 400 and close */
    HTTP1_ERR_TOO_LARGE = -431, /* head larger than the limit, or too many fields: 431 */
    HTTP1_ERR_URI_TOO_LONG = -414,
    HTTP1_ERR_NOT_IMPLEMENTED = -501, /* a transfer coding other than chunked */
    HTTP1_ERR_VERSION = -505,         /* not HTTP/1.0 or HTTP/1.1 */
};

/* A field as it appeared on the wire; the pointers point into the caller's buffer. The value
 * has leading and trailing whitespace removed. */
struct http1_header {
    const char *name;
    size_t name_len;
    const char *value;
    size_t value_len;
};

/* How the body that follows a head is delimited (RFC 9112 §6.3). */
enum http1_body_kind {
    HTTP1_BODY_NONE = 0,    /* no body */
    HTTP1_BODY_LENGTH,      /* exactly content_length bytes */
    HTTP1_BODY_CHUNKED,     /* chunked transfer coding; see http1_chunked_* */
    HTTP1_BODY_UNTIL_CLOSE, /* responses only: everything until the server closes */
};

struct http1_request {
    const char *method;
    size_t method_len;
    const char *target; /* request-target exactly as sent (origin-, absolute- or authority-form) */
    size_t target_len;
    int version_minor; /* 0 or 1 (HTTP/1.x) */
    size_t n_headers;
    struct http1_header headers[HTTP1_MAX_HEADERS];

    /* Derived from the fields above by the parser. */
    enum http1_body_kind body_kind;  /* NONE, LENGTH or CHUNKED for requests */
    uint64_t content_length;         /* valid when body_kind == HTTP1_BODY_LENGTH */
    const struct http1_header *host; /* the single Host field, or NULL (allowed in HTTP/1.0) */
    bool keep_alive;                 /* from version and the Connection field */
    bool expect_continue;            /* Expect: 100-continue */
    bool upgrade_websocket;          /* Connection: upgrade and Upgrade: websocket */
    bool is_connect;                 /* method CONNECT (target is authority-form) */
};

struct http1_response {
    int version_minor;
    int status; /* 100..999 */
    const char *reason;
    size_t reason_len;
    size_t n_headers;
    struct http1_header headers[HTTP1_MAX_HEADERS];

    enum http1_body_kind body_kind; /* depends on the request method and the status */
    uint64_t content_length;
    bool keep_alive; /* the server lets the connection be reused after this response */
    /* Added: a (valid) Content-Length field was present. Then content_length holds its value even
     * when body_kind is NONE (a response to HEAD, a 304), so the serialiser can relay it. */
    bool has_content_length;
};

/* Parses a request head at the start of buf[0..len). Leading empty lines (CRLF) are skipped
 * as RFC 9112 §2.2 allows. On HTTP1_OK, *head_len is the number of bytes the head occupies
 * (including the skipped empty lines and the final CRLF CRLF) and req's pointers point into buf.
 * max_head bounds the head size: more than max_head bytes without a complete head gives
 * HTTP1_ERR_TOO_LARGE, so callers can call this on every read with whatever they have. */
int http1_parse_request(const char *buf, size_t len, size_t max_head, struct http1_request *req,
                        size_t *head_len);

/* Parses a response head. request_method decides the body framing (HEAD and a 2xx to CONNECT
 * have no body); 1xx, 204 and 304 never have one. Same contract as http1_parse_request
 * otherwise. A response with both Content-Length and Transfer-Encoding is refused (HTTP1_ERR_BAD):
 * the proxy answers 502 rather than relay an ambiguous message. */
int http1_parse_response(const char *buf, size_t len, size_t max_head, const char *request_method,
                         size_t request_method_len, struct http1_response *resp, size_t *head_len);

/* Finds the first field named name (case-insensitive); NULL if absent. */
const struct http1_header *http1_find_header(const struct http1_header *headers, size_t n,
                                             const char *name);

/* True if a comma-separated field value contains token (case-insensitive), e.g. "close" in
 * "keep-alive, Close". */
bool http1_list_has_token(const char *value, size_t value_len, const char *token);

/* A header the proxy sets on the forwarded request. It replaces every field of the same name
 * (case-insensitive, and '_' taken as '-', as CGI/WSGI origins read names) that the client
 * sent, so a sandbox can neither override nor duplicate it.
 * For http1_write_request_head, a NULL value removes the client's fields of that name and adds
 * nothing (e.g. a signature field the proxy's own signing does not use). */
struct http1_header_override {
    const char *name;
    const char *value;
};

/* Appends to out the request head forwarded upstream: "METHOD origin_target HTTP/1.1", then
 * the client's fields minus hop-by-hop fields (Connection and the fields it names, Keep-Alive,
 * Proxy-Connection, Proxy-Authorization, Proxy-Authenticate, TE, Trailer, Transfer-Encoding,
 * Upgrade) and minus every field named by an override, then the overrides, then
 * "Transfer-Encoding: chunked" if the body is chunked, and "Connection: Upgrade" plus
 * "Upgrade: websocket" for a WebSocket upgrade, then CRLF. Returns 0, or -1 if an override
 * name or value contains bytes not allowed in a field (nothing is appended in that case). */
int http1_write_request_head(struct evbuffer *out, const struct http1_request *req,
                             const char *origin_target, size_t origin_target_len,
                             const struct http1_header_override *overrides, size_t n_overrides);

/* Appends to out the response head relayed to the client: status line as HTTP/1.1, the
 * upstream's fields minus hop-by-hop ones (as above), "Transfer-Encoding: chunked" when the body
 * is chunked, "Connection: close" when client_keep_alive is false, and for a 101 response the
 * upstream's Connection/Upgrade fields unchanged. */
void http1_write_response_head(struct evbuffer *out, const struct http1_response *resp,
                               bool client_keep_alive);

/* Incremental validator for a chunked body (RFC 9112 §7.1), including chunk extensions and
 * trailer fields. It does not decode: the proxy forwards the chunked bytes verbatim once they
 * are validated, which keeps streaming (SSE) chunk-by-chunk and avoids copies. */
struct http1_chunked {
    int state;              /* private */
    uint64_t remaining;     /* private: data bytes left in the current chunk */
    uint32_t line_len;      /* private: length of the current size/trailer line */
    uint32_t digits;        /* private */
    uint32_t trailer_bytes; /* private */
};

void http1_chunked_init(struct http1_chunked *c);

/* Feeds len bytes. Sets *consumed to how many bytes belong to the body (all of them, unless the
 * body ended inside buf). Returns HTTP1_INCOMPLETE (the body continues), HTTP1_OK (the body,
 * including the last chunk and trailers, ended after *consumed bytes) or HTTP1_ERR_BAD (invalid
 * framing: chunk size not hex, more than 16 hex digits or over 2^63, missing CRLF after data,
 * bad extension or trailer bytes, trailers over 8 KiB). Bytes after an error must not be
 * forwarded. */
int http1_chunked_feed(struct http1_chunked *c, const char *buf, size_t len, size_t *consumed);

/* The reason phrase for a status code the proxy itself generates ("Forbidden", ...). */
const char *http1_reason_phrase(int status);

/* ---- Added helpers (not part of the original interface; nothing above depends on them) ---- */

/* An authority (uri-host [":" port]) as accepted by this module. Deliberately narrower than
 * RFC 3986: a reg-name is letters, digits, '-', '_' and '.', without empty labels (one trailing
 * dot allowed); no percent-encoding, no sub-delims, no userinfo. An all-numeric or hex-looking
 * last label must be a canonical dotted-quad IPv4 address (so "2130706433" or "0x7f.1" cannot
 * reach an inet_aton-style resolver behind a policy that was written for names). IPv6 literals
 * must be valid per inet_pton, without zone identifiers. */
struct http1_authority {
    const char *host; /* points into the input; brackets of an IPv6 literal excluded */
    size_t host_len;
    int port;   /* 1..65535, or -1 when absent */
    bool is_ip; /* IPv4 dotted quad or IPv6 literal */
};

/* Parses s[0..len) as an authority. require_port: the ":port" part must be present (CONNECT).
 * Returns 0, or -1 if the text is not an acceptable authority. */
int http1_parse_authority(const char *s, size_t len, bool require_port,
                          struct http1_authority *out);

enum http1_target_form {
    HTTP1_TARGET_ORIGIN = 1, /* "/path?query" */
    HTTP1_TARGET_ABSOLUTE,   /* "http://host[:port]/path?query" (http or https only) */
    HTTP1_TARGET_AUTHORITY,  /* "host:port", CONNECT only */
    HTTP1_TARGET_ASTERISK,   /* "*", OPTIONS only */
};

/* The request-target split into its parts; pointers point into the request's buffer. */
struct http1_target {
    enum http1_target_form form;
    bool https;                       /* absolute-form with scheme https */
    struct http1_authority authority; /* absolute- and authority-form; zeroed otherwise */
    const char *path;                 /* origin- and absolute-form: path and query, as sent; */
    size_t path_len;                  /* may be empty in absolute-form (means "/"), else NULL/0 */
};

/* Splits the target of a request that http1_parse_request accepted (which already validated it
 * the same way). Returns 0, or -1 if the target is not acceptable for the method. */
int http1_parse_target(const char *method, size_t method_len, const char *target, size_t target_len,
                       struct http1_target *out);

/* True if the override can be sent: its name is a token, its value has no control characters
 * other than HTAB (so no CR, LF or NUL), and its name is not a framing or connection-management
 * field (Content-Length, Transfer-Encoding, Connection, Keep-Alive, Proxy-Connection, TE, Trailer,
 * Upgrade), which the serialiser owns. Config validation can call this to refuse such a rule
 * early; http1_write_request_head refuses (-1) when any override fails it. */
bool http1_override_valid(const struct http1_header_override *o);

/* Splits an absolute http(s) URL, as used for callback and token endpoints: *tls, the host
 * (normalised by host_normalize: lower-case, brackets of an IPv6 literal removed) into
 * host[0..host_size), *port (default 80/443), *target the origin-form path and query ("/" when
 * empty; points into url). Returns 0, or -1 if url is not one the proxy can call (other schemes,
 * userinfo, a fragment, bytes outside printable ASCII, a bad authority, a query without a
 * path). */
int http1_parse_url(const char *url, bool *tls, char *host, size_t host_size, uint16_t *port,
                    const char **target);

#endif
