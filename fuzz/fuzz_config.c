// fuzz-sources: src/config.c src/secret_set.c src/policy.c src/glob.c src/util.c src/log.c src/http1.c
// fuzz-sources: src/scrub.c src/gcp.c src/jws.c
/* libFuzzer harness for the standalone config loader, and through it policy_compile and the
 * glob compiler: arbitrary bytes must never crash, leak or hang it, a config is returned exactly
 * when no error is reported, and a secret value never reaches an error message. */
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "config.h"
#include "log.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

/* Occurrences of needle in the haystack of hlen bytes, ASCII case ignored. */
static size_t fuzz_count(const char *hay, size_t hlen, const char *needle)
{
    size_t n = 0, nlen = strlen(needle);
    for (size_t i = 0; nlen > 0 && i + nlen <= hlen; i++)
        if (strncasecmp(hay + i, needle, nlen) == 0)
            n++;
    return n;
}

/* Aborts if a secret value that occurs only once in the input (so it cannot have been echoed
 * from some other field) shows up in an error message. Short values are skipped: they may
 * legitimately coincide with message text. Occurrences are counted with case ignored: host
 * patterns are echoed lowercased, so a pattern holding the value in other case is an echo of
 * that pattern, not of the secret (seed: secret-value-in-other-case-in-a-host-pattern.json). */
static void fuzz_check_secrets(const uint8_t *data, size_t size, const struct errlist *errs)
{
    json_t *root = json_loadb((const char *)data, size, 0, NULL);
    json_t *secrets = json_object_get(root, "secrets");
    const char *key;
    json_t *v;
    json_object_foreach(secrets, key, v)
    {
        const char *s = json_is_string(v) ? json_string_value(v)
                                          : json_string_value(json_object_get(v, "value"));
        if (s == NULL || strlen(s) < 16 || fuzz_count((const char *)data, size, s) != 1)
            continue;
        for (size_t i = 0; i < errs->n; i++)
            if (strstr(errs->msgs[i], s) != NULL)
                abort();
    }
    json_decref(root);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static const char *const hosts[] = {
        "api.openai.com", "github.com",     "x.github.com",    "127.0.0.1", "::1",
        "localhost",      "a.example.test", "evil.example.com"};
    static bool init;
    struct errlist errs = {0};
    if (!init) {
        log_set_level(LOG_ERROR);
        init = true;
    }
    struct config *c = config_parse((const char *)data, size, "fuzz", 1, &errs);
    if ((c == NULL) != (errs.n > 0))
        abort();
    fuzz_check_secrets(data, size, &errs);
    if (c != NULL) {
        for (size_t i = 0; i < sizeof(hosts) / sizeof(hosts[0]); i++) {
            struct policy_host_decision hd;
            struct policy_request_decision rd;
            policy_decide_host(c->policy, hosts[i], &hd);
            policy_decide_request(c->policy, hosts[i], "/v1/x", 5, i % 2 == 0, &rd);
            if (rd.action == POLICY_INJECT && rd.rule == NULL)
                abort();
            (void)config_find_remap(c, hosts[i]);
        }
    }
    config_free(c);
    errlist_free(&errs);
    return 0;
}
