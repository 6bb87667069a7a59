/* policy: compile a proxy_config into an immutable, reference-counted policy and decide for hosts
 * and requests (SPEC §2, §3). See policy.h for the contract.
 *
 * Compilation is strict and exhaustive: every problem is reported with its JSON path, and a
 * config with any problem produces no policy at all. Error messages may echo what the user
 * wrote in names, types and host patterns, never a header or credential value and never a
 * secret's value. Choices where the SPEC is silent:
 *   - JSON null for an optional field means "absent".
 *   - A workspace_secret template also accepts the legacy "${KEY}" spelling, and must hold at
 *     least one reference (a fixed value belongs in "plaintext").
 *   - Headers that steer framing or routing (Host, Content-Length, Transfer-Encoding, hop-by-hop
 *     headers) cannot be injected, and a rule cannot inject one name twice.
 *   - A rule may have no headers: it then injects nothing, but still keeps callbacks away from
 *     its hosts and still refuses plain HTTP without allow_plaintext.
 *   - Disabled rules are validated (and their secrets resolved) but take no part in decisions. */
#include "policy.h"

#include "gcp.h"
#include "http1.h"
#include "scrub.h"

#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

struct policy {
    atomic_size_t refs;
    uint64_t version;
    struct policy_rule *rules;
    size_t n_rules;
    struct policy_callback *callbacks;
    size_t n_callbacks;
    struct host_pattern *no_proxy;
    size_t n_no_proxy;
    struct host_pattern *allow_list;
    size_t n_allow;
    struct host_pattern *deny_list;
    size_t n_deny;
};

/* What REFUSE_PLAINTEXT names when a callback, not a rule, would have supplied the credential
 * (see policy.h): immutable, shared by every policy. */
static const struct policy_rule policy_callback_stand_in = {
    .name = (char *)"callbacks",
    .type = POLICY_RULE_HEADERS,
};

/* ---- well-known secret host bindings (SPEC §6) ---- */

static const struct {
    const char *key;
    const char *hosts[2];
} policy_well_known[] = {
    {"OPENAI_API_KEY", {"api.openai.com", NULL}},
    {"ANTHROPIC_API_KEY", {"api.anthropic.com", NULL}},
    {"GITHUB_TOKEN", {"github.com", "*.github.com"}},
    {"GH_TOKEN", {"github.com", "*.github.com"}},
};

size_t policy_default_secret_hosts(const char *key, const char **out, size_t out_cap)
{
    size_t n = 0;
    for (size_t i = 0; i < ARRAY_LEN(policy_well_known); i++) {
        if (strcmp(policy_well_known[i].key, key) != 0)
            continue;
        for (size_t j = 0; j < ARRAY_LEN(policy_well_known[i].hosts); j++)
            if (policy_well_known[i].hosts[j] != NULL && n < out_cap)
                out[n++] = policy_well_known[i].hosts[j];
        break;
    }
    return n;
}

/* ---- JSON/error helpers shared with config.c ---- */

const char *policy_json_kind(const json_t *v)
{
    if (v == NULL)
        return "nothing";
    switch (json_typeof(v)) {
    case JSON_OBJECT:
        return "an object";
    case JSON_ARRAY:
        return "an array";
    case JSON_STRING:
        return "a string";
    case JSON_INTEGER:
        return "an integer";
    case JSON_REAL:
        return "a number";
    case JSON_TRUE:
    case JSON_FALSE:
        return "a boolean";
    case JSON_NULL:
        return "null";
    }
    return "something else";
}

static bool policy_simple_key(const char *key)
{
    if (key[0] == '\0')
        return false;
    for (const char *p = key; *p; p++)
        if (!((*p >= 'a' && *p <= 'z') || (*p >= 'A' && *p <= 'Z') || (*p >= '0' && *p <= '9') ||
              *p == '_' || *p == '-'))
            return false;
    return true;
}

char *policy_path_key(const char *parent, const char *key)
{
    char q[96];
    bool simple = policy_simple_key(key);
    if (parent == NULL || parent[0] == '\0')
        return simple ? xstrdup(key) : xasprintf("[%s]", policy_quote(key, q, sizeof(q)));
    if (simple)
        return xasprintf("%s.%s", parent, key);
    return xasprintf("%s[%s]", parent, policy_quote(key, q, sizeof(q)));
}

const char *policy_quote(const char *s, char *buf, size_t size)
{
    const size_t max_chars = 48;
    size_t o = 0, shown = 0;
    if (size < 8) {
        if (size > 0)
            buf[0] = '\0';
        return buf;
    }
    buf[o++] = '"';
    for (const unsigned char *p = (const unsigned char *)s; *p; p++) {
        /* Room for an escaped char (2), "..." (3), the closing quote and NUL. */
        if (shown == max_chars || o + 2 + 3 + 2 > size) {
            memcpy(buf + o, "...", 3);
            o += 3;
            break;
        }
        if (*p == '"' || *p == '\\') {
            buf[o++] = '\\';
            buf[o++] = (char)*p;
        } else {
            buf[o++] = (*p >= 0x20 && *p < 0x7f) ? (char)*p : '?';
        }
        shown++;
    }
    buf[o++] = '"';
    buf[o] = '\0';
    return buf;
}

bool policy_check_keys(const json_t *obj, const char *path, const char *const *allowed,
                       struct errlist *errs)
{
    const char *key;
    json_t *v;
    bool ok = true;
    json_object_foreach((json_t *)obj, key, v)
    {
        bool known = false;
        for (size_t i = 0; allowed[i] != NULL && !known; i++)
            known = strcmp(allowed[i], key) == 0;
        if (known)
            continue;
        size_t cap = 1;
        for (size_t i = 0; allowed[i] != NULL; i++)
            cap += strlen(allowed[i]) + 2;
        char *list = xcalloc(1, cap);
        for (size_t i = 0; allowed[i] != NULL; i++) {
            if (i > 0)
                strcat(list, ", ");
            strcat(list, allowed[i]);
        }
        char *kp = policy_path_key(path, key);
        errlist_add(errs, "%s: unknown key (expected one of: %s)", kp, list);
        free(kp);
        free(list);
        ok = false;
    }
    return ok;
}

void policy_json_zero_strings(json_t *v)
{
    const char *key;
    json_t *item;
    size_t i;
    if (v == NULL)
        return;
    switch (json_typeof(v)) {
    case JSON_STRING:
        /* jansson owns a private heap copy; the const is only the API's. */
        secure_zero((char *)json_string_value(v), json_string_length(v));
        break;
    case JSON_OBJECT:
        json_object_foreach(v, key, item)
        {
            policy_json_zero_strings(item);
        }
        break;
    case JSON_ARRAY:
        json_array_foreach(v, i, item)
        {
            policy_json_zero_strings(item);
        }
        break;
    default:
        break;
    }
}

