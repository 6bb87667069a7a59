/* secret_set: workspace secrets as the policy compiler sees them — name, value and host
 * binding — gathered from a config file's "secrets" or from the store, and offered to
 * policy_compile as a struct secret_source.
 *
 * A set is short-lived (one compilation) and holds plaintext values: secret_set_free zeroes
 * them. */
#ifndef AUTHPROXY_SECRET_SET_H
#define AUTHPROXY_SECRET_SET_H

#include <jansson.h>

#include "policy.h"
#include "util.h"

struct secret_set;

struct secret_set *secret_set_new(void);
void secret_set_free(struct secret_set *s);

/* Adds secret name. value NULL records a secret whose value was unusable (so rules using it are
 * not also reported as naming an unknown secret). configs is the secret's host binding
 * ([{"host": "..."}]) or NULL for the well-known default of SPEC §6. Problems go to errs, each
 * prefixed with path (e.g. "secrets.OPENAI_API_KEY"); no message contains a value. */
void secret_set_add(struct secret_set *s, const char *name, const char *value,
                    const json_t *configs, const char *path, struct errlist *errs);

/* The set as a policy_compile secret source; valid while s lives. */
struct secret_source secret_set_source(struct secret_set *s);

#endif
