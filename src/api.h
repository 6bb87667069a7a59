/* api: the control API — HTTP+JSON on libevent's evhttp, path- and JSON-compatible with the
 * hosted product's /v2/sandboxes API (SPEC §6), so its SDKs and curl examples work against
 * authproxy with only the endpoint changed.
 *
 * Endpoints (each also served under the prefix /api, e.g. /api/v2/sandboxes/boxes):
 *   GET    /healthz                                   200 {"status": "ok"}, no key needed
 *   GET    /metrics                                   Prometheus text; needs any workspace key
 *   GET    /.well-known/jwks.json                     callback-signing keys (api_hooks), no key
 *   POST   /v2/sandboxes/boxes                        create a box             201
 *   GET    /v2/sandboxes/boxes                        {"sandboxes": [...]}
 *   GET    /v2/sandboxes/boxes/{name}                 one box
 *   GET    /v2/sandboxes/boxes/{name}/status          {"status", "status_message"}
 *   PATCH  /v2/sandboxes/boxes/{name}                 name, idle_ttl_seconds, ttl_seconds,
 *                                                     env_vars, proxy_config
 *   DELETE /v2/sandboxes/boxes/{name}                 204 (its runtime stopped, files deleted)
 *   POST   /v2/sandboxes/boxes/{name}/start           start its runtime: 200 with the box
 *   POST   /v2/sandboxes/boxes/{name}/stop            stop its runtime: 200 with the box
 *   POST   /v2/sandboxes/dataplane/{id}/execute       run a command in the box (its
 *                                                     dataplane_url + "/execute", SPEC §6)
 *   POST   /v2/sandboxes/templates                    create a template        201
 *   GET    /v2/sandboxes/templates[/{name}]           {"templates": [...]} / one template
 *   DELETE /v2/sandboxes/templates/{name}             204
 *   GET    /v1/workspaces/current/secrets             [{"key", "configs", "hosts", times}]
 *   POST   /v1/workspaces/current/secrets             hosted bulk form [{"key", "value"}],
 *                                                     "value": null deletes
 *   GET    /v1/workspaces/current/secrets/{key}       one secret's metadata (never the value)
 *   PUT    /v1/workspaces/current/secrets/{key}       {"value", "configs"}: 201 new, 200 updated
 *   DELETE /v1/workspaces/current/secrets/{key}       204
 * Other paths under /v2/sandboxes/ that the hosted API has (snapshots, service URLs, the
 * dataplane's files and WebSocket execute) answer 501 with a detail; anything else 404.
 *
 * Authentication: every call but /healthz carries `x-api-key`; the key names the workspace and
 * every store call is scoped to it, so another workspace's objects are 404 by construction.
 * Errors are {"detail": "..."}: 400 (bad input, the detail names the JSON path), 401, 404, 405,
 * 409 (name taken; a secret change that would break a box), 413 (body over 1 MiB), 500, 501.
 *
 * Secrets and opaque values never appear in a response, a log line or an error message: opaque
 * values are sealed before they are stored and masked on every read as
 * {"name", "type": "opaque", "is_set": true}. The one credential ever returned is a box's proxy
 * token, once, in the create response.
 *
 * Every write that changes what the data plane does calls control_publish before the response
 * is sent, so a 2xx means the change applies to every request that starts afterwards.
 *
 * Documented choices (where the hosted API or SPEC leave room):
 *  - Boxes and runtimes. On a daemon that runs sandboxes (control_runtime), a create starts the
 *    box's runtime (box_runtime.h: network namespace, cgroup, disk) before answering: status
 *    "ready", the value the hosted SDKs wait for; a runtime that cannot start fails the create
 *    with 503 and nothing is created. A box idle for idle_ttl_seconds (or POST .../stop) is
 *    "stopped": processes gone, files kept; the next execute (or POST .../start) starts it again
 *    transparently, as the hosted SDK documents ("a stopped sandbox is resumed ... when the
 *    dataplane request arrives"). DELETE stops the runtime and deletes its files. A daemon
 *    without sandboxes (not root, --no-sandboxes, ...) keeps boxes proxy-only: status "ready",
 *    start/stop and execute answer 501 with the reason. A create without
 *    "name" gets "box-<8 hex>" (the SDKs leave naming to the server). idle_ttl_seconds defaults
 *    to 600 as in the hosted API; TTLs are multiples of 60, 0 disables. dataplane_url is
 *    http://<the Host the request came to>/v2/sandboxes/dataplane/<box id> (by id, so a rename
 *    keeps it; api_hooks.dataplane_base overrides the prefix, e.g. behind a reverse proxy): the
 *    control listener serves it with the same x-api-key. Unknown top-level fields are ignored
 *    (the SDKs send wait_for_ready, timeout, labels...), except mount_config, which is refused
 *    rather than silently dropped. A box made from a template copies the template's
 *    proxy_config, image and resources; the request's own fields override them.
 *  - Proxy credential. The create response alone carries "proxy_token" and "proxy_url"
 *    (http://<name>:<token>@<proxy>); the explicit proxy identifies the box by
 *    Proxy-Authorization: Basic base64(name:token). After a rename the same token goes with
 *    the new name.
 *  - PATCH keeps stored opaque values: an opaque entry sent without "value" (or with null, or
 *    with the read-back "is_set") keeps the stored one — a rule's header matched by rule name +
 *    header name, a provider credential by rule name + type + key, a callback's request header
 *    by callback index + header name. Without a stored counterpart it is a 400 naming the path.
 *    proxy_config is replaced whole; "proxy_config": null resets it to {}.
 *  - Secrets. A PUT without "configs" keeps the stored binding (a value rotation never widens
 *    it); "configs": null resets it to the default. A PUT without "value" may only narrow the
 *    binding: moving a stored secret to other hosts needs its value (400 otherwise), so a
 *    stolen API key cannot redirect a secret it cannot read. A change (PUT, DELETE, bulk) that
 *    would leave a box of the workspace no longer valid — it uses a deleted secret, or its rule
 *    hosts fall outside a new binding — is refused with 409 naming the box and the reason;
 *    boxes that were already invalid before do not block unrelated changes.
 *  - Limits. Bodies over 1 MiB get a JSON 413 up to 4 MiB; beyond that libevent 2.1 answers
 *    413 itself (HTML body) before the API sees the request. Headers are capped at 64 KiB.
 *  - Execute. POST {dataplane_url}/execute {"command", "timeout", "shell", "env", "cwd"} (the
 *    hosted SDKs' HTTP fallback; "run_config": {"env_vars", "work_dir"} is the newer spelling of
 *    env and cwd, not to be combined with them) -> 200 {"stdout", "stderr", "exit_code",
 *    "timed_out", "stdout_truncated", "stderr_truncated", "duration_ms"}. The command runs as
 *    `<shell> -c <command>` (shell default /bin/bash, an absolute path), cwd default /workspace
 *    (absolute paths only), timeout in seconds (default 60, at most API_EXEC_TIMEOUT_MAX). Its
 *    environment: PATH, HOME, the CA trust variables, the enabled rules' env_vars
 *    placeholders, the box's env_vars, then the request's env, later ones winning. exit_code
 *    is what a shell reports: the status, 128 + signal, 124 when the timeout killed it
 *    (timed_out true; stdout/stderr hold what came before). Output: each stream capped at
 *    BOX_RUNTIME_OUTPUT_MAX (1 MiB), *_truncated says when more was discarded; bytes that are
 *    not UTF-8 become U+FFFD. A stopped box is started first. The request is answered when the
 *    command ends; the event loop is never blocked meanwhile (box_runtime_exec). Errors: 400
 *    (bad field; a shell or cwd that cannot be used), 404 (no such box in this workspace, or it
 *    was deleted while the command ran), 409 (stopped while it ran), 429 (too many commands in
 *    the box), 501 (no sandboxes on this daemon), 503 (the sandbox cannot start, or the daemon
 *    is stopping).
 *  - /metrics takes any workspace's key (Prometheus: scrape with an x-api-key header, e.g.
 *    http_headers in the scrape config); /healthz takes none.
 *
 * Threads: runs on the event base it is given (the daemon's main thread) and calls the store
 * and control synchronously from there. */
