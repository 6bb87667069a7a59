/* api: the control API's HTTP side — listener, routing, authentication, limits and responses.
 * The resources live in api_boxes.c, api_templates.c and api_secrets.c; the JSON shapes in
 * api_json.c. */
#include "api.h"

#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include <netinet/in.h>

#include <event2/buffer.h>
#include <event2/event.h>
#include <event2/http.h>
#include <event2/keyvalq_struct.h>
#include <event2/util.h>

#include "control.h"
#include "log.h"
#include "policy.h"

/* Bodies between API_BODY_MAX and this are read and answered with a JSON 413; libevent 2.1
 * answers larger ones itself (an HTML 413) before any callback runs. */
#define API_BODY_HARD_MAX (4u * API_BODY_MAX)
#define API_TIMEOUT_S     60
#define API_MAX_SEGMENTS  8
#define API_DETAIL_MAX    8192

/* What a path names. */
enum api_resource {
    RES_NONE = 0,
    RES_HEALTHZ,
    RES_METRICS,
    RES_JWKS,
    RES_BOXES,
    RES_BOX,
    RES_BOX_STATUS,
    RES_BOX_START,
    RES_BOX_STOP,
    RES_EXECUTE, /* a box's dataplane: POST .../dataplane/{id}/execute */
    RES_TEMPLATES,
    RES_TEMPLATE,
    RES_SECRETS,
    RES_SECRET,
    RES_UNSUPPORTED, /* a hosted endpoint authproxy does not implement */
};

typedef void (*api_handler)(struct api_call *c);

/* ---- responses ----------------------------------------------------------------------------- */

/* evbuffer reference cleanup: responses may carry a proxy token; zero before freeing. */
static void api_zero_free(const void *data, size_t len, void *arg)
{
    (void)arg;
    secure_zero((void *)data, len);
    free((void *)data);
}

static void api_common_headers(struct evhttp_request *req)
{
    struct evkeyvalq *h = evhttp_request_get_output_headers(req);
    evhttp_add_header(h, "Cache-Control", "no-store");
    evhttp_add_header(h, "X-Content-Type-Options", "nosniff");
}

void api_reply(struct api_call *c, int code, json_t *doc)
{
    struct evbuffer *out = NULL;
    c->status = code;
    api_common_headers(c->req);
    if (doc != NULL) {
        char *text = json_dumps(doc, JSON_COMPACT);
        json_decref(doc);
        if (text == NULL)
            abort(); /* jansson fails here only on out-of-memory: util.h's policy */
        size_t len = strlen(text);
        out = evbuffer_new();
        if (out == NULL || evbuffer_add_reference(out, text, len, api_zero_free, NULL) != 0)
            abort();
        evbuffer_add(out, "\n", 1);
        evhttp_add_header(evhttp_request_get_output_headers(c->req), "Content-Type",
                          "application/json");
    }
    evhttp_send_reply(c->req, code, NULL, out);
    if (out != NULL)
        evbuffer_free(out);
}

void api_reply_error(struct api_call *c, int code, const char *fmt, ...)
{
    char msg[API_DETAIL_MAX]; /* details are short; a longer one is cut, never overrun */
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof(msg), fmt, ap);
    va_end(ap);
    api_reply(c, code, json_pack("{s:s}", "detail", msg));
}

void api_reply_errlist(struct api_call *c, int code, const struct errlist *errs)
{
    char *d = api_json_join(errs);
    api_reply(c, code, json_pack("{s:s}", "detail", d));
    free(d);
}

void api_reply_store(struct api_call *c, int rc, const char *what, const char *name)
{
    char q[80];
    policy_quote(name ? name : "", q, sizeof(q));
    switch (rc) {
    case STORE_NOT_FOUND:
        api_reply_error(c, 404, "%s %s not found", what, q);
        break;
    case STORE_EXISTS:
        api_reply_error(c, 409, "a %s named %s already exists", what, q);
        break;
    case STORE_CONFLICT:
        api_reply_error(c, 409, "%s %s was changed by another request meanwhile; retry", what, q);
        break;
    case STORE_INVALID:
        api_reply_error(c, 400, "%s %s: refused by the store (%s)", what, q, store_strerror(rc));
        break;
    default:
        log_error("api: %s %s: store error: %s", what, q, store_strerror(rc));
        api_reply_error(c, 500, "internal error: the state store failed (see the daemon log)");
        break;
    }
}

