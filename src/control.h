/* control: the daemon's control-plane state and its bridge to the data plane.
 *
 * It owns the keyring and the store (SQLite in the state dir), creates the default workspace and
 * its bootstrap key at first start, compiles every box's proxy_config (unsealing opaque values,
 * resolving workspace secrets) into a registry the data plane looks sandboxes up in, and
 * publishes it: control_publish returns only once every worker uses the new registry, so an API
 * write that returns has taken effect for every request that starts afterwards.
 *
 * Used from the main thread only (the control API runs there). */
#ifndef AUTHPROXY_CONTROL_H
#define AUTHPROXY_CONTROL_H

#include <stddef.h>

#include <jansson.h>

#include "store.h"
#include "util.h"

struct control;

/* Publishes a freshly built registry to the data plane; returns once every worker applied it.
 * Provided by serve. */
struct registry;
typedef void (*control_publish_fn)(void *ctx, struct registry *reg);

/* Opens <state_dir>/master.key (or AUTHPROXY_MASTER_KEY) and <state_dir>/authproxy.db; at first
 * start creates the workspace "default" and writes its API key to <state_dir>/bootstrap.key
 * (0600). NULL with a message in err on failure. */
struct control *control_open(const char *state_dir, char *err, size_t err_len);
void control_close(struct control *c);

struct store *control_store(struct control *c);

/* Validates a proxy_config for workspace ws_id as it would be applied: shape (JSON paths in
 * every message, prefixed "proxy_config"), unknown workspace_secret keys, secret host bindings.
 * Opaque values must be plaintext here (the API merges stored values before calling).
 * Returns 0 if valid, else -1 with errs filled. */
int control_check_proxy_config(struct control *c, const char *ws_id, const json_t *proxy_config,
                               struct errlist *errs);

/* Builds the registry from the store and hands it to the data plane through publish (set with
 * control_set_publisher); returns 0, or -1 if the store could not be read (the data plane keeps
 * its current registry). A box whose config no longer compiles (a secret it needs was deleted)
 * is published with no policy: its requests are refused (fail closed) and the reason logged. */
int control_publish(struct control *c);

/* Publishes again if the store changed behind our back (another process: `authproxy keys
 * rotate`, `workspace create`); serve calls it periodically. 0, or -1 if the store is unreadable.
 */
int control_sync(struct control *c);
void control_set_publisher(struct control *c, control_publish_fn fn, void *ctx);

#endif