#ifndef AUTHPROXY_API_H
#define AUTHPROXY_API_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <jansson.h>

#include "store.h"
#include "util.h"

struct control;
struct event_base;
struct evbuffer;

#define API_BODY_MAX             (1u << 20) /* request bodies above this get a JSON 413 */
#define API_HEADERS_MAX          (64u << 10)
#define API_BOX_NAME_MAX         63    /* box and template names: [A-Za-z0-9][A-Za-z0-9._-]{0,62} */
#define API_EXEC_TIMEOUT_DEFAULT 60    /* seconds, as the hosted SDKs send */
#define API_EXEC_TIMEOUT_MAX     86400 /* seconds */
#define API_EXEC_SHELL_DEFAULT   "/bin/bash"

/* What the daemon supplies. Copied by api_new (strings are duplicated). */
struct api_hooks {
    /* Appends the Prometheus exposition for GET /metrics. Required. */
    void (*render_metrics)(void *ctx, struct evbuffer *out);
    void *ctx;
    /* The explicit proxy's "host:port" as sandboxes reach it, for the "proxy_url" of a create
     * response (http://<box name>:<token>@<proxy_address>). NULL: no proxy_url. */
    const char *proxy_address;
    /* Appends the JWKS document ({"keys": [...]}) of the callback-signing keys for
     * GET /.well-known/jwks.json (SPEC §4; public, no key needed). NULL: that path is a 404. */
    void (*render_jwks)(void *ctx, struct evbuffer *out);
    /* Base URL of the boxes' data plane ("<base>/<box id>", SDK field dataplane_url), for a
     * control API reached through a reverse proxy. NULL: http://<request Host>/v2/sandboxes/
     * dataplane, served by this API. */
    const char *dataplane_base;
};