bool api_publish(struct api_call *c)
{
    if (control_publish(c->api->ctl) == 0)
        return true;
    log_error("api: %s: the change is stored but could not be published to the data plane",
              c->method);
    api_reply_error(c, 500,
                    "the change was stored but could not be applied to the data plane (see the "
                    "daemon log); the next successful change applies it");
    return false;
}

/* ---- routing ------------------------------------------------------------------------------- */

/* Splits the raw path into percent-decoded segments (seg[i] heap, caller frees). Returns the
 * count, or -1 when the path is not one we could serve (too deep, NUL or '/' encoded inside a
 * segment, undecodable). A trailing slash is ignored. */
static int api_split_path(const char *path, char **seg, int max)
{
    int n = 0;
    const char *p = path;
    if (p == NULL || *p != '/')
        return -1;
    while (*p == '/') {
        p++;
        size_t len = strcspn(p, "/");
        if (len == 0) {
            if (p[0] == '\0')
                break; /* trailing slash */
            goto fail; /* "//" */
        }
        if (n == max)
            goto fail;
        char *raw = xstrndup(p, len);
        size_t dlen = 0;
        char *dec = evhttp_uridecode(raw, 0, &dlen);
        free(raw);
        if (dec == NULL)
            goto fail;
        if (dlen != strlen(dec) || strchr(dec, '/') != NULL) {
            free(dec);
            goto fail;
        }
        seg[n++] = xstrdup(dec);
        free(dec);
        p += len;
    }
    return n;
fail:
    for (int i = 0; i < n; i++)
        free(seg[i]);
    return -1;
}

static bool seg_is(char **seg, int n, int i, const char *s)
{
    return i < n && strcmp(seg[i], s) == 0;
}

/* Maps segments (the optional "api" prefix already removed) to a resource and its path
 * parameter (*arg borrowed from seg). */
static enum api_resource api_resolve(char **seg, int n, const char **arg)
{
    *arg = NULL;
    if (n == 1 && seg_is(seg, n, 0, "healthz"))
        return RES_HEALTHZ;
    if (n == 1 && seg_is(seg, n, 0, "metrics"))
        return RES_METRICS;
    if (n == 2 && seg_is(seg, n, 0, ".well-known") && seg_is(seg, n, 1, "jwks.json"))
        return RES_JWKS;
    if (seg_is(seg, n, 0, "v2") && seg_is(seg, n, 1, "sandboxes")) {
        if (seg_is(seg, n, 2, "boxes")) {
            if (n == 3)
                return RES_BOXES;
            *arg = seg[3];
            if (n == 4)
                return RES_BOX;
            if (n == 5 && seg_is(seg, n, 4, "status"))
                return RES_BOX_STATUS;
            if (n == 5 && seg_is(seg, n, 4, "start"))
                return RES_BOX_START;
            if (n == 5 && seg_is(seg, n, 4, "stop"))
                return RES_BOX_STOP;
        } else if (seg_is(seg, n, 2, "dataplane") && n == 5 && seg_is(seg, n, 4, "execute")) {
            *arg = seg[3];
            return RES_EXECUTE;
        } else if (seg_is(seg, n, 2, "templates")) {
            if (n == 3)
                return RES_TEMPLATES;
            *arg = seg[3];
            if (n == 4)
                return RES_TEMPLATE;
        }
        *arg = NULL;
        return n >= 3 ? RES_UNSUPPORTED : RES_NONE;
    }
    if (seg_is(seg, n, 0, "v1") && seg_is(seg, n, 1, "workspaces") &&
        seg_is(seg, n, 2, "current") && seg_is(seg, n, 3, "secrets")) {
        if (n == 4)
            return RES_SECRETS;
        if (n == 5) {
            *arg = seg[4];
            return RES_SECRET;
        }
    }
    return RES_NONE;
}

