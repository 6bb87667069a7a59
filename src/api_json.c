/* api_json: the pure parts of the control API — request validation, masking of opaque values,
 * the opaque keep-merge of PATCH, template conversion and the JSON shapes of responses. No I/O,
 * no store access: everything here is unit-tested on plain JSON (tests/unit/test_api_json.c). */
#include "api.h"

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "box_runtime.h"
#include "glob.h"
#include "policy.h"
#include "seal.h"

#define JOIN_MAX          4096
#define TTL_MAX_SECONDS   (10 * 365 * 24 * 3600) /* ten years: beyond is surely a typo */
#define VCPUS_MAX         1024
#define QUANTITY_MAX      ((int64_t)1 << 62)
#define IMAGE_MAX         4096
#define ENV_VARS_MAX      1024
#define DEFAULT_HOSTS_MAX 4

/* ---- bodies and errors ------------------------------------------------------------------- */

json_t *api_json_parse_body(const char *data, size_t len, struct errlist *errs)
{
    json_error_t jerr;
    json_t *doc;
    if (len == 0) {
        errlist_add(errs, "body: expected a JSON object, found an empty body");
        return NULL;
    }
    /* Duplicate keys are refused: two "value"s of one header must not mean whichever the
     * parser kept. */
    doc = json_loadb(data, len, JSON_REJECT_DUPLICATES, &jerr);
    if (doc == NULL) {
        /* jerr.text quotes the input near the error ("near '...'"), which may be a secret:
         * report the position only. */
        errlist_add(errs, "body: not valid JSON (line %d, column %d)", jerr.line, jerr.column);
        return NULL;
    }
    if (!json_is_object(doc)) {
        errlist_add(errs, "body: expected a JSON object, found %s", policy_json_kind(doc));
        json_decref(doc);
        return NULL;
    }
    return doc;
}

char *api_json_join(const struct errlist *errs)
{
    size_t len = 0, o = 0;
    char *out;
    if (errs->n == 0)
        return xstrdup("invalid request");
    for (size_t i = 0; i < errs->n; i++)
        len += strlen(errs->msgs[i]) + 2;
    out = xmalloc(len + 1);
    for (size_t i = 0; i < errs->n; i++) {
        size_t m = strlen(errs->msgs[i]);
        if (i > 0) {
            memcpy(out + o, "; ", 2);
            o += 2;
        }
        memcpy(out + o, errs->msgs[i], m);
        o += m;
    }
    out[o] = '\0';
    if (o > JOIN_MAX)
        memcpy(out + JOIN_MAX - 3, "...", 4); /* a detail stays readable */
    return out;
}

/* Walks v for sealed-looking strings; path is v's JSON path. */
static bool check_no_sealed(const json_t *v, const char *path, struct errlist *errs)
{
    bool ok = true;
    if (json_is_string(v)) {
        if (seal_is_sealed_text(json_string_value(v))) {
            errlist_add(errs, "%s: values starting with \"%s\" are reserved for sealed data", path,
                        SEAL_TEXT_PREFIX);
            return false;
        }
    } else if (json_is_object(v)) {
        const char *key;
        json_t *child;
        json_object_foreach((json_t *)v, key, child)
        {
            char *cp = policy_path_key(path, key);
            ok = check_no_sealed(child, cp, errs) && ok;
            free(cp);
        }
    } else if (json_is_array(v)) {
        size_t i;
        json_t *child;
        json_array_foreach(v, i, child)
        {
            char *cp = xasprintf("%s[%zu]", path, i);
            ok = check_no_sealed(child, cp, errs) && ok;
            free(cp);
        }
    }
    return ok;
}

bool api_json_check_no_sealed(const json_t *doc, const char *path, struct errlist *errs)
{
    return check_no_sealed(doc, path, errs);
}

const char *api_json_name_problem(const char *name)
{
    size_t n = strlen(name);
    if (n == 0)
        return "must not be empty";
    if (n > API_BOX_NAME_MAX)
        return "longer than 63 characters";
    for (size_t i = 0; i < n; i++) {
        char c = name[i];
        bool alnum = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9');
        if (i == 0 && !alnum)
            return "must start with a letter or a digit";
        if (!alnum && c != '-' && c != '_' && c != '.')
            return "only letters, digits, '-', '_' and '.' are allowed";
    }
    return NULL;
}

/* ---- opaque values ------------------------------------------------------------------------ */

/* Whether v is an object {"type": "opaque", ...}. */
static bool is_opaque(const json_t *v)
{
    const json_t *t = json_object_get(v, "type");
    return json_is_object(v) && json_is_string(t) && strcmp(json_string_value(t), "opaque") == 0;
}

/* Whether an opaque object carries a value to use (absent and null mean "keep"). */
static bool has_value(const json_t *obj)
{
    const json_t *v = json_object_get(obj, "value");
    return v != NULL && !json_is_null(v);
}

static json_t *mask_value(const json_t *v)
{
    if (json_is_object(v)) {
        json_t *out = json_object();
        bool opaque = is_opaque(v);
        const char *key;
        json_t *child;
        json_object_foreach((json_t *)v, key, child)
        {
            if (opaque && (strcmp(key, "value") == 0 || strcmp(key, "is_set") == 0))
                continue;
            json_object_set_new(out, key, mask_value(child));
        }
        if (opaque)
            json_object_set_new(out, "is_set",
                                json_boolean(json_is_string(json_object_get(v, "value"))));
        return out;
    }
    if (json_is_array(v)) {
        json_t *out = json_array();
        size_t i;
        json_t *child;
        json_array_foreach(v, i, child) json_array_append_new(out, mask_value(child));
        return out;
    }
    if (json_is_string(v) && seal_is_sealed_text(json_string_value(v)))
        return json_null();
    return json_deep_copy(v);
}