struct api;

/* Listens on listen_addr_port ("127.0.0.1:8081", "[::1]:8081"; port 0 picks a free one) and
 * serves the control API on base. ctl is borrowed and must outlive the api. NULL with a message
 * in err (naming the address and the system error) on failure. */
struct api *api_new(struct event_base *base, struct control *ctl, const char *listen_addr_port,
                    const struct api_hooks *hooks, char *err, size_t err_len);
/* Stops listening and frees the api; requests in flight are dropped. NULL is allowed. */
void api_free(struct api *api);
/* The address actually bound, "127.0.0.1:8081" (with the real port when 0 was asked for). */
const char *api_listen_address(const struct api *api);

/* ---- the pure JSON parts (api_json.c), shared by the handlers and unit-tested ------------- */

/* Parses a request body that must be one JSON object. NULL with an error in errs otherwise; the
 * message gives line and column only, never a piece of the input (which may be a secret). */
json_t *api_json_parse_body(const char *data, size_t len, struct errlist *errs);

/* Joins errs into one detail ("a; b; c"), capped at a few KiB. Caller frees. */
char *api_json_join(const struct errlist *errs);

/* Reports (as "<path>: ...") every string in doc that starts with SEAL_TEXT_PREFIX: the store
 * treats such strings as sealed values, so user input must never contain one. path names doc
 * (e.g. "body"). True when there is none. */
bool api_json_check_no_sealed(const json_t *doc, const char *path, struct errlist *errs);

/* Box/template names: 1..API_BOX_NAME_MAX of [A-Za-z0-9._-], starting with a letter or digit
 * (safe in URL paths and in the user part of a proxy URL). NULL if valid, else why not. */
const char *api_json_name_problem(const char *name);

/* A deep copy of a stored proxy_config for output: every object with "type": "opaque" loses its
 * "value" and gets "is_set": true; any other sealed string becomes null (defence in depth).
 * NULL doc gives an empty object. New reference. */
json_t *api_json_mask(const json_t *doc);

/* Prepares a PATCH's proxy_config (already upgraded to the current format) against the stored
 * one (sealed): removes the read-back marker "is_set" from opaque objects, and gives every opaque
 * entry that has no "value" the stored entry's sealed value. Matching: a rule's header by rule
 * name + header name (case-insensitive); a rule's aws/gcp credential by rule name + rule type +
 * credential key; a callback's request header by callback index + header name. An opaque entry
 * without value and without a stored counterpart is an error naming its path. old may be NULL
 * (create). Returns true when every entry without value was filled. */
bool api_json_opaque_keep(json_t *cfg, const json_t *old, struct errlist *errs);