/* The handler for a resource and method, or NULL (405); *allow gets the Allow header. */
static api_handler api_pick(enum api_resource r, enum evhttp_cmd_type m, const char **allow)
{
    switch (r) {
    case RES_BOXES:
        *allow = "GET, POST";
        return m == EVHTTP_REQ_GET    ? api_boxes_list
               : m == EVHTTP_REQ_POST ? api_boxes_create
                                      : NULL;
    case RES_BOX:
        *allow = "GET, PATCH, DELETE";
        return m == EVHTTP_REQ_GET      ? api_boxes_get
               : m == EVHTTP_REQ_PATCH  ? api_boxes_patch
               : m == EVHTTP_REQ_DELETE ? api_boxes_delete
                                        : NULL;
    case RES_BOX_STATUS:
        *allow = "GET";
        return m == EVHTTP_REQ_GET ? api_boxes_status : NULL;
    case RES_BOX_START:
        *allow = "POST";
        return m == EVHTTP_REQ_POST ? api_boxes_start : NULL;
    case RES_BOX_STOP:
        *allow = "POST";
        return m == EVHTTP_REQ_POST ? api_boxes_stop : NULL;
    case RES_EXECUTE:
        *allow = "POST";
        return m == EVHTTP_REQ_POST ? api_boxes_execute : NULL;
    case RES_TEMPLATES:
        *allow = "GET, POST";
        return m == EVHTTP_REQ_GET    ? api_templates_list
               : m == EVHTTP_REQ_POST ? api_templates_create
                                      : NULL;
    case RES_TEMPLATE:
        *allow = "GET, DELETE";
        return m == EVHTTP_REQ_GET      ? api_templates_get
               : m == EVHTTP_REQ_DELETE ? api_templates_delete
                                        : NULL;
    case RES_SECRETS:
        *allow = "GET, POST";
        return m == EVHTTP_REQ_GET    ? api_secrets_list
               : m == EVHTTP_REQ_POST ? api_secrets_bulk
                                      : NULL;
    case RES_SECRET:
        *allow = "GET, PUT, DELETE";
        return m == EVHTTP_REQ_GET      ? api_secrets_get
               : m == EVHTTP_REQ_PUT    ? api_secrets_put
               : m == EVHTTP_REQ_DELETE ? api_secrets_delete
                                        : NULL;
    default:
        *allow = "GET";
        return NULL;
    }
}

static const char *api_method_name(enum evhttp_cmd_type m)
{
    switch (m) {
    case EVHTTP_REQ_GET:
        return "GET";
    case EVHTTP_REQ_POST:
        return "POST";
    case EVHTTP_REQ_HEAD:
        return "HEAD";
    case EVHTTP_REQ_PUT:
        return "PUT";
    case EVHTTP_REQ_DELETE:
        return "DELETE";
    case EVHTTP_REQ_OPTIONS:
        return "OPTIONS";
    case EVHTTP_REQ_TRACE:
        return "TRACE";
    case EVHTTP_REQ_CONNECT:
        return "CONNECT";
    case EVHTTP_REQ_PATCH:
        return "PATCH";
    }
    return "?";
}

/* Reads and parses the request body into c->body (an object, or an array where array_ok).
 * Answers 413/400 itself and returns false on failure. The raw body is zeroed after parsing: it
 * may hold a secret value. */
static bool api_read_body(struct api_call *c, bool array_ok)
{
    struct evbuffer *in = evhttp_request_get_input_buffer(c->req);
    size_t len = evbuffer_get_length(in);
    struct errlist errs = {0};
    if (len > API_BODY_MAX) {
        api_reply_error(c, 413, "body: larger than %u bytes", API_BODY_MAX);
        return false;
    }
    char *data = (char *)evbuffer_pullup(in, -1);
    if (array_ok && len > 0) {
        /* The hosted secrets bulk form is a JSON array; parse leniently about the top type. */
        json_error_t jerr;
        c->body = json_loadb(data, len, JSON_REJECT_DUPLICATES, &jerr);
        if (c->body == NULL)
            errlist_add(&errs, "body: not valid JSON (line %d, column %d)", jerr.line, jerr.column);
        else if (!json_is_object(c->body) && !json_is_array(c->body))
            errlist_add(&errs, "body: expected a JSON array or object, found %s",
                        policy_json_kind(c->body));
    } else {
        c->body = api_json_parse_body(data, len, &errs);
    }
    if (data != NULL)
        secure_zero(data, len);
    evbuffer_drain(in, len);
    if (errs.n == 0)
        api_json_check_no_sealed(c->body, "body", &errs);
    if (errs.n > 0) {
        api_reply_errlist(c, 400, &errs);
        errlist_free(&errs);
        json_decref(c->body);
        c->body = NULL;
        return false;
    }
    return true;
}