json_t *api_json_mask(const json_t *doc)
{
    if (doc == NULL || json_is_null(doc))
        return json_object();
    return mask_value(doc);
}

/* The first element of arr (array of objects) whose string field key equals want (case-
 * insensitively when nocase), or NULL. */
static const json_t *find_by(const json_t *arr, const char *key, const char *want, bool nocase)
{
    size_t i;
    json_t *el;
    if (want == NULL)
        return NULL;
    json_array_foreach(arr, i, el)
    {
        const char *s = json_string_value(json_object_get(el, key));
        if (s == NULL)
            continue;
        if (nocase ? ascii_case_eq(s, strlen(s), want, strlen(want)) : strcmp(s, want) == 0)
            return el;
    }
    return NULL;
}

/* Fills one opaque entry without a value from its stored counterpart old_obj (may be NULL).
 * what names the entry in the error. */
static bool keep_one(json_t *obj, const json_t *old_obj, const char *path, const char *what,
                     struct errlist *errs)
{
    json_object_del(obj, "is_set");
    if (has_value(obj))
        return true;
    const json_t *old_value = json_object_get(old_obj, "value");
    if (is_opaque(old_obj) && json_is_string(old_value)) {
        json_object_set_new(obj, "value", json_deep_copy(old_value));
        return true;
    }
    errlist_add(errs, "%s.value: required: there is no stored opaque value of %s to keep", path,
                what);
    return false;
}

/* The headers of one list (a rule's "headers" or a callback's "request_headers"). */
static bool keep_headers(json_t *headers, const json_t *old_headers, const char *path,
                         const char *owner, struct errlist *errs)
{
    bool ok = true;
    size_t j;
    json_t *h;
    char q[80];
    json_array_foreach(headers, j, h)
    {
        if (!is_opaque(h))
            continue;
        const char *hname = json_string_value(json_object_get(h, "name"));
        char *hp = xasprintf("%s[%zu]", path, j);
        char *what =
            xasprintf("header %s of %s", policy_quote(hname ? hname : "", q, sizeof(q)), owner);
        const json_t *old = NULL;
        /* Only an opaque stored header can lend its value: a plaintext one would turn into an
         * "opaque" one carrying a value the user never sent as opaque. */
        if (hname != NULL) {
            size_t k;
            json_t *oh;
            json_array_foreach(old_headers, k, oh)
            {
                const char *on = json_string_value(json_object_get(oh, "name"));
                if (on != NULL && is_opaque(oh) &&
                    ascii_case_eq(on, strlen(on), hname, strlen(hname))) {
                    old = oh;
                    break;
                }
            }
        }
        ok = keep_one(h, old, hp, what, errs) && ok;
        free(what);
        free(hp);
    }
    return ok;
}

/* The type of a rule as stored ("headers" when absent). */
static const char *rule_type(const json_t *rule)
{
    const char *t = json_string_value(json_object_get(rule, "type"));
    return t != NULL ? t : "headers";
}

bool api_json_opaque_keep(json_t *cfg, const json_t *old, struct errlist *errs)
{
    static const char *const aws_keys[] = {"access_key_id", "secret_access_key", "session_token",
                                           NULL};
    static const char *const gcp_keys[] = {"service_account_json", NULL};
    bool ok = true;
    size_t i;
    json_t *rule, *cb;
    char q[80];
    const json_t *old_rules = json_object_get(old, "rules");
    const json_t *old_cbs = json_object_get(old, "callbacks");

    json_array_foreach(json_object_get(cfg, "rules"), i, rule)
    {
        if (!json_is_object(rule))
            continue;
        const char *rname = json_string_value(json_object_get(rule, "name"));
        const json_t *orule = find_by(old_rules, "name", rname, false);
        char *owner = xasprintf("rule %s", policy_quote(rname ? rname : "", q, sizeof(q)));
        char *hp = xasprintf("proxy_config.rules[%zu].headers", i);
        ok = keep_headers(json_object_get(rule, "headers"), json_object_get(orule, "headers"), hp,
                          owner, errs) &&
             ok;
        free(hp);
        /* Provider credentials: only from a stored rule of the same type. */
        if (orule != NULL && strcmp(rule_type(orule), rule_type(rule)) != 0)
            orule = NULL;
        for (int p = 0; p < 2; p++) {
            const char *prov = p == 0 ? "aws" : "gcp";
            const char *const *keys = p == 0 ? aws_keys : gcp_keys;
            json_t *pobj = json_object_get(rule, prov);
            const json_t *opobj = json_object_get(orule, prov);
            if (!json_is_object(pobj))
                continue;
            for (size_t k = 0; keys[k] != NULL; k++) {
                json_t *cred = json_object_get(pobj, keys[k]);
                if (!is_opaque(cred))
                    continue;
                char *cp = xasprintf("proxy_config.rules[%zu].%s.%s", i, prov, keys[k]);
                char *what = xasprintf("%s.%s of %s", prov, keys[k], owner);
                ok = keep_one(cred, json_object_get(opobj, keys[k]), cp, what, errs) && ok;
                free(what);
                free(cp);
            }
        }
        free(owner);
    }
    json_array_foreach(json_object_get(cfg, "callbacks"), i, cb)
    {
        if (!json_is_object(cb))
            continue;
        char *owner = xasprintf("callbacks[%zu]", i);
        char *hp = xasprintf("proxy_config.callbacks[%zu].request_headers", i);
        ok = keep_headers(json_object_get(cb, "request_headers"),
                          json_object_get(json_array_get(old_cbs, i), "request_headers"), hp, owner,
                          errs) &&
             ok;
        free(hp);
        free(owner);
    }
    return ok;
}