/* Calls seal(ctx, plaintext, &sealed) for the "value" of every "type": "opaque" object whose
 * value is a string not yet sealed, and replaces it with *sealed (heap, freed here). Stops at
 * the first non-zero return and returns it (doc is then partly sealed: discard it). */
typedef int (*api_seal_fn)(void *ctx, const char *plaintext, char **sealed);
int api_json_seal_opaque(json_t *doc, api_seal_fn seal, void *ctx);

/* Kubernetes-style quantities of the hosted template format: cpu "500m", "1", "0.5" ->
 * millicores; memory/storage "512Mi", "2Gi", "1G", "1048576" -> bytes. 0 on success, -1 if
 * malformed, negative or out of range. */
int api_json_parse_cpu(const char *s, int64_t *millicores);
int api_json_parse_bytes(const char *s, int64_t *bytes);

/* UTC ISO 8601 with a Z suffix, "2026-05-13T10:00:00Z". */
void api_json_time(int64_t t, char out[32]);

/* A box create or PATCH request, validated field by field (fields absent: has_* false). */
struct api_box_req {
    const char *name; /* borrowed from the request body */
    const char *template_name;
    const char *template_id;
    const char *image;
    const json_t *proxy_config; /* NULL: absent; JSON null on PATCH: reset to {} */
    const json_t *env_vars;
    bool has_cpu, has_mem, has_fs, has_idle_ttl, has_ttl;
    int64_t cpu_millicores, mem_bytes, fs_capacity_bytes, idle_ttl_seconds, ttl_seconds;
};
/* Validates body for create (create = true) or PATCH; every problem goes to errs as
 * "<field>: ...". Unknown fields are ignored, as by the hosted API (its SDKs send fields such as
 * wait_for_ready, timeout or labels that do not apply here). Returns true when valid. */
bool api_json_box_request(const json_t *body, bool create, struct api_box_req *out,
                          struct errlist *errs);

/* The stored body of a template (current format) from a create request: {"image", "resources",
 * "proxy_config" (legacy inject_headers upgraded), "env_vars", "vcpus"/"mem_bytes"/
 * "fs_capacity_bytes" when given}. Opaque values are still plaintext (seal afterwards). NULL
 * with errs filled when invalid; *name gets the template name (borrowed from body). */
json_t *api_json_template_body(const json_t *body, const char **name, struct errlist *errs);
/* The resources a box takes from a template body (0 when the template has none). */
void api_json_template_resources(const json_t *tbody, int64_t *cpu_millicores, int64_t *mem_bytes,
                                 int64_t *fs_capacity_bytes);

/* An execute request (see the top), validated field by field into *out (strings borrowed from
 * body; env is the request's env or run_config.env_vars). Every problem goes to errs as
 * "<field>: ...". Returns true when valid. */
struct api_exec_req {
    const char *command;
    const char *shell;
    const char *cwd;   /* NULL: the default */
    const json_t *env; /* object of names to strings, or NULL */
    double timeout_s;
};
bool api_json_exec_request(const json_t *body, struct api_exec_req *out, struct errlist *errs);
/* buf[0..len) as a JSON string: valid UTF-8 is kept byte for byte (NULs included), every
 * invalid byte becomes U+FFFD. New reference. */
json_t *api_json_text(const char *buf, size_t len);
/* The 200 body of an execute that ran: {"stdout", "stderr", "exit_code", "timed_out",
 * "stdout_truncated", "stderr_truncated", "duration_ms"}. New reference. */
struct box_exec_result;
json_t *api_json_exec_result(const struct box_exec_result *r);

/* The JSON object of a box as the API returns it (opaque values masked). dataplane_base as in
 * api_hooks. New reference. */
json_t *api_json_box(const struct store_box *b, const char *dataplane_base);
/* The JSON object of a template as the API returns it. tbody is the parsed stored body. */
json_t *api_json_template(const struct store_template *t, const json_t *tbody);

/* A secret write: PUT {"value", "configs"} on one key. */
struct api_secret_req {
    const char *value;     /* NULL: keep the current value */
    bool has_configs;      /* false: keep the current binding (default for a new secret) */
    const json_t *configs; /* when has_configs: the array, or NULL for JSON null (default) */
};
/* Validates a secret key name (letters, digits, '_', not starting with a digit; at most
 * STORE_NAME_MAX bytes). NULL if valid, else why not. */