/* Maps x-api-key to a workspace; answers 401/500 itself and returns NULL on failure. Caller
 * frees the id. */
static char *api_authenticate(struct api_call *c)
{
    const char *key = evhttp_find_header(evhttp_request_get_input_headers(c->req), "x-api-key");
    char *ws = NULL;
    if (key == NULL || key[0] == '\0') {
        evhttp_add_header(evhttp_request_get_output_headers(c->req), "WWW-Authenticate",
                          "ApiKey header=\"x-api-key\"");
        api_reply_error(c, 401, "missing x-api-key header");
        return NULL;
    }
    int rc = store_api_key_authenticate(c->api->st, key, &ws);
    if (rc == STORE_OK)
        return ws;
    if (rc == STORE_NOT_FOUND || rc == STORE_INVALID) {
        api_reply_error(c, 401, "invalid API key");
        return NULL;
    }
    api_reply_store(c, rc, "API key", "");
    return NULL;
}

/* Answers 200 with what render appends, as content type ctype. */
static void api_send_text(struct api_call *c, void (*render)(void *ctx, struct evbuffer *out),
                          const char *ctype)
{
    struct evbuffer *out = evbuffer_new();
    if (out == NULL)
        abort();
    c->status = 200;
    render(c->api->hooks.ctx, out);
    api_common_headers(c->req);
    evhttp_add_header(evhttp_request_get_output_headers(c->req), "Content-Type", ctype);
    evhttp_send_reply(c->req, 200, NULL, out);
    evbuffer_free(out);
}

/* True for a Host header value that can go into a URL as it is: a name or an IPv4/[IPv6]
 * literal, with an optional port. */