int api_json_seal_opaque(json_t *doc, api_seal_fn seal, void *ctx)
{
    int rc = 0;
    if (json_is_object(doc)) {
        const char *key;
        json_t *child;
        if (is_opaque(doc)) {
            const char *v = json_string_value(json_object_get(doc, "value"));
            if (v != NULL && !seal_is_sealed_text(v)) {
                char *sealed = NULL;
                rc = seal(ctx, v, &sealed);
                if (rc != 0)
                    return rc;
                json_object_set_new(doc, "value", json_string(sealed));
                free(sealed);
            }
        }
        json_object_foreach(doc, key, child)
        {
            if ((rc = api_json_seal_opaque(child, seal, ctx)) != 0)
                return rc;
        }
    } else if (json_is_array(doc)) {
        size_t i;
        json_t *child;
        json_array_foreach(doc, i, child)
        {
            if ((rc = api_json_seal_opaque(child, seal, ctx)) != 0)
                return rc;
        }
    }
    return 0;
}

/* ---- quantities and times ----------------------------------------------------------------- */

/* Parses "digits[.digits]" at s into an integer part and a fraction (numerator, denominator
 * 10^k); returns the number of characters used, 0 if none. */
static size_t parse_decimal(const char *s, int64_t *whole, int64_t *frac, int64_t *den)
{
    size_t i = 0;
    *whole = 0;
    *frac = 0;
    *den = 1;
    while (s[i] >= '0' && s[i] <= '9') {
        if (*whole > QUANTITY_MAX / 10)
            return 0;
        *whole = *whole * 10 + (s[i] - '0');
        i++;
    }
    if (i == 0)
        return 0;
    if (s[i] == '.') {
        size_t j = i + 1;
        while (s[j] >= '0' && s[j] <= '9') {
            if (*den < 1000000000) { /* digits past 10^-9 cannot matter here */
                *frac = *frac * 10 + (s[j] - '0');
                *den *= 10;
            }
            j++;
        }
        if (j == i + 1)
            return 0;
        i = j;
    }
    return i;
}

/* whole.frac * mult, rounded down; -1 on overflow. */
static int64_t scale(int64_t whole, int64_t frac, int64_t den, int64_t mult)
{
    if (whole != 0 && mult > QUANTITY_MAX / whole)
        return -1;
    int64_t v = whole * mult;
    /* frac/den < 1 and den <= 10^9: split mult so no product exceeds 10^18. */
    int64_t add = frac * (mult / den) + frac * (mult % den) / den;
    if (v > QUANTITY_MAX - add)
        return -1;
    return v + add;
}

int api_json_parse_cpu(const char *s, int64_t *millicores)
{
    int64_t whole, frac, den, v;
    size_t n = parse_decimal(s, &whole, &frac, &den);
    if (n == 0)
        return -1;
    if (strcmp(s + n, "m") == 0) {
        if (den != 1)
            return -1; /* "1.5m": no fractions of a millicore */
        v = whole;
    } else if (s[n] == '\0') {
        v = scale(whole, frac, den, 1000);
    } else {
        return -1;
    }
    if (v < 0 || v > (int64_t)VCPUS_MAX * 1000)
        return -1;
    *millicores = v;
    return 0;
}

int api_json_parse_bytes(const char *s, int64_t *bytes)
{
    static const struct {
        const char *suffix;
        int64_t mult;
    } units[] = {
        {"", 1},
        {"k", 1000LL},
        {"K", 1000LL},
        {"M", 1000LL * 1000},
        {"G", 1000LL * 1000 * 1000},
        {"T", 1000LL * 1000 * 1000 * 1000},
        {"P", 1000LL * 1000 * 1000 * 1000 * 1000},
        {"Ki", 1LL << 10},
        {"Mi", 1LL << 20},
        {"Gi", 1LL << 30},
        {"Ti", 1LL << 40},
        {"Pi", 1LL << 50},
    };
    int64_t whole, frac, den;
    size_t n = parse_decimal(s, &whole, &frac, &den);
    if (n == 0)
        return -1;
    for (size_t i = 0; i < ARRAY_LEN(units); i++) {
        if (strcmp(s + n, units[i].suffix) != 0)
            continue;
        int64_t v = scale(whole, frac, den, units[i].mult);
        if (v < 0)
            return -1;
        *bytes = v;
        return 0;
    }
    return -1;
}

void api_json_time(int64_t t, char out[32])
{
    struct tm tm;
    time_t tt = (time_t)t;
    if (gmtime_r(&tt, &tm) == NULL || strftime(out, 32, "%Y-%m-%dT%H:%M:%SZ", &tm) == 0)
        snprintf(out, 32, "1970-01-01T00:00:00Z");
}

/* ---- field validators --------------------------------------------------------------------- */

/* A non-negative integer field up to max; absent or null leaves *has false. */
static bool int_field(const json_t *body, const char *key, int64_t max, bool minute_multiple,
                      bool *has, int64_t *out, struct errlist *errs)
{
    const json_t *v = json_object_get(body, key);
    *has = false;
    if (v == NULL || json_is_null(v))
        return true;
    if (!json_is_integer(v)) {
        errlist_add(errs, "%s: expected a non-negative integer, found %s", key,
                    policy_json_kind(v));
        return false;
    }
    json_int_t n = json_integer_value(v);
    if (n < 0 || n > max) {
        errlist_add(errs,
                    "%s: expected an integer from 0 to %" PRId64 ", found %" JSON_INTEGER_FORMAT,
                    key, max, n);
        return false;
    }
    if (minute_multiple && n % 60 != 0) {
        errlist_add(
            errs, "%s: must be a multiple of 60 seconds (0 disables), found %" JSON_INTEGER_FORMAT,
            key, n);
        return false;
    }
    *has = true;
    *out = (int64_t)n;
    return true;
}