const char *api_json_secret_key_problem(const char *key);
/* Validates a PUT body; problems to errs as "<field>: ...". */
bool api_json_secret_request(const json_t *body, struct api_secret_req *out, struct errlist *errs);
/* Validates a configs array ([{"host": "<host pattern>"}], non-empty); path prefixes messages. */
bool api_json_check_configs(const json_t *configs, const char *path, struct errlist *errs);
/* Whether every host the binding inner allows is also allowed by outer (bindings as configs
 * arrays; NULL means the default for secret name, SPEC §6; no patterns means unrestricted). A
 * value-less PUT may only narrow a binding: moving a stored value to other hosts needs the
 * value, or a stolen API key could send the secret anywhere. */
bool api_json_binding_within(const char *name, const json_t *inner, const json_t *outer);
/* The JSON object of a secret in a list: {"key", "configs", "hosts", "created_at",
 * "updated_at"}; hosts is the effective binding (configs, or the well-known default of SPEC §6;
 * [] = unrestricted). Never the value. */
json_t *api_json_secret(const struct store_secret *s);

/* ---- internal to the api module (api.c and its handlers api_*.c); not for other modules ---- */

struct evhttp;
struct evhttp_bound_socket;
struct evhttp_request;

struct api {
    struct event_base *base; /* borrowed */
    struct evhttp *http;
    struct evhttp_bound_socket *sock; /* owned by http */
    struct control *ctl;              /* borrowed */
    struct store *st;                 /* borrowed from ctl */
    struct api_hooks hooks;           /* strings owned (duplicated) */
    char listen[96];
};

/* One request being served. Handlers answer exactly once through api_reply*. */
struct api_call {
    struct api *api;
    struct evhttp_request *req;
    const char *method; /* "GET", ... */
    const char *ws_id;  /* the authenticated workspace (owned by the dispatcher) */
    const char *arg;    /* the decoded {name} / {key} path parameter, or NULL */
    json_t *body;       /* POST/PUT/PATCH: the parsed body (object or, for bulk, array) */
    int status;         /* what was answered (0 until then) */
    bool deferred;      /* the handler answers later (execute): the request stays open */
};

/* Sends doc (stolen; NULL sends no body) as application/json with status code. The response
 * bytes are zeroed once written (a create response carries the box's proxy token). */
void api_reply(struct api_call *c, int code, json_t *doc);
/* Sends {"detail": <printf>} with status code. The message must never hold a secret. */
void api_reply_error(struct api_call *c, int code, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
/* Sends {"detail": "<errs joined with '; '>"}. */
void api_reply_errlist(struct api_call *c, int code, const struct errlist *errs);
/* Answers a failed store call: NOT_FOUND 404 "<what> <name> not found", EXISTS 409, CONFLICT
 * 409 (changed meanwhile, retry), INVALID 400, ERR 500. */
void api_reply_store(struct api_call *c, int rc, const char *what, const char *name);
/* After a committed write: makes the data plane use the new state (control_publish). Returns
 * true on success; otherwise answers 500 and returns false. */
bool api_publish(struct api_call *c);

/* The dataplane_url prefix for responses to c: api_hooks.dataplane_base, or derived from the
 * request's Host header (the address the client reached the API at). Heap; caller frees. */
char *api_dataplane_base(const struct api_call *c);

/* Handlers (api_boxes.c, api_templates.c, api_secrets.c). */
void api_boxes_create(struct api_call *c);
void api_boxes_list(struct api_call *c);
void api_boxes_get(struct api_call *c);
void api_boxes_status(struct api_call *c);
void api_boxes_patch(struct api_call *c);
void api_boxes_delete(struct api_call *c);
void api_boxes_start(struct api_call *c);
void api_boxes_stop(struct api_call *c);
void api_boxes_execute(struct api_call *c);
void api_templates_create(struct api_call *c);
void api_templates_list(struct api_call *c);
void api_templates_get(struct api_call *c);
void api_templates_delete(struct api_call *c);
void api_secrets_list(struct api_call *c);
void api_secrets_bulk(struct api_call *c);
void api_secrets_get(struct api_call *c);
void api_secrets_put(struct api_call *c);
void api_secrets_delete(struct api_call *c);

#endif