static bool api_host_ok(const char *h)
{
    size_t n = h != NULL ? strlen(h) : 0;
    if (n == 0 || n > 300)
        return false;
    for (size_t i = 0; i < n; i++) {
        char ch = h[i];
        if (!((ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') || (ch >= '0' && ch <= '9') ||
              ch == '.' || ch == '-' || ch == ':' || ch == '[' || ch == ']'))
            return false;
    }
    return true;
}

char *api_dataplane_base(const struct api_call *c)
{
    if (c->api->hooks.dataplane_base != NULL)
        return xstrdup(c->api->hooks.dataplane_base);
    const char *host = evhttp_find_header(evhttp_request_get_input_headers(c->req), "Host");
    if (!api_host_ok(host))
        host = c->api->listen;
    return xasprintf("http://%s/v2/sandboxes/dataplane", host);
}

/* Copies path for log lines and messages: printable ASCII only (anything else becomes '?'),
 * truncated with "..." to fit size. */
static void api_safe_path(const char *path, char *out, size_t size)
{
    size_t o = 0;
    for (const unsigned char *p = (const unsigned char *)path; *p; p++) {
        if (o + 4 >= size) {
            memcpy(out + o, "...", 3);
            o += 3;
            break;
        }
        out[o++] = (*p > 0x20 && *p < 0x7f) ? (char)*p : '?';
    }
    out[o] = '\0';
}

/* The one evhttp callback: route, authenticate, read the body, dispatch, log. */
static void api_handle(struct evhttp_request *req, void *arg)
{
    struct api *api = arg;
    struct api_call c = {.api = api, .req = req};
    char *seg[API_MAX_SEGMENTS];
    char *ws = NULL;
    char qpath[160];
    const char *allow = NULL;
    enum evhttp_cmd_type m = evhttp_request_get_command(req);
    const struct evhttp_uri *uri = evhttp_request_get_evhttp_uri(req);
    const char *path = uri ? evhttp_uri_get_path(uri) : NULL;
    int n = api_split_path(path, seg, API_MAX_SEGMENTS);
    int first = (n > 0 && strcmp(seg[0], "api") == 0) ? 1 : 0; /* "/api" prefix (SPEC §6) */
    enum api_resource res = n >= 0 ? api_resolve(seg + first, n - first, &c.arg) : RES_NONE;

    c.method = api_method_name(m);
    api_safe_path(path ? path : "", qpath, sizeof(qpath));

    if (res == RES_JWKS && api->hooks.render_jwks == NULL)
        res = RES_NONE;
    if (res == RES_NONE) {
        api_reply_error(&c, 404, "Not Found");
        goto out;
    }
    if (res == RES_JWKS) {
        if (m == EVHTTP_REQ_GET) {
            api_send_text(&c, api->hooks.render_jwks, "application/json");
        } else {
            evhttp_add_header(evhttp_request_get_output_headers(req), "Allow", "GET");
            api_reply_error(&c, 405, "Method Not Allowed");
        }
        goto out;
    }
    if (res == RES_HEALTHZ) {
        if (m == EVHTTP_REQ_GET)
            api_reply(&c, 200, json_pack("{s:s}", "status", "ok"));
        else {
            evhttp_add_header(evhttp_request_get_output_headers(req), "Allow", "GET");
            api_reply_error(&c, 405, "Method Not Allowed");
        }
        goto out;
    }
    if ((ws = api_authenticate(&c)) == NULL)
        goto out;
    c.ws_id = ws;
    if (res == RES_METRICS) {
        if (m == EVHTTP_REQ_GET)
            api_send_text(&c, api->hooks.render_metrics,
                          "text/plain; version=0.0.4; charset=utf-8");
        else {
            evhttp_add_header(evhttp_request_get_output_headers(req), "Allow", "GET");
            api_reply_error(&c, 405, "Method Not Allowed");
        }
        goto out;
    }
    if (res == RES_UNSUPPORTED) {
        api_reply_error(&c, 501, "%s %s is not implemented by authproxy", c.method, qpath);
        goto out;
    }
    api_handler h = api_pick(res, m, &allow);
    if (h == NULL) {
        evhttp_add_header(evhttp_request_get_output_headers(req), "Allow", allow);
        api_reply_error(&c, 405, "Method Not Allowed");
        goto out;
    }
    /* start/stop take no body (the SDKs send {}; curl users often nothing at all). */
    if ((m == EVHTTP_REQ_POST || m == EVHTTP_REQ_PUT || m == EVHTTP_REQ_PATCH) &&
        res != RES_BOX_START && res != RES_BOX_STOP) {
        if (!api_read_body(&c, res == RES_SECRETS))
            goto out;
    }
    if (m != EVHTTP_REQ_GET) {
        /* Another process may have rotated the master key and re-sealed the store: catch up
         * (control_sync reloads the keyring when the store moved) before this write unseals
         * stored values or seals new ones. */
        (void)control_sync(api->ctl);
    }
    h(&c);
    if (c.status == 0 && !c.deferred) { /* a handler that forgot to answer is a bug */
        log_error("api: %s %s: handler sent no response", c.method, qpath);
        api_reply_error(&c, 500, "internal error");
    }
out:
    if (c.deferred && c.status == 0)
        log_info("api: %s %s -> running", c.method, qpath);
    else if (c.status >= 500)
        log_warn("api: %s %s -> %d", c.method, qpath, c.status);
    else
        log_info("api: %s %s -> %d", c.method, qpath, c.status);
    json_decref(c.body);
    free(ws);
    for (int i = 0; i < n; i++)
        free(seg[i]);
}

/* ---- lifecycle ----------------------------------------------------------------------------- */

/* Opens a non-blocking listening socket on spec. -1 with err filled on failure. */
static int api_listen(const char *spec, char *err, size_t err_len)
{
    struct sockaddr_storage ss;
    int sslen = sizeof(ss);
    int fd = -1, one = 1;
    memset(&ss, 0, sizeof(ss));
    if (spec == NULL || parse_listen_address(spec, (struct sockaddr *)&ss, &sslen) != 0) {
        snprintf(err, err_len, "invalid listen address '%s' (expected ADDR:PORT)",
                 spec ? spec : "");
        return -1;
    }
    fd = socket(ss.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd == -1)
        goto fail;
    if (setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one)) == -1)
        goto fail;
    if (bind(fd, (struct sockaddr *)&ss, (socklen_t)sslen) == -1 || listen(fd, 128) == -1)
        goto fail;
    return fd;