/* An optional string field (null = absent); *out NULL when absent. */
static bool string_field(const json_t *body, const char *key, size_t max, const char **out,
                         struct errlist *errs)
{
    const json_t *v = json_object_get(body, key);
    *out = NULL;
    if (v == NULL || json_is_null(v))
        return true;
    if (!json_is_string(v)) {
        errlist_add(errs, "%s: expected a string, found %s", key, policy_json_kind(v));
        return false;
    }
    if (json_string_length(v) == 0 || json_string_length(v) > max ||
        strlen(json_string_value(v)) != json_string_length(v)) {
        errlist_add(errs, "%s: expected a non-empty string of at most %zu bytes", key, max);
        return false;
    }
    *out = json_string_value(v);
    return true;
}

/* A box/template name field. */
static bool name_field(const json_t *body, const char *key, bool required, const char **out,
                       struct errlist *errs)
{
    const json_t *v = json_object_get(body, key);
    const char *why;
    *out = NULL;
    if (v == NULL || json_is_null(v)) {
        if (required)
            errlist_add(errs, "%s: required", key);
        return !required;
    }
    if (!json_is_string(v)) {
        errlist_add(errs, "%s: expected a string, found %s", key, policy_json_kind(v));
        return false;
    }
    if (strlen(json_string_value(v)) != json_string_length(v))
        why = "contains a NUL character";
    else
        why = api_json_name_problem(json_string_value(v));
    if (why != NULL) {
        errlist_add(errs, "%s: %s", key, why);
        return false;
    }
    *out = json_string_value(v);
    return true;
}

/* env_vars: an object of environment variable names to string values. */
static bool env_vars_field(const json_t *v, const char *path, struct errlist *errs)
{
    const char *key;
    json_t *val;
    bool ok = true;
    char q[80];
    if (!json_is_object(v)) {
        errlist_add(errs, "%s: expected an object of names to string values, found %s", path,
                    policy_json_kind(v));
        return false;
    }
    if (json_object_size(v) > ENV_VARS_MAX) {
        errlist_add(errs, "%s: more than %d variables", path, ENV_VARS_MAX);
        return false;
    }
    json_object_foreach((json_t *)v, key, val)
    {
        char *kp = policy_path_key(path, key);
        if (!policy_valid_secret_name(key)) {
            errlist_add(errs,
                        "%s: invalid variable name %s: letters, digits and '_', not "
                        "starting with a digit",
                        kp, policy_quote(key, q, sizeof(q)));
            ok = false;
        } else if (!json_is_string(val) ||
                   strlen(json_string_value(val)) != json_string_length(val)) {
            errlist_add(errs, "%s: expected a string without NUL characters, found %s", kp,
                        policy_json_kind(val));
            ok = false;
        }
        free(kp);
    }
    return ok;
}

bool api_json_box_request(const json_t *body, bool create, struct api_box_req *out,
                          struct errlist *errs)
{
    static const char *const create_only[] = {
        "template_name", "snapshot_name",  "snapshot",  "snapshot_id",       "image",
        "vcpus",         "cpu_millicores", "mem_bytes", "fs_capacity_bytes", NULL};
    bool ok = true, has;
    int64_t n;
    const char *s;
    memset(out, 0, sizeof(*out));

    ok = name_field(body, "name", false, &out->name, errs) && ok;

    if (!create) {
        for (size_t i = 0; create_only[i] != NULL; i++) {
            const json_t *v = json_object_get(body, create_only[i]);
            if (v != NULL && !json_is_null(v)) {
                errlist_add(errs, "%s: cannot be changed after creation", create_only[i]);
                ok = false;
            }
        }
    } else {
        /* The template (hosted: snapshot) a box is made from, by name or id; at most one. */
        static const char *const tkeys[] = {"template_name", "snapshot_name", "snapshot", NULL};
        int given = 0;
        for (size_t i = 0; tkeys[i] != NULL; i++) {
            const json_t *v = json_object_get(body, tkeys[i]);
            if (v == NULL || json_is_null(v))
                continue;
            given++;
            if (name_field(body, tkeys[i], false, &s, errs))
                out->template_name = s;
            else
                ok = false;
        }
        ok = string_field(body, "snapshot_id", STORE_ID_LEN, &out->template_id, errs) && ok;
        if (given + (out->template_id != NULL) > 1) {
            errlist_add(errs, "template_name: give at most one of template_name, snapshot_name, "
                              "snapshot and snapshot_id");
            ok = false;
        }
        ok = string_field(body, "image", IMAGE_MAX, &out->image, errs) && ok;

        bool has_vcpus, has_milli;
        int64_t vcpus = 0, milli = 0;
        ok = int_field(body, "vcpus", VCPUS_MAX, false, &has_vcpus, &vcpus, errs) && ok;
        ok = int_field(body, "cpu_millicores", (int64_t)VCPUS_MAX * 1000, false, &has_milli, &milli,
                       errs) &&
             ok;
        if (has_vcpus && has_milli && vcpus * 1000 != milli) {
            errlist_add(errs, "cpu_millicores: disagrees with vcpus (give one of them)");
            ok = false;
        }
        out->has_cpu = has_vcpus || has_milli;
        out->cpu_millicores = has_milli ? milli : vcpus * 1000;
        ok = int_field(body, "mem_bytes", QUANTITY_MAX, false, &out->has_mem, &out->mem_bytes,
                       errs) &&
             ok;
        ok = int_field(body, "fs_capacity_bytes", QUANTITY_MAX, false, &out->has_fs,
                       &out->fs_capacity_bytes, errs) &&
             ok;

        const json_t *w = json_object_get(body, "wait_for_ready");
        if (w != NULL && !json_is_null(w) && !json_is_boolean(w)) {
            errlist_add(errs, "wait_for_ready: expected true or false, found %s",
                        policy_json_kind(w));
            ok = false;
        }
        const json_t *t = json_object_get(body, "timeout");
        if (t != NULL && !json_is_null(t) && (!json_is_number(t) || json_number_value(t) < 0)) {
            errlist_add(errs, "timeout: expected a non-negative number of seconds");
            ok = false;
        }
        const json_t *m = json_object_get(body, "mount_config");
        if (m != NULL && !json_is_null(m)) {
            errlist_add(errs, "mount_config: not supported by authproxy (give provider "
                              "credentials as proxy_config rules)");
            ok = false;
        }
    }