/* ---- compilation ---- */

/* Compilation context: where secrets come from and where problems go. */
struct pc {
    const struct secret_source *secrets;
    struct errlist *errs;
};

static void pc_err(struct pc *c, const char *path, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

/* Appends "PATH: message" to the error list. */
static void pc_err(struct pc *c, const char *path, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(NULL, 0, fmt, ap);
    va_end(ap);
    if (n < 0)
        abort(); /* only an invalid format string gets here */
    char *msg = xmalloc((size_t)n + 1);
    va_start(ap, fmt);
    vsnprintf(msg, (size_t)n + 1, fmt, ap);
    va_end(ap);
    errlist_add(c->errs, "%s: %s", path, msg);
    free(msg);
}

/* obj[key], treating JSON null as absent. */
static const json_t *pc_field(const json_t *obj, const char *key)
{
    const json_t *v = json_object_get(obj, key);
    return (v == NULL || json_is_null(v)) ? NULL : v;
}

/* Checks v is a string without embedded NUL (and non-empty if asked); *out borrows it. */
static bool pc_string(struct pc *c, const json_t *v, const char *path, bool nonempty,
                      const char **out)
{
    if (!json_is_string(v)) {
        pc_err(c, path, "expected a%s string, found %s", nonempty ? " non-empty" : "",
               policy_json_kind(v));
        return false;
    }
    const char *s = json_string_value(v);
    if (strlen(s) != json_string_length(v)) {
        pc_err(c, path, "the string contains a NUL character");
        return false;
    }
    if (nonempty && s[0] == '\0') {
        pc_err(c, path, "expected a non-empty string, found an empty one");
        return false;
    }
    *out = s;
    return true;
}

/* Reads optional boolean obj[key] into *out (left unchanged when absent). */
static void pc_bool(struct pc *c, const json_t *obj, const char *key, const char *path, bool *out)
{
    const json_t *v = pc_field(obj, key);
    if (v == NULL)
        return;
    if (!json_is_boolean(v)) {
        char *kp = policy_path_key(path, key);
        pc_err(c, kp, "expected a boolean, found %s", policy_json_kind(v));
        free(kp);
        return;
    }
    *out = json_is_true(v);
}

static void pc_hosts_free(struct host_pattern *h, size_t n)
{
    for (size_t i = 0; i < n; i++)
        host_pattern_free(&h[i]);
    free(h);
}

/* Compiles a JSON array of host patterns into *out (n entries, owned by the caller even on
 * failure, for pc_hosts_free). Returns false after reporting problems. */
static bool pc_hosts(struct pc *c, const json_t *arr, const char *path, bool nonempty,
                     struct host_pattern **out, size_t *n)
{
    char q[80];
    bool ok = true;
    *out = NULL;
    *n = 0;
    if (!json_is_array(arr)) {
        pc_err(c, path, "expected an array of host patterns, found %s", policy_json_kind(arr));
        return false;
    }
    if (nonempty && json_array_size(arr) == 0) {
        pc_err(c, path, "expected at least one host pattern, found an empty array");
        return false;
    }
    *n = json_array_size(arr);
    *out = xcalloc(*n, sizeof(**out));
    for (size_t i = 0; i < *n; i++) {
        char *ip = xasprintf("%s[%zu]", path, i);
        const char *s, *why;
        if (!pc_string(c, json_array_get(arr, i), ip, true, &s))
            ok = false;
        else if (host_pattern_compile(s, &(*out)[i], &why) == -1) {
            pc_err(c, ip, "invalid host pattern %s: %s", policy_quote(s, q, sizeof(q)), why);
            ok = false;
        }
        free(ip);
    }
    return ok;
}

static void pc_strings_free(char **v, size_t n)
{
    for (size_t i = 0; i < n; i++)
        free(v[i]);
    free(v);
}

/* Validates a JSON array of path patterns into *out (owned by the caller even on failure). */
static bool pc_paths(struct pc *c, const json_t *arr, const char *path, char ***out, size_t *n)
{
    char q[80];
    bool ok = true;
    *out = NULL;
    *n = 0;
    if (!json_is_array(arr)) {
        pc_err(c, path, "expected an array of path patterns, found %s", policy_json_kind(arr));
        return false;
    }
    *n = json_array_size(arr);
    *out = xcalloc(*n, sizeof(**out));
    for (size_t i = 0; i < *n; i++) {
        char *ip = xasprintf("%s[%zu]", path, i);
        const char *s, *why;
        if (!pc_string(c, json_array_get(arr, i), ip, true, &s))
            ok = false;
        else if (path_pattern_validate(s, &why) == -1) {
            pc_err(c, ip, "invalid path pattern %s: %s", policy_quote(s, q, sizeof(q)), why);
            ok = false;
        } else
            (*out)[i] = xstrdup(s);
        free(ip);
    }
    return ok;
}

/* An RFC 9110 token character. */
static bool policy_is_tchar(unsigned char ch)
{
    return (ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') || (ch >= '0' && ch <= '9') ||
           (ch != '\0' && strchr("!#$%&'*+-.^_`|~", ch) != NULL);
}

/* Headers that decide framing, routing or the connection itself: injecting them would let a
 * config desynchronise the upstream or redirect a credential, so they are refused. */
static const char *const policy_forbidden_headers[] = {
    "host", "content-length", "transfer-encoding", "connection",       "upgrade",
    "te",   "trailer",        "keep-alive",        "proxy-connection", NULL,
};

/* Validates a header name for injection. */
static bool pc_header_name(struct pc *c, const char *name, const char *path)
{
    char q[80];
    for (const unsigned char *p = (const unsigned char *)name; *p; p++)
        if (!policy_is_tchar(*p)) {
            pc_err(c, path,
                   "header name %s is not an HTTP token (letters, digits and !#$%%&'*+-.^_`|~)",
                   policy_quote(name, q, sizeof(q)));
            return false;
        }
    for (size_t i = 0; policy_forbidden_headers[i] != NULL; i++)
        if (ascii_case_eq(name, strlen(name), policy_forbidden_headers[i],
                          strlen(policy_forbidden_headers[i]))) {
            pc_err(c, path, "header %s cannot be injected: it controls message framing or routing",
                   policy_quote(name, q, sizeof(q)));
            return false;
        }
    return true;
}

/* True if ch may appear in a header value: anything but control characters (HTAB aside). */
static bool policy_char_safe(unsigned char ch)
{
    return (ch >= 0x20 || ch == '\t') && ch != 0x7f;
}

/* True if s can be sent as a header value. */
static bool policy_value_safe(const char *s)
{
    for (const unsigned char *p = (const unsigned char *)s; *p; p++)
        if (!policy_char_safe(*p))
            return false;
    return true;
}

/* True if s[0..n) is a secret or variable name: [A-Za-z_][A-Za-z0-9_]*. */
static bool policy_valid_key(const char *s, size_t n)
{
    if (n == 0 || (s[0] >= '0' && s[0] <= '9'))
        return false;
    for (size_t i = 0; i < n; i++)
        if (!((s[i] >= 'a' && s[i] <= 'z') || (s[i] >= 'A' && s[i] <= 'Z') ||
              (s[i] >= '0' && s[i] <= '9') || s[i] == '_'))
            return false;
    return true;
}

bool policy_valid_secret_name(const char *name)
{
    return policy_valid_key(name, strlen(name));
}

/* Reports every pattern of hosts that does not lie within the secret's binding. */
static void pc_check_binding(struct pc *c, const char *path, const char *key,
                             const struct host_pattern *bind, size_t n_bind,
                             const struct host_pattern *hosts, size_t n_hosts)
{
    char list[512], one[272], q[80];
    if (n_bind == 0)
        return;
    list[0] = '\0';
    for (size_t b = 0; b < n_bind; b++) {
        size_t used = strlen(list);
        snprintf(list + used, sizeof(list) - used, "%s%s", b ? ", " : "",
                 host_pattern_format(&bind[b], one, sizeof(one)));
    }
    for (size_t h = 0; h < n_hosts; h++) {
        bool inside = false;
        for (size_t b = 0; b < n_bind && !inside; b++)
            inside = host_pattern_within(&hosts[h], &bind[b]);
        if (!inside)
            pc_err(c, path,
                   "secret %s may only be sent to %s; match_hosts pattern %s lies outside that "
                   "binding",
                   key, list,
                   policy_quote(host_pattern_format(&hosts[h], one, sizeof(one)), q, sizeof(q)));
    }
}

/* Resolves a workspace_secret template: each "{KEY}" (or legacy "${KEY}") becomes the secret's
 * value. Checks every referenced secret exists and is bound to hosts that cover every pattern in
 * hosts, and, for header values, that nothing resolves to a control character. On success
 * *out is a fresh string holding secret material (caller secret_free()s it). Two passes (measure,
 * then copy) so the result is never reallocated, which would leave stray copies behind. */
static bool pc_resolve(struct pc *c, const char *tmpl, const char *path,
                       const struct host_pattern *hosts, size_t n_hosts, bool header_value,
                       char **out)
{
    size_t total = 0, refs = 0;
    char *buf = NULL;
    bool ok = true;
    for (int pass = 0; pass < 2; pass++) {
        size_t o = 0;
        bool literal_bad = false;
        for (size_t i = 0; tmpl[i] != '\0';) {
            size_t at = i;
            if (tmpl[i] == '$' && tmpl[i + 1] == '{')
                i++;
            if (tmpl[i] != '{') {
                if (pass == 0 && header_value && !literal_bad &&
                    !policy_char_safe((unsigned char)tmpl[i])) {
                    pc_err(c, path, "control character in header value at character %zu", i + 1);
                    literal_bad = true;
                    ok = false;
                }
                if (pass == 1 && o >= total)
                    abort(); /* unreachable: pass 0 counted every literal */
                if (pass == 1)
                    buf[o] = tmpl[i];
                o++;
                i++;
                continue;
            }
            const char *name = tmpl + i + 1;
            const char *end = strchr(name, '}');
            if (end == NULL) {
                if (pass == 0)
                    pc_err(c, path,
                           "unterminated '{' at character %zu: a secret reference is {KEY}",
                           at + 1);
                ok = false;
                break;
            }
            i = (size_t)(end - tmpl) + 1;
            if (!policy_valid_key(name, (size_t)(end - name))) {
                if (pass == 0)
                    pc_err(c, path,
                           "invalid secret reference at character %zu: expected {KEY}, KEY "
                           "made of letters, digits and '_', not starting with a digit",
                           at + 1);
                ok = false;
                continue;
            }
            char *key = xstrndup(name, (size_t)(end - name));
            const struct host_pattern *bind = NULL;
            size_t n_bind = 0;
            const char *value =
                c->secrets ? c->secrets->get(c->secrets->ctx, key, &bind, &n_bind) : NULL;
            if (pass == 0) {
                refs++;
                if (value == NULL) {
                    pc_err(c, path, "unknown workspace secret %s", key);
                    ok = false;
                } else {
                    pc_check_binding(c, path, key, bind, n_bind, hosts, n_hosts);
                    if (header_value && !policy_value_safe(value)) {
                        pc_err(c, path,
                               "secret %s holds a control character (such as CR or LF) and "
                               "cannot be sent in a header",
                               key);
                        ok = false;
                    }
                    total += strlen(value);
                }
            } else if (value != NULL) {
                size_t n = strlen(value);
                if (o + n > total)
                    abort(); /* the secret source changed its answer mid-call: a bug */
                memcpy(buf + o, value, n);
                o += n;
            }
            free(key);
        }
        if (pass == 0) {
            if (ok && refs == 0) {
                pc_err(c, path,
                       "expected at least one {KEY} secret reference (a fixed value is "
                       "type \"plaintext\")");
                ok = false;
            }
            if (!ok)
                return false;
            total += o; /* o counted the literal characters */
            buf = xmalloc(total + 1);
        } else {
            buf[o] = '\0';
        }
    }
    *out = buf;
    return true;
}

/* Parses one {"name", "type", "value"} header into out (fields owned by out even on failure).
 * allow_secret is false for callback request_headers, which take plaintext or opaque only. */
static bool pc_header(struct pc *c, const json_t *h, const char *path, bool allow_secret,
                      const struct host_pattern *hosts, size_t n_hosts, struct policy_header *out)
{
    static const char *const keys[] = {"name", "type", "value", NULL};
    char q[80];
    const char *name, *type, *value;
    bool ok = true;
    if (!json_is_object(h)) {
        pc_err(c, path, "expected an object {\"name\", \"type\", \"value\"}, found %s",
               policy_json_kind(h));
        return false;
    }
    ok = policy_check_keys(h, path, keys, c->errs);
    char *np = xasprintf("%s.name", path);
    char *tp = xasprintf("%s.type", path);
    char *vp = xasprintf("%s.value", path);
    if (!pc_string(c, json_object_get(h, "name"), np, true, &name) || !pc_header_name(c, name, np))
        ok = false;
    else
        out->name = xstrdup(name);
    bool type_ok = pc_string(c, json_object_get(h, "type"), tp, true, &type);
    if (type_ok && strcmp(type, "workspace_secret") != 0 && strcmp(type, "plaintext") != 0 &&
        strcmp(type, "opaque") != 0) {
        pc_err(c, tp, "expected %s\"plaintext\" or \"opaque\", found %s",
               allow_secret ? "\"workspace_secret\", " : "", policy_quote(type, q, sizeof(q)));
        type_ok = false;
    } else if (type_ok && !allow_secret && strcmp(type, "workspace_secret") == 0) {
        pc_err(c, tp,
               "\"workspace_secret\" is not allowed here: callback request_headers take "
               "\"plaintext\" or \"opaque\"");
        type_ok = false;
    }
    if (!pc_string(c, json_object_get(h, "value"), vp, false, &value) || !type_ok) {
        ok = false;
    } else if (strcmp(type, "workspace_secret") == 0) {
        if (!pc_resolve(c, value, vp, hosts, n_hosts, true, &out->value))
            ok = false;
        out->secret = true;
    } else if (!policy_value_safe(value)) {
        pc_err(c, vp, "control character (such as CR or LF) in header value");
        ok = false;
    } else {
        out->value = xstrdup(value);
        out->secret = strcmp(type, "opaque") == 0;
    }
    free(np);
    free(tp);
    free(vp);
    return ok;
}

static void pc_headers_free(struct policy_header *h, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        free(h[i].name);
        secret_free(h[i].value);
    }
    free(h);
}

/* Reports header names given twice (case-insensitively) within one list. */
static bool pc_check_duplicates(struct pc *c, const char *path, const struct policy_header *h,
                                size_t n)
{
    char q[80];
    bool ok = true;
    for (size_t i = 0; i < n; i++)
        for (size_t j = 0; j < i && h[i].name != NULL; j++)
            if (h[j].name != NULL &&
                ascii_case_eq(h[i].name, strlen(h[i].name), h[j].name, strlen(h[j].name))) {
                pc_err(c, path, "header %s is given twice (header names are case-insensitive)",
                       policy_quote(h[i].name, q, sizeof(q)));
                ok = false;
                break;
            }
    return ok;
}

/* Parses a "headers" array (current format). */
static bool pc_headers(struct pc *c, const json_t *arr, const char *path, bool allow_secret,
                       const struct host_pattern *hosts, size_t n_hosts, struct policy_header **out,
                       size_t *n)
{
    bool ok = true;
    *out = NULL;
    *n = 0;
    if (!json_is_array(arr)) {
        pc_err(c, path, "expected an array of headers, found %s", policy_json_kind(arr));
        return false;
    }
    *n = json_array_size(arr);
    *out = xcalloc(*n, sizeof(**out));
    for (size_t i = 0; i < *n; i++) {
        char *ip = xasprintf("%s[%zu]", path, i);
        if (!pc_header(c, json_array_get(arr, i), ip, allow_secret, hosts, n_hosts, &(*out)[i]))
            ok = false;
        free(ip);
    }
    return pc_check_duplicates(c, path, *out, *n) && ok;
}

/* Parses a legacy "inject_headers" object: a value holding "${" is a workspace_secret template,
 * anything else plaintext. */
static bool pc_inject_headers(struct pc *c, const json_t *obj, const char *path,
                              const struct host_pattern *hosts, size_t n_hosts,
                              struct policy_header **out, size_t *n)
{
    const char *key;
    json_t *v;
    bool ok = true;
    size_t i = 0;
    *out = NULL;
    *n = 0;
    if (!json_is_object(obj)) {
        pc_err(c, path, "expected an object of header name to value, found %s",
               policy_json_kind(obj));
        return false;
    }
    *n = json_object_size(obj);
    *out = xcalloc(*n, sizeof(**out));
    json_object_foreach((json_t *)obj, key, v)
    {
        struct policy_header *h = &(*out)[i++];
        char *kp = policy_path_key(path, key);
        const char *value;
        if (!pc_header_name(c, key, kp))
            ok = false;
        else
            h->name = xstrdup(key);
        if (!pc_string(c, v, kp, false, &value)) {
            ok = false;
        } else if (strstr(value, "${") != NULL) {
            if (!pc_resolve(c, value, kp, hosts, n_hosts, true, &h->value))
                ok = false;
            h->secret = true;
        } else if (!policy_value_safe(value)) {
            pc_err(c, kp, "control character (such as CR or LF) in header value");
            ok = false;
        } else {
            h->value = xstrdup(value);
        }
        free(kp);
    }
    return pc_check_duplicates(c, path, *out, *n) && ok;
}

/* Parses a provider credential {"type": "workspace_secret"|"opaque", "value": ...} into *out
 * (secret material). header_safe: the value ends up in a header (AWS key ids and tokens). */
static bool pc_credential(struct pc *c, const json_t *cred, const char *path, bool header_safe,
                          const struct host_pattern *hosts, size_t n_hosts, char **out)
{
    static const char *const keys[] = {"type", "value", NULL};
    char q[80];
    const char *type, *value;
    bool ok;
    if (!json_is_object(cred)) {
        pc_err(c, path, "expected an object {\"type\", \"value\"}, found %s",
               policy_json_kind(cred));
        return false;
    }
    ok = policy_check_keys(cred, path, keys, c->errs);
    char *tp = xasprintf("%s.type", path);
    char *vp = xasprintf("%s.value", path);
    bool type_ok = pc_string(c, json_object_get(cred, "type"), tp, true, &type);
    if (type_ok && strcmp(type, "plaintext") == 0) {
        pc_err(c, tp,
               "\"plaintext\" is not accepted for provider credentials: use "
               "\"workspace_secret\" or \"opaque\"");
        type_ok = false;
    } else if (type_ok && strcmp(type, "workspace_secret") != 0 && strcmp(type, "opaque") != 0) {
        pc_err(c, tp, "expected \"workspace_secret\" or \"opaque\", found %s",
               policy_quote(type, q, sizeof(q)));
        type_ok = false;
    }
    if (!pc_string(c, json_object_get(cred, "value"), vp, true, &value) || !type_ok) {
        ok = false;
    } else if (strcmp(type, "workspace_secret") == 0) {
        if (!pc_resolve(c, value, vp, hosts, n_hosts, header_safe, out))
            ok = false;
    } else if (header_safe && !policy_value_safe(value)) {
        pc_err(c, vp, "control character (such as CR or LF) in credential value");
        ok = false;
    } else {
        *out = xstrdup(value);
    }
    free(tp);
    free(vp);
    return ok;
}

/* Parses a rule's "aws" object. */
static bool pc_aws(struct pc *c, const json_t *aws, const char *path,
                   const struct host_pattern *hosts, size_t n_hosts, struct policy_aws *out)
{
    static const char *const keys[] = {"access_key_id", "secret_access_key", "session_token", NULL};
    bool ok;
    if (!json_is_object(aws)) {
        pc_err(c, path, "expected an object, found %s", policy_json_kind(aws));
        return false;
    }
    ok = policy_check_keys(aws, path, keys, c->errs);
    for (size_t i = 0; keys[i] != NULL; i++) {
        const json_t *v = pc_field(aws, keys[i]);
        char **dst = i == 0   ? &out->access_key_id
                     : i == 1 ? &out->secret_access_key
                              : &out->session_token;
        char *kp = xasprintf("%s.%s", path, keys[i]);
        if (v == NULL && i < 2) {
            pc_err(c, kp, "required credential is missing");
            ok = false;
        } else if (v != NULL && !pc_credential(c, v, kp, true, hosts, n_hosts, dst)) {
            ok = false;
        }
        free(kp);
    }
    return ok;
}

/* NULL if s is a usable service-account key (gcp_sa_parse: the fields, an unencrypted RSA key
 * of at least 2048 bits, an https token_uri), else why not (caller frees; never holds the key).
 * Checked when the config is applied, so a bad key is a 400 then, not a 502 per request. */
static char *policy_service_account_problem(const char *s)
{
    struct gcp_sa *sa = NULL;
    char *err = NULL;
    if (gcp_sa_parse(s, &sa, &err) != 0)
        return err ? err : xstrdup("not a service-account key");
    gcp_sa_free(sa);
    return NULL;
}

/* Parses a rule's "gcp" object. */
static bool pc_gcp(struct pc *c, const json_t *gcp, const char *path,
                   const struct host_pattern *hosts, size_t n_hosts, struct policy_gcp *out)
{
    static const char *const keys[] = {"service_account_json", "scopes", NULL};
    bool ok;
    if (!json_is_object(gcp)) {
        pc_err(c, path, "expected an object, found %s", policy_json_kind(gcp));
        return false;
    }
    ok = policy_check_keys(gcp, path, keys, c->errs);
    char *sp = xasprintf("%s.service_account_json", path);
    const json_t *sa = pc_field(gcp, "service_account_json");
    if (sa == NULL) {
        pc_err(c, sp, "required credential is missing");
        ok = false;
    } else if (!pc_credential(c, sa, sp, false, hosts, n_hosts, &out->service_account_json)) {
        ok = false;
    } else {
        char *why = policy_service_account_problem(out->service_account_json);
        if (why != NULL) {
            pc_err(c, sp, "%s", why);
            free(why);
            ok = false;
        }
    }
    free(sp);
    const json_t *scopes = pc_field(gcp, "scopes");
    char *cp = xasprintf("%s.scopes", path);
    if (scopes == NULL) {
        out->n_scopes = 1;
        out->scopes = xcalloc(1, sizeof(char *));
        out->scopes[0] = xstrdup("https://www.googleapis.com/auth/cloud-platform");
    } else if (!json_is_array(scopes) || json_array_size(scopes) == 0) {
        pc_err(c, cp, "expected a non-empty array of scope strings, found %s",
               json_is_array(scopes) ? "an empty array" : policy_json_kind(scopes));
        ok = false;
    } else {
        out->n_scopes = json_array_size(scopes);
        out->scopes = xcalloc(out->n_scopes, sizeof(char *));
        for (size_t i = 0; i < out->n_scopes; i++) {
            char *ip = xasprintf("%s[%zu]", cp, i);
            const char *s;
            if (!pc_string(c, json_array_get(scopes, i), ip, true, &s)) {
                ok = false;
            } else if (!policy_value_safe(s) || !gcp_scope_valid(s)) {
                pc_err(c, ip, "not a valid OAuth scope (printable characters, no spaces)");
                ok = false;
            } else {
                out->scopes[i] = xstrdup(s);
            }
            free(ip);
        }
    }
    free(cp);
    return ok;
}

/* Parses a rule's env_vars: an object of placeholder strings. */
static bool pc_env_vars(struct pc *c, const json_t *obj, const char *path,
                        struct policy_env_var **out, size_t *n)
{
    const char *key;
    json_t *v;
    size_t i = 0;
    bool ok = true;
    if (!json_is_object(obj)) {
        pc_err(c, path, "expected an object of variable name to string, found %s",
               policy_json_kind(obj));
        return false;
    }
    *n = json_object_size(obj);
    *out = xcalloc(*n, sizeof(**out));
    json_object_foreach((json_t *)obj, key, v)
    {
        char *kp = policy_path_key(path, key);
        const char *s;
        if (!policy_valid_key(key, strlen(key))) {
            pc_err(c, kp,
                   "invalid variable name: letters, digits and '_', not starting with a "
                   "digit");
            ok = false;
        } else if (!pc_string(c, v, kp, false, &s)) {
            ok = false;
        } else {
            (*out)[i].name = xstrdup(key);
            (*out)[i].value = xstrdup(s);
        }
        i++;
        free(kp);
    }
    return ok;
}

static void policy_rule_free(struct policy_rule *r)
{
    free(r->name);
    pc_hosts_free(r->hosts, r->n_hosts);
    pc_strings_free(r->paths, r->n_paths);
    pc_headers_free(r->headers, r->n_headers);
    scrub_free(r->scrub);
    for (size_t i = 0; i < r->n_env_vars; i++) {
        free(r->env_vars[i].name);
        free(r->env_vars[i].value);
    }
    free(r->env_vars);
    secret_free(r->aws.access_key_id);
    secret_free(r->aws.secret_access_key);
    secret_free(r->aws.session_token);
    secret_free(r->gcp.service_account_json);
    pc_strings_free(r->gcp.scopes, r->gcp.n_scopes);
}

/* Compiles one rule into out (zero-initialised; whatever is filled in is freed by
 * policy_rule_free, even on failure). */
static void pc_rule(struct pc *c, const json_t *r, const char *path, struct policy_rule *out)
{
    static const char *const keys[] = {"name",
                                       "enabled",
                                       "type",
                                       "match_hosts",
                                       "match_paths",
                                       "headers",
                                       "inject_headers",
                                       "env_vars",
                                       "allow_plaintext",
                                       "aws",
                                       "gcp",
                                       NULL};
    char q[80];
    const char *s;
    const json_t *v;
    bool hosts_ok = true;
    if (!json_is_object(r)) {
        pc_err(c, path, "expected a rule object, found %s", policy_json_kind(r));
        return;
    }
    policy_check_keys(r, path, keys, c->errs);
    char *p_name = xasprintf("%s.name", path);
    if (pc_string(c, json_object_get(r, "name"), p_name, true, &s)) {
        if (policy_value_safe(s))
            out->name = xstrdup(s);
        else
            pc_err(c, p_name, "control character in rule name");
    }
    free(p_name);

    out->enabled = true;
    pc_bool(c, r, "enabled", path, &out->enabled);
    pc_bool(c, r, "allow_plaintext", path, &out->allow_plaintext);

    out->type = POLICY_RULE_HEADERS;
    char *p_type = xasprintf("%s.type", path);
    v = pc_field(r, "type");
    if (v != NULL && pc_string(c, v, p_type, true, &s)) {
        if (strcmp(s, "aws") == 0)
            out->type = POLICY_RULE_AWS;
        else if (strcmp(s, "gcp") == 0)
            out->type = POLICY_RULE_GCP;
        else if (strcmp(s, "headers") != 0)
            pc_err(c, p_type, "expected \"headers\", \"aws\" or \"gcp\", found %s",
                   policy_quote(s, q, sizeof(q)));
    }
    free(p_type);

    /* Hosts first: secret bindings are checked against them. */
    char *p_hosts = xasprintf("%s.match_hosts", path);
    v = pc_field(r, "match_hosts");
    if (v != NULL) {
        hosts_ok = pc_hosts(c, v, p_hosts, true, &out->hosts, &out->n_hosts);
    } else if (out->type == POLICY_RULE_HEADERS) {
        pc_err(c, p_hosts, "required: a non-empty array of host patterns");
        hosts_ok = false;
    } else {
        const char *def = out->type == POLICY_RULE_AWS ? "*.amazonaws.com" : "*.googleapis.com";
        const char *why;
        out->hosts = xcalloc(1, sizeof(*out->hosts));
        out->n_hosts = 1;
        (void)host_pattern_compile(def, &out->hosts[0], &why);
    }
    free(p_hosts);
    /* With broken hosts, skip binding checks rather than report them against half a list. */
    const struct host_pattern *bind_hosts = hosts_ok ? out->hosts : NULL;
    size_t n_bind_hosts = hosts_ok ? out->n_hosts : 0;

    v = pc_field(r, "match_paths");
    if (v != NULL) {
        char *pp = xasprintf("%s.match_paths", path);
        pc_paths(c, v, pp, &out->paths, &out->n_paths);
        free(pp);
    }

    const json_t *headers = pc_field(r, "headers");
    const json_t *inject = pc_field(r, "inject_headers");
    const json_t *aws = pc_field(r, "aws");
    const json_t *gcp = pc_field(r, "gcp");
    if (out->type == POLICY_RULE_HEADERS) {
        char *hp = xasprintf("%s.%s", path, headers ? "headers" : "inject_headers");
        if (headers != NULL && inject != NULL)
            pc_err(c, path, "give either \"headers\" or the legacy \"inject_headers\", not both");
        else if (headers != NULL)
            pc_headers(c, headers, hp, true, bind_hosts, n_bind_hosts, &out->headers,
                       &out->n_headers);
        else if (inject != NULL)
            pc_inject_headers(c, inject, hp, bind_hosts, n_bind_hosts, &out->headers,
                              &out->n_headers);
        free(hp);
    } else if (headers != NULL || inject != NULL) {
        pc_err(c, path, "a rule of type \"%s\" injects no headers: remove \"%s\"",
               out->type == POLICY_RULE_AWS ? "aws" : "gcp",
               headers ? "headers" : "inject_headers");
    }
    if (aws != NULL && out->type != POLICY_RULE_AWS)
        pc_err(c, path, "\"aws\" is only for a rule of \"type\": \"aws\"");
    if (gcp != NULL && out->type != POLICY_RULE_GCP)
        pc_err(c, path, "\"gcp\" is only for a rule of \"type\": \"gcp\"");
    if (out->type == POLICY_RULE_AWS || out->type == POLICY_RULE_GCP) {
        const char *what = out->type == POLICY_RULE_AWS ? "aws" : "gcp";
        const json_t *obj = out->type == POLICY_RULE_AWS ? aws : gcp;
        char *ap = xasprintf("%s.%s", path, what);
        if (obj == NULL)
            pc_err(c, ap, "required for a rule of \"type\": \"%s\"", what);
        else if (out->type == POLICY_RULE_AWS)
            pc_aws(c, obj, ap, bind_hosts, n_bind_hosts, &out->aws);
        else
            pc_gcp(c, obj, ap, bind_hosts, n_bind_hosts, &out->gcp);
        free(ap);
    }

    v = pc_field(r, "env_vars");
    if (v != NULL) {
        char *ep = xasprintf("%s.env_vars", path);
        pc_env_vars(c, v, ep, &out->env_vars, &out->n_env_vars);
        free(ep);
    }
    /* Built once here rather than per request: the data path borrows it. */
    for (size_t i = 0; i < out->n_headers; i++) {
        if (!out->headers[i].secret || out->headers[i].value == NULL)
            continue;
        if (out->scrub == NULL)
            out->scrub = scrub_new();
        scrub_add_credential(out->scrub, out->headers[i].value);
    }
    if (out->scrub != NULL && scrub_empty(out->scrub)) {
        scrub_free(out->scrub);
        out->scrub = NULL;
    }
}

/* Checks a callback URL: http(s), a valid host[:port], no user info, nothing unprintable.
 * Returns NULL if fine, else what is wrong. */
static const char *policy_url_problem(const char *url)
{
    size_t skip;
    char host[256];
    uint16_t port;
    if (strncasecmp(url, "https://", 8) == 0)
        skip = 8;
    else if (strncasecmp(url, "http://", 7) == 0)
        skip = 7;
    else
        return "expected an http:// or https:// URL";
    for (const unsigned char *p = (const unsigned char *)url; *p; p++)
        if (*p <= 0x20 || *p >= 0x7f)
            return "the URL contains a space, control or non-ASCII character";
    const char *auth = url + skip;
    size_t alen = strcspn(auth, "/?#");
    if (memchr(auth, '@', alen) != NULL)
        return "user information (\"user@\") is not allowed in the URL";
    if (alen == 0 || host_normalize(auth, alen, host, sizeof(host), &port) == -1)
        return "the URL has no valid host[:port]";
    bool tls;
    const char *target;
    if (http1_parse_url(url, &tls, host, sizeof(host), &port, &target) != 0)
        return "the URL cannot be called as written (a fragment, or a query without a path?)";
    return NULL;
}

static void policy_callback_free(struct policy_callback *cb)
{
    pc_hosts_free(cb->hosts, cb->n_hosts);
    free(cb->url);
    pc_headers_free(cb->request_headers, cb->n_request_headers);
}

/* Compiles one callback into out (zero-initialised; freed by policy_callback_free). */
static void pc_callback(struct pc *c, const json_t *cb, const char *path,
                        struct policy_callback *out)
{
    static const char *const keys[] = {
        "match_hosts",     "url", "ttl_seconds", "full_request", "request_headers",
        "allow_plaintext", NULL};
    const json_t *v;
    const char *s;
    if (!json_is_object(cb)) {
        pc_err(c, path, "expected a callback object, found %s", policy_json_kind(cb));
        return;
    }
    policy_check_keys(cb, path, keys, c->errs);
    char *hp = xasprintf("%s.match_hosts", path);
    v = pc_field(cb, "match_hosts");
    if (v == NULL)
        pc_err(c, hp, "required: a non-empty array of host patterns");
    else
        pc_hosts(c, v, hp, true, &out->hosts, &out->n_hosts);
    free(hp);

    char *up = xasprintf("%s.url", path);
    v = pc_field(cb, "url");
    if (v == NULL) {
        pc_err(c, up, "required: the callback's http:// or https:// URL");
    } else if (pc_string(c, v, up, true, &s)) {
        const char *why = policy_url_problem(s);
        if (why != NULL)
            pc_err(c, up, "%s", why);
        else
            out->url = xstrdup(s);
    }
    free(up);

    out->ttl_seconds = 300;
    v = pc_field(cb, "ttl_seconds");
    if (v != NULL) {
        char *tp = xasprintf("%s.ttl_seconds", path);
        if (!json_is_integer(v))
            pc_err(c, tp, "expected an integer from 60 to 3600, found %s", policy_json_kind(v));
        else if (json_integer_value(v) < 60 || json_integer_value(v) > 3600)
            pc_err(c, tp, "expected an integer from 60 to 3600, found %" JSON_INTEGER_FORMAT,
                   json_integer_value(v));
        else
            out->ttl_seconds = (unsigned)json_integer_value(v);
        free(tp);
    }
    pc_bool(c, cb, "full_request", path, &out->full_request);
    pc_bool(c, cb, "allow_plaintext", path, &out->allow_plaintext);

    v = pc_field(cb, "request_headers");
    if (v != NULL) {
        char *rp = xasprintf("%s.request_headers", path);
        pc_headers(c, v, rp, false, NULL, 0, &out->request_headers, &out->n_request_headers);
        free(rp);
    }
}

struct policy *policy_new_empty(uint64_t version)
{
    struct policy *p = xcalloc(1, sizeof(*p));
    atomic_init(&p->refs, 1);
    p->version = version;
    return p;
}

/* Frees everything p holds, zeroing secret material. Only policy_unref calls it. */
static void policy_free(struct policy *p)
{
    for (size_t i = 0; i < p->n_rules; i++)
        policy_rule_free(&p->rules[i]);
    free(p->rules);
    for (size_t i = 0; i < p->n_callbacks; i++)
        policy_callback_free(&p->callbacks[i]);
    free(p->callbacks);
    pc_hosts_free(p->no_proxy, p->n_no_proxy);
    pc_hosts_free(p->allow_list, p->n_allow);
    pc_hosts_free(p->deny_list, p->n_deny);
    free(p);
}

struct policy *policy_compile(const json_t *proxy_config, const struct secret_source *secrets,
                              const char *json_path, uint64_t version, struct errlist *errs)
{
    static const char *const keys[] = {"rules", "no_proxy", "callbacks", "access_control", NULL};
    static const char *const ac_keys[] = {"allow_list", "deny_list", NULL};
    struct errlist local = {0};
    struct pc c = {secrets, errs ? errs : &local};
    size_t errs_before = c.errs->n;
    const char *root = (json_path && json_path[0]) ? json_path : "proxy_config";
    const json_t *v;
    char *path = NULL;
    struct policy *p = policy_new_empty(version);

    if (proxy_config == NULL || json_is_null(proxy_config))
        goto out;
    if (!json_is_object(proxy_config)) {
        pc_err(&c, root, "expected an object, found %s", policy_json_kind(proxy_config));
        goto out;
    }
    policy_check_keys(proxy_config, root, keys, c.errs);

    path = xasprintf("%s.rules", root);
    v = pc_field(proxy_config, "rules");
    if (v != NULL && !json_is_array(v)) {
        pc_err(&c, path, "expected an array of rules, found %s", policy_json_kind(v));
    } else if (v != NULL) {
        p->n_rules = json_array_size(v);
        p->rules = xcalloc(p->n_rules, sizeof(*p->rules));
        for (size_t i = 0; i < p->n_rules; i++) {
            char *ip = xasprintf("%s[%zu]", path, i);
            pc_rule(&c, json_array_get(v, i), ip, &p->rules[i]);
            free(ip);
        }
    }
    free(path);

    path = xasprintf("%s.callbacks", root);
    v = pc_field(proxy_config, "callbacks");
    if (v != NULL && !json_is_array(v)) {
        pc_err(&c, path, "expected an array of callbacks, found %s", policy_json_kind(v));
    } else if (v != NULL) {
        p->n_callbacks = json_array_size(v);
        p->callbacks = xcalloc(p->n_callbacks, sizeof(*p->callbacks));
        for (size_t i = 0; i < p->n_callbacks; i++) {
            char *ip = xasprintf("%s[%zu]", path, i);
            pc_callback(&c, json_array_get(v, i), ip, &p->callbacks[i]);
            free(ip);
        }
    }
    free(path);

    path = xasprintf("%s.no_proxy", root);
    v = pc_field(proxy_config, "no_proxy");
    if (v != NULL)
        pc_hosts(&c, v, path, false, &p->no_proxy, &p->n_no_proxy);
    free(path);

    path = xasprintf("%s.access_control", root);
    v = pc_field(proxy_config, "access_control");
    if (v != NULL && !json_is_object(v)) {
        pc_err(&c, path, "expected an object {\"allow_list\", \"deny_list\"}, found %s",
               policy_json_kind(v));
    } else if (v != NULL) {
        policy_check_keys(v, path, ac_keys, c.errs);
        const json_t *list = pc_field(v, "allow_list");
        char *lp = xasprintf("%s.allow_list", path);
        if (list != NULL)
            pc_hosts(&c, list, lp, false, &p->allow_list, &p->n_allow);
        free(lp);
        list = pc_field(v, "deny_list");
        lp = xasprintf("%s.deny_list", path);
        if (list != NULL)
            pc_hosts(&c, list, lp, false, &p->deny_list, &p->n_deny);
        free(lp);
    }
    free(path);

out:
    if (c.errs->n != errs_before) {
        policy_free(p);
        p = NULL;
    }
    errlist_free(&local);
    return p;
}

struct policy *policy_ref(struct policy *p)
{
    atomic_fetch_add_explicit(&p->refs, 1, memory_order_relaxed);
    return p;
}

/* The release/acquire pair makes every thread's last use of p happen before the free. */
void policy_unref(struct policy *p)
{
    if (p == NULL)
        return;
    if (atomic_fetch_sub_explicit(&p->refs, 1, memory_order_release) != 1)
        return;
    atomic_thread_fence(memory_order_acquire);
    policy_free(p);
}

uint64_t policy_version(const struct policy *p)
{
    return p->version;
}

const struct policy_rule *policy_rules(const struct policy *p, size_t *n)
{
    *n = p->n_rules;
    return p->rules;
}

const struct policy_callback *policy_callbacks(const struct policy *p, size_t *n)
{
    *n = p->n_callbacks;
    return p->callbacks;
}

static bool policy_hosts_match(const struct host_pattern *h, size_t n, const char *host,
                               size_t host_len)
{
    for (size_t i = 0; i < n; i++)
        if (host_pattern_match(&h[i], host, host_len))
            return true;
    return false;
}

/* True if one of n patterns is exactly host (not a wildcard that happens to match it). */
static bool names_in(const struct host_pattern *pats, size_t n, const char *host)
{
    for (size_t i = 0; i < n; i++)
        if (pats[i].kind == HOST_PATTERN_EXACT && host_pattern_match(&pats[i], host, strlen(host)))
            return true;
    return false;
}

bool policy_names_host(const struct policy *p, const char *host)
{
    if (names_in(p->allow_list, p->n_allow, host) || names_in(p->no_proxy, p->n_no_proxy, host))
        return true;
    for (size_t i = 0; i < p->n_rules; i++)
        if (p->rules[i].enabled && names_in(p->rules[i].hosts, p->rules[i].n_hosts, host))
            return true;
    for (size_t i = 0; i < p->n_callbacks; i++)
        if (names_in(p->callbacks[i].hosts, p->callbacks[i].n_hosts, host))
            return true;
    return false;
}

void policy_decide_host(const struct policy *p, const char *host, struct policy_host_decision *out)
{
    size_t len = strlen(host);
    out->verdict = POLICY_HOST_INSPECT;
    out->decided_by = NULL;
    if (policy_hosts_match(p->deny_list, p->n_deny, host, len)) {
        out->verdict = POLICY_HOST_DENY;
        out->decided_by = "deny_list";
    } else if (p->n_allow > 0 && !policy_hosts_match(p->allow_list, p->n_allow, host, len)) {
        out->verdict = POLICY_HOST_DENY;
        out->decided_by = "allow_list";
    } else if (policy_hosts_match(p->no_proxy, p->n_no_proxy, host, len)) {
        out->verdict = POLICY_HOST_BYPASS;
        out->decided_by = "no_proxy";
    }
}

static bool policy_paths_match(const struct policy_rule *r, const char *path, size_t path_len)
{
    if (r->n_paths == 0)
        return true;
    for (size_t i = 0; i < r->n_paths; i++)
        if (path_pattern_match(r->paths[i], path, path_len))
            return true;
    return false;
}

void policy_decide_request(const struct policy *p, const char *host, const char *path,
                           size_t path_len, bool upstream_tls, struct policy_request_decision *out)
{
    size_t len = strlen(host);
    bool host_has_rule = false;
    out->action = POLICY_FORWARD;
    out->rule = NULL;
    out->callback = NULL;
    for (size_t i = 0; i < p->n_rules; i++) {
        const struct policy_rule *r = &p->rules[i];
        if (!r->enabled || !policy_hosts_match(r->hosts, r->n_hosts, host, len))
            continue;
        host_has_rule = true;
        if (!policy_paths_match(r, path, path_len))
            continue;
        out->rule = r;
        out->action =
            (upstream_tls || r->allow_plaintext) ? POLICY_INJECT : POLICY_REFUSE_PLAINTEXT;
        return;
    }
    if (host_has_rule)
        return;
    for (size_t i = 0; i < p->n_callbacks; i++) {
        const struct policy_callback *cb = &p->callbacks[i];
        if (!policy_hosts_match(cb->hosts, cb->n_hosts, host, len))
            continue;
        out->callback = cb;
        out->action = POLICY_CALLBACK;
        if (!upstream_tls && !cb->allow_plaintext) {
            out->action = POLICY_REFUSE_PLAINTEXT;
            out->rule = &policy_callback_stand_in;
        }
        return;
    }
}

/* Rewrites one legacy value: "${KEY}" -> "{KEY}". Caller frees. */
static char *policy_upgrade_value(const char *v)
{
    char *out = xmalloc(strlen(v) + 1);
    size_t o = 0;
    for (size_t i = 0; v[i]; i++) {
        if (v[i] == '$' && v[i + 1] == '{')
            continue;
        out[o++] = v[i];
    }
    out[o] = '\0';
    return out;
}

json_t *policy_config_upgrade(const json_t *proxy_config)
{
    json_t *copy = json_deep_copy(proxy_config);
    json_t *rules = json_object_get(copy, "rules");
    json_t *rule;
    size_t i;
    if (copy == NULL)
        abort(); /* jansson only fails here on out-of-memory: the policy in util.h */
    json_array_foreach(rules, i, rule)
    {
        json_t *inject = json_object_get(rule, "inject_headers");
        const char *key;
        json_t *v;
        bool convertible = json_is_object(inject) && json_object_get(rule, "headers") == NULL;
        json_object_foreach(inject, key, v)
        {
            convertible = convertible && json_is_string(v);
        }
        if (!convertible)
            continue;
        json_t *headers = json_array();
        json_object_foreach(inject, key, v)
        {
            const char *s = json_string_value(v);
            bool secret = strstr(s, "${") != NULL;
            char *value = secret ? policy_upgrade_value(s) : xstrdup(s);
            json_array_append_new(headers, json_pack("{s:s, s:s, s:s}", "name", key, "type",
                                                     secret ? "workspace_secret" : "plaintext",
                                                     "value", value));
            free(value);
        }
        json_object_set_new(rule, "headers", headers);
        json_object_del(rule, "inject_headers");
    }
    return copy;
}