fail:
    snprintf(err, err_len, "cannot listen on %s: %s", spec, strerror(errno));
    if (fd != -1)
        close(fd);
    return -1;
}

/* Formats the bound address of fd into out ("127.0.0.1:8081", "[::1]:8081"). */
static void api_format_address(int fd, char *out, size_t size)
{
    struct sockaddr_storage ss;
    socklen_t len = sizeof(ss);
    char host[INET6_ADDRSTRLEN] = "?";
    unsigned port = 0;
    if (getsockname(fd, (struct sockaddr *)&ss, &len) == 0) {
        if (ss.ss_family == AF_INET6) {
            struct sockaddr_in6 *a = (struct sockaddr_in6 *)&ss;
            evutil_inet_ntop(AF_INET6, &a->sin6_addr, host, sizeof(host));
            port = ntohs(a->sin6_port);
            snprintf(out, size, "[%s]:%u", host, port);
            return;
        }
        struct sockaddr_in *a = (struct sockaddr_in *)&ss;
        evutil_inet_ntop(AF_INET, &a->sin_addr, host, sizeof(host));
        port = ntohs(a->sin_port);
    }
    snprintf(out, size, "%s:%u", host, port);
}

struct api *api_new(struct event_base *base, struct control *ctl, const char *listen_addr_port,
                    const struct api_hooks *hooks, char *err, size_t err_len)
{
    struct api *api = NULL;
    int fd = -1;
    if (hooks == NULL || hooks->render_metrics == NULL) {
        snprintf(err, err_len, "control API: no metrics renderer given");
        return NULL;
    }
    fd = api_listen(listen_addr_port, err, err_len);
    if (fd == -1)
        return NULL;
    api = xcalloc(1, sizeof(*api));
    api->base = base;
    api->ctl = ctl;
    api->st = control_store(ctl);
    api->hooks = *hooks;
    api->hooks.proxy_address = hooks->proxy_address ? xstrdup(hooks->proxy_address) : NULL;
    api->hooks.dataplane_base = hooks->dataplane_base ? xstrdup(hooks->dataplane_base) : NULL;
    api_format_address(fd, api->listen, sizeof(api->listen));
    api->http = evhttp_new(base);
    if (api->http == NULL) {
        snprintf(err, err_len, "cannot create the HTTP server");
        goto fail;
    }
    /* Every method reaches api_handle, which answers 405 in JSON (evhttp would send HTML 501). */
    evhttp_set_allowed_methods(api->http, EVHTTP_REQ_GET | EVHTTP_REQ_POST | EVHTTP_REQ_HEAD |
                                              EVHTTP_REQ_PUT | EVHTTP_REQ_DELETE |
                                              EVHTTP_REQ_OPTIONS | EVHTTP_REQ_TRACE |
                                              EVHTTP_REQ_CONNECT | EVHTTP_REQ_PATCH);
    evhttp_set_max_headers_size(api->http, API_HEADERS_MAX);
    evhttp_set_max_body_size(api->http, API_BODY_HARD_MAX);
    evhttp_set_timeout(api->http, API_TIMEOUT_S);
    evhttp_set_gencb(api->http, api_handle, api);
    api->sock = evhttp_accept_socket_with_handle(api->http, fd);
    if (api->sock == NULL) {
        snprintf(err, err_len, "cannot serve on %s", api->listen);
        goto fail;
    }
    return api;
fail:
    if (api->sock == NULL && fd != -1)
        close(fd);
    api_free(api);
    return NULL;
}

void api_free(struct api *api)
{
    if (api == NULL)
        return;
    if (api->http != NULL)
        evhttp_free(api->http);
    free((char *)api->hooks.proxy_address);
    free((char *)api->hooks.dataplane_base);
    free(api);
}

const char *api_listen_address(const struct api *api)
{
    return api->listen;
}