    ok = int_field(body, "idle_ttl_seconds", TTL_MAX_SECONDS, true, &out->has_idle_ttl,
                   &out->idle_ttl_seconds, errs) &&
         ok;
    ok = int_field(body, "ttl_seconds", TTL_MAX_SECONDS, true, &out->has_ttl, &out->ttl_seconds,
                   errs) &&
         ok;
    ok = int_field(body, "delete_after_stop_seconds", TTL_MAX_SECONDS, true, &has, &n, errs) && ok;

    const json_t *pc = json_object_get(body, "proxy_config");
    if (pc != NULL && !json_is_object(pc) && !json_is_null(pc)) {
        errlist_add(errs, "proxy_config: expected an object, found %s", policy_json_kind(pc));
        ok = false;
    } else if (pc != NULL && (!create || !json_is_null(pc))) {
        out->proxy_config = pc;
    }

    const json_t *env = json_object_get(body, "env_vars");
    if (env != NULL && !json_is_null(env)) {
        if (env_vars_field(env, "env_vars", errs))
            out->env_vars = env;
        else
            ok = false;
    }
    return ok;
}

/* ---- execute ------------------------------------------------------------------------------- */

#define EXEC_COMMAND_MAX (256u << 10)
#define EXEC_PATH_MAX    4096

/* An optional absolute path at body[key] (path names it in messages); NULL when absent. */
static bool abs_path_field(const json_t *body, const char *key, const char *path, const char **out,
                           struct errlist *errs)
{
    const json_t *v = json_object_get(body, key);
    *out = NULL;
    if (v == NULL || json_is_null(v))
        return true;
    if (!json_is_string(v) || strlen(json_string_value(v)) != json_string_length(v) ||
        json_string_value(v)[0] != '/' || json_string_length(v) > EXEC_PATH_MAX) {
        errlist_add(errs, "%s: expected an absolute path (a string starting with '/')", path);
        return false;
    }
    *out = json_string_value(v);
    return true;
}

bool api_json_exec_request(const json_t *body, struct api_exec_req *out, struct errlist *errs)
{
    bool ok = true;
    const json_t *v;
    const char *cwd = NULL, *work_dir = NULL;
    memset(out, 0, sizeof(*out));
    out->shell = API_EXEC_SHELL_DEFAULT;
    out->timeout_s = API_EXEC_TIMEOUT_DEFAULT;

    v = json_object_get(body, "command");
    if (v == NULL || json_is_null(v)) {
        errlist_add(errs, "command: required");
        ok = false;
    } else if (!json_is_string(v) || json_string_length(v) == 0 ||
               strlen(json_string_value(v)) != json_string_length(v) ||
               json_string_length(v) > EXEC_COMMAND_MAX) {
        errlist_add(errs,
                    "command: expected a non-empty string without NUL characters, of at "
                    "most %u bytes",
                    EXEC_COMMAND_MAX);
        ok = false;
    } else {
        out->command = json_string_value(v);
    }
    v = json_object_get(body, "timeout");
    if (v != NULL && !json_is_null(v)) {
        double t = json_is_number(v) ? json_number_value(v) : -1;
        if (!(t > 0 && t <= API_EXEC_TIMEOUT_MAX)) {
            errlist_add(errs, "timeout: expected a number of seconds above 0 and at most %d",
                        API_EXEC_TIMEOUT_MAX);
            ok = false;
        } else {
            out->timeout_s = t;
        }
    }
    const char *shell = NULL;
    ok = abs_path_field(body, "shell", "shell", &shell, errs) && ok;
    if (shell != NULL)
        out->shell = shell;
    ok = abs_path_field(body, "cwd", "cwd", &cwd, errs) && ok;
    const json_t *env = json_object_get(body, "env");
    if (env != NULL && !json_is_null(env)) {
        if (env_vars_field(env, "env", errs))
            out->env = env;
        else
            ok = false;
    }
    /* The newer spelling (hosted SDK RunConfig): env_vars and work_dir; user is not ours to
     * choose (commands run unprivileged). */
    const json_t *rc = json_object_get(body, "run_config");
    if (rc != NULL && !json_is_null(rc)) {
        if (!json_is_object(rc)) {
            errlist_add(errs, "run_config: expected an object, found %s", policy_json_kind(rc));
            return false;
        }
        if ((env != NULL && !json_is_null(env)) || cwd != NULL) {
            errlist_add(errs, "run_config: cannot be combined with env or cwd (give "
                              "run_config.env_vars and run_config.work_dir)");
            ok = false;
        }
        const json_t *u = json_object_get(rc, "user");
        if (u != NULL && !json_is_null(u)) {
            errlist_add(errs, "run_config.user: not supported (commands run as an unprivileged "
                              "user)");
            ok = false;
        }
        ok = abs_path_field(rc, "work_dir", "run_config.work_dir", &work_dir, errs) && ok;
        const json_t *rce = json_object_get(rc, "env_vars");
        if (rce != NULL && !json_is_null(rce)) {
            if (env_vars_field(rce, "run_config.env_vars", errs))
                out->env = rce;
            else
                ok = false;
        }
    }
    out->cwd = cwd != NULL ? cwd : work_dir;
    return ok;
}

json_t *api_json_text(const char *buf, size_t len)
{
    const unsigned char *p = (const unsigned char *)buf;
    char *clean = xmalloc(len * 3 + 1); /* each invalid byte grows to 3 (U+FFFD) at most */
    size_t o = 0;
    for (size_t i = 0; i < len;) {
        size_t k = utf8_decode(p + i, len - i, NULL);
        if (k == 0) {
            memcpy(clean + o, "\xef\xbf\xbd", 3);
            o += 3;
            i++;
        } else {
            memcpy(clean + o, p + i, k);
            o += k;
            i += k;
        }
    }
    json_t *s = json_stringn(clean, o);
    free(clean);
    if (s == NULL)
        abort(); /* valid UTF-8 by construction: only out of memory fails here (util.h) */
    return s;
}

json_t *api_json_exec_result(const struct box_exec_result *r)
{
    json_t *o = json_object();
    json_object_set_new(o, "stdout", api_json_text(r->out, r->out_len));
    json_object_set_new(o, "stderr", api_json_text(r->err, r->err_len));
    json_object_set_new(o, "exit_code", json_integer(r->exit_code));
    json_object_set_new(o, "timed_out", json_boolean(r->timed_out));
    json_object_set_new(o, "stdout_truncated", json_boolean(r->out_truncated));
    json_object_set_new(o, "stderr_truncated", json_boolean(r->err_truncated));
    json_object_set_new(o, "duration_ms", json_integer((json_int_t)r->duration_ms));
    return o;
}

/* ---- templates ----------------------------------------------------------------------------- */

json_t *api_json_template_body(const json_t *body, const char **name, struct errlist *errs)
{
    static const char *const res_keys[] = {"cpu", "memory", "storage", NULL};
    bool ok = true, has;
    int64_t n;
    const char *image;
    json_t *out = json_object();

    ok = name_field(body, "name", true, name, errs) && ok;
    ok = string_field(body, "image", IMAGE_MAX, &image, errs) && ok;
    if (image != NULL)
        json_object_set_new(out, "image", json_string(image));

    const json_t *res = json_object_get(body, "resources");
    if (res != NULL && !json_is_null(res)) {
        if (!json_is_object(res)) {
            errlist_add(errs,
                        "resources: expected an object {\"cpu\", \"memory\", \"storage\"}, "
                        "found %s",
                        policy_json_kind(res));
            ok = false;
        } else if (!policy_check_keys(res, "resources", res_keys, errs)) {
            ok = false;
        } else {
            json_t *r = json_object();
            for (size_t i = 0; res_keys[i] != NULL; i++) {
                const json_t *v = json_object_get(res, res_keys[i]);
                char buf[32];
                const char *s = json_string_value(v);
                if (v == NULL || json_is_null(v))
                    continue;
                if (json_is_integer(v)) { /* {"cpu": 1}: a plain number is a count */
                    snprintf(buf, sizeof(buf), "%" JSON_INTEGER_FORMAT, json_integer_value(v));
                    s = buf;
                }
                int rc = s == NULL ? -1
                         : i == 0  ? api_json_parse_cpu(s, &n)
                                   : api_json_parse_bytes(s, &n);
                if (rc != 0) {
                    errlist_add(errs,
                                i == 0 ? "resources.cpu: expected a CPU quantity such as \"500m\" "
                                         "or \"2\" (at most 1024 CPUs)"
                                       : "resources.%s: expected a byte quantity such as "
                                         "\"512Mi\" or \"2Gi\"",
                                res_keys[i]);
                    ok = false;
                    continue;
                }
                json_object_set_new(r, res_keys[i], json_string(s));
            }
            json_object_set_new(out, "resources", r);
        }
    }
    const char *const ints[] = {"vcpus", "cpu_millicores", "mem_bytes", "fs_capacity_bytes"};
    const int64_t maxes[] = {VCPUS_MAX, (int64_t)VCPUS_MAX * 1000, QUANTITY_MAX, QUANTITY_MAX};
    for (size_t i = 0; i < ARRAY_LEN(ints); i++) {
        if (!int_field(body, ints[i], maxes[i], false, &has, &n, errs))
            ok = false;
        else if (has)
            json_object_set_new(out, ints[i], json_integer(n));
    }

    const json_t *vm = json_object_get(body, "volume_mounts");
    if (vm != NULL && !json_is_null(vm) && !(json_is_array(vm) && json_array_size(vm) == 0)) {
        errlist_add(errs, "volume_mounts: volumes are not supported by authproxy");
        ok = false;
    }

    const json_t *env = json_object_get(body, "env_vars");
    if (env != NULL && !json_is_null(env)) {
        if (env_vars_field(env, "env_vars", errs))
            json_object_set_new(out, "env_vars", json_deep_copy(env));
        else
            ok = false;
    }

    const json_t *pc = json_object_get(body, "proxy_config");
    if (pc != NULL && !json_is_null(pc)) {
        if (!json_is_object(pc)) {
            errlist_add(errs, "proxy_config: expected an object, found %s", policy_json_kind(pc));
            ok = false;
        } else {
            /* Legacy "inject_headers" / "${KEY}" becomes the current "headers" format here, so
             * what is stored and returned is the current format (SPEC §2). */
            json_object_set_new(out, "proxy_config", policy_config_upgrade(pc));
        }
    }
    if (!ok) {
        json_decref(out);
        return NULL;
    }
    return out;
}

void api_json_template_resources(const json_t *tbody, int64_t *cpu_millicores, int64_t *mem_bytes,
                                 int64_t *fs_capacity_bytes)
{
    const json_t *res = json_object_get(tbody, "resources");
    const char *s;
    *cpu_millicores = *mem_bytes = *fs_capacity_bytes = 0;
    if ((s = json_string_value(json_object_get(res, "cpu"))) == NULL ||
        api_json_parse_cpu(s, cpu_millicores) != 0) {
        *cpu_millicores = json_integer_value(json_object_get(tbody, "cpu_millicores"));
        if (*cpu_millicores == 0)
            *cpu_millicores = json_integer_value(json_object_get(tbody, "vcpus")) * 1000;
    }
    if ((s = json_string_value(json_object_get(res, "memory"))) == NULL ||
        api_json_parse_bytes(s, mem_bytes) != 0)
        *mem_bytes = json_integer_value(json_object_get(tbody, "mem_bytes"));
    if ((s = json_string_value(json_object_get(res, "storage"))) == NULL ||
        api_json_parse_bytes(s, fs_capacity_bytes) != 0)
        *fs_capacity_bytes = json_integer_value(json_object_get(tbody, "fs_capacity_bytes"));
}

/* ---- responses ----------------------------------------------------------------------------- */

static json_t *time_json(int64_t t)
{
    char buf[32];
    api_json_time(t, buf);
    return json_string(buf);
}

/* A positive quantity, or null for "not set" (0 in the store). */
static json_t *quantity_json(int64_t v)
{
    return v > 0 ? json_integer(v) : json_null();
}

/* Parses stored JSON text that the store validated; an unreadable document (which the store
 * should never hand out) shows as an empty object rather than failing the whole response. */
static json_t *stored_doc(const char *text)
{
    json_t *doc = text != NULL ? json_loads(text, 0, NULL) : NULL;
    return doc != NULL ? doc : json_object();
}

json_t *api_json_box(const struct store_box *b, const char *dataplane_base)
{
    json_t *o = json_object();
    json_t *pc = stored_doc(b->proxy_config);
    json_t *env = stored_doc(b->env_vars);
    json_object_set_new(o, "id", json_string(b->id));
    json_object_set_new(o, "name", json_string(b->name));
    json_object_set_new(o, "status", json_string(b->status ? b->status : "ready"));
    json_object_set_new(o, "status_message", json_null());
    json_object_set_new(o, "template_name",
                        b->template_name ? json_string(b->template_name) : json_null());
    json_object_set_new(o, "image", b->image ? json_string(b->image) : json_null());
    if (dataplane_base != NULL)
        json_object_set_new(o, "dataplane_url", json_sprintf("%s/%s", dataplane_base, b->id));
    else
        json_object_set_new(o, "dataplane_url", json_null());
    json_object_set_new(o, "proxy_config", api_json_mask(pc));
    json_object_set_new(o, "env_vars", mask_value(env));
    if (b->cpu_millicores > 0 && b->cpu_millicores % 1000 == 0)
        json_object_set_new(o, "vcpus", json_integer(b->cpu_millicores / 1000));
    else if (b->cpu_millicores > 0)
        json_object_set_new(o, "vcpus", json_real((double)b->cpu_millicores / 1000.0));
    else
        json_object_set_new(o, "vcpus", json_null());
    json_object_set_new(o, "cpu_millicores", quantity_json(b->cpu_millicores));
    json_object_set_new(o, "mem_bytes", quantity_json(b->mem_bytes));
    json_object_set_new(o, "fs_capacity_bytes", quantity_json(b->fs_capacity_bytes));
    json_object_set_new(o, "idle_ttl_seconds", json_integer(b->idle_ttl_seconds));
    json_object_set_new(o, "ttl_seconds", json_integer(b->ttl_seconds));
    json_object_set_new(o, "revision", json_integer(b->revision));
    json_object_set_new(o, "created_at", time_json(b->created_at));
    json_object_set_new(o, "updated_at", time_json(b->updated_at));
    json_decref(pc);
    json_decref(env);
    return o;
}

json_t *api_json_template(const struct store_template *t, const json_t *tbody)
{
    static const char *const copied[] = {"vcpus", "cpu_millicores", "mem_bytes",
                                         "fs_capacity_bytes", NULL};
    json_t *o = json_object();
    const json_t *v;
    json_object_set_new(o, "id", json_string(t->id));
    json_object_set_new(o, "name", json_string(t->name));
    v = json_object_get(tbody, "image");
    json_object_set_new(o, "image", v ? json_deep_copy(v) : json_null());
    v = json_object_get(tbody, "resources");
    json_object_set_new(o, "resources", v ? json_deep_copy(v) : json_object());
    for (size_t i = 0; copied[i] != NULL; i++)
        if ((v = json_object_get(tbody, copied[i])) != NULL)
            json_object_set_new(o, copied[i], json_deep_copy(v));
    json_object_set_new(o, "proxy_config", api_json_mask(json_object_get(tbody, "proxy_config")));
    v = json_object_get(tbody, "env_vars");
    json_object_set_new(o, "env_vars", v ? mask_value(v) : json_object());
    json_object_set_new(o, "volume_mounts", json_array());
    json_object_set_new(o, "created_at", time_json(t->created_at));
    json_object_set_new(o, "updated_at", time_json(t->updated_at));
    return o;
}

/* ---- secrets ------------------------------------------------------------------------------- */

const char *api_json_secret_key_problem(const char *key)
{
    if (key[0] == '\0')
        return "must not be empty";
    if (strlen(key) > STORE_NAME_MAX)
        return "longer than 255 characters";
    if (!policy_valid_secret_name(key))
        return "invalid secret name: letters, digits and '_', not starting with a digit";
    return NULL;
}

bool api_json_check_configs(const json_t *configs, const char *path, struct errlist *errs)
{
    static const char *const keys[] = {"host", NULL};
    bool ok = true;
    size_t i;
    json_t *item;
    char q[80];
    if (!json_is_array(configs) || json_array_size(configs) == 0) {
        errlist_add(errs,
                    "%s: expected a non-empty array of {\"host\": \"...\"} (use [{\"host\": "
                    "\"*\"}] for no restriction, or null for the default), found %s",
                    path, json_is_array(configs) ? "an empty array" : policy_json_kind(configs));
        return false;
    }
    json_array_foreach(configs, i, item)
    {
        char *ip = xasprintf("%s[%zu]", path, i);
        const json_t *host = json_object_get(item, "host");
        struct host_pattern hp;
        const char *why;
        if (!json_is_object(item)) {
            errlist_add(errs, "%s: expected an object {\"host\": \"...\"}, found %s", ip,
                        policy_json_kind(item));
            ok = false;
        } else if (!policy_check_keys(item, ip, keys, errs)) {
            ok = false;
        } else if (!json_is_string(host)) {
            errlist_add(errs, "%s.host: expected a host pattern string, found %s", ip,
                        policy_json_kind(host));
            ok = false;
        } else if (host_pattern_compile(json_string_value(host), &hp, &why) == -1) {
            errlist_add(errs, "%s.host: invalid host pattern %s: %s", ip,
                        policy_quote(json_string_value(host), q, sizeof(q)), why);
            ok = false;
        } else {
            host_pattern_free(&hp);
        }
        free(ip);
    }
    return ok;
}

bool api_json_secret_request(const json_t *body, struct api_secret_req *out, struct errlist *errs)
{
    static const char *const keys[] = {"value", "configs", NULL};
    bool ok;
    memset(out, 0, sizeof(*out));
    /* Strict: a misspelt "configs" would otherwise silently drop a host restriction. */
    ok = policy_check_keys(body, "body", keys, errs);
    const json_t *v = json_object_get(body, "value");
    if (v != NULL && !json_is_null(v)) {
        if (!json_is_string(v)) {
            errlist_add(errs, "value: expected a string, found %s", policy_json_kind(v));
            ok = false;
        } else if (json_string_length(v) == 0) {
            errlist_add(errs, "value: must not be empty");
            ok = false;
        } else if (strlen(json_string_value(v)) != json_string_length(v)) {
            errlist_add(errs, "value: contains a NUL character");
            ok = false;
        } else if (json_string_length(v) > SEAL_MAX_PLAINTEXT) {
            errlist_add(errs, "value: longer than %u bytes", SEAL_MAX_PLAINTEXT);
            ok = false;
        } else {
            out->value = json_string_value(v);
        }
    }
    const json_t *c = json_object_get(body, "configs");
    if (c != NULL) {
        out->has_configs = true;
        if (!json_is_null(c)) {
            if (api_json_check_configs(c, "configs", errs))
                out->configs = c;
            else
                ok = false;
        }
    }
    return ok;
}

/* The compiled patterns of a binding (configs array, or the default of name); *n == 0 means
 * unrestricted. Patterns that do not compile are skipped (callers validated them). */
static struct host_pattern *binding_patterns(const char *name, const json_t *configs, size_t *n)
{
    const char *def[DEFAULT_HOSTS_MAX];
    const char *why;
    size_t cap = json_is_array(configs) ? json_array_size(configs)
                                        : policy_default_secret_hosts(name, def, ARRAY_LEN(def));
    struct host_pattern *p = xcalloc(cap + 1, sizeof(*p));
    *n = 0;
    for (size_t i = 0; i < cap; i++) {
        const char *src =
            json_is_array(configs)
                ? json_string_value(json_object_get(json_array_get(configs, i), "host"))
                : def[i];
        if (src != NULL && host_pattern_compile(src, &p[*n], &why) == 0)
            (*n)++;
    }
    return p;
}

static void binding_free(struct host_pattern *p, size_t n)
{
    for (size_t i = 0; i < n; i++)
        host_pattern_free(&p[i]);
    free(p);
}

bool api_json_binding_within(const char *name, const json_t *inner, const json_t *outer)
{
    size_t ni, no;
    struct host_pattern *pi = binding_patterns(name, inner, &ni);
    struct host_pattern *po = binding_patterns(name, outer, &no);
    bool ok =
        no == 0 || ni > 0; /* unrestricted outer allows anything; inner unrestricted isn't within */
    for (size_t i = 0; i < ni && ok && no > 0; i++) {
        bool covered = false;
        for (size_t j = 0; j < no && !covered; j++)
            covered = host_pattern_within(&pi[i], &po[j]);
        ok = covered;
    }
    binding_free(pi, ni);
    binding_free(po, no);
    return ok;
}

json_t *api_json_secret(const struct store_secret *s)
{
    json_t *o = json_object();
    json_t *configs = s->hosts_json ? json_loads(s->hosts_json, 0, NULL) : NULL;
    json_t *hosts = json_array();
    if (json_is_array(configs)) {
        size_t i;
        json_t *item;
        json_array_foreach(configs, i, item)
        {
            const json_t *h = json_object_get(item, "host");
            if (json_is_string(h))
                json_array_append_new(hosts, json_deep_copy(h));
        }
    } else {
        const char *def[DEFAULT_HOSTS_MAX];
        size_t n = policy_default_secret_hosts(s->name, def, ARRAY_LEN(def));
        for (size_t i = 0; i < n; i++)
            json_array_append_new(hosts, json_string(def[i]));
    }
    json_object_set_new(o, "key", json_string(s->name));
    json_object_set_new(o, "configs", json_is_array(configs) ? json_incref(configs) : json_null());
    json_object_set_new(o, "hosts", hosts);
    json_object_set_new(o, "created_at", time_json(s->created_at));
    json_object_set_new(o, "updated_at", time_json(s->updated_at));
    json_decref(configs);
    return o;
}
