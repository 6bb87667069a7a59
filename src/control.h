/* control: the daemon's control-plane state and its bridge to the data plane.
 *
 * It owns the keyring and the store (SQLite in the state dir), creates the default workspace and
 * its bootstrap key at first start, compiles every box's proxy_config (unsealing opaque values,
 * resolving workspace secrets) into a registry the data plane looks sandboxes up in, and
 * publishes it: control_publish returns only once every worker uses the new registry, so an API
 * write that returns has taken effect for every request that starts afterwards.
 *
 * A box's compiled policy is kept and reused for as long as its stored row (revision, proxy
 * token) and every workspace secret its config names (store_secret.version, absence included)
 * are what they were when it was compiled: a PATCH of one box recompiles that box only, a
 * secret's change the boxes that use it, and no write unseals secrets no recompiled box uses.
 *
 * Used from the main thread only (the control API runs there). */
#ifndef AUTHPROXY_CONTROL_H
#define AUTHPROXY_CONTROL_H

#include <stddef.h>

#include <jansson.h>

#include "box_runtime.h"
#include "store.h"
#include "util.h"

/* A box's status as stored and returned (SDK values): "ready" — usable, its runtime running
 * or (proxy-only daemon, or right after a daemon restart that could not bring it back) started
 * by the next command; "stopped" — its runtime was stopped (idle_ttl_seconds, or POST .../stop)
 * and its files kept; the next command or POST .../start brings it back. */
#define CONTROL_STATUS_READY   "ready"
#define CONTROL_STATUS_STOPPED "stopped"

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

/* Builds the registry from the store (recompiling only the boxes whose row or used secrets
 * changed, see above) and hands it to the data plane through publish (set with
 * control_set_publisher); returns 0, or -1 if the store could not be read (the data plane keeps
 * its current registry). A box whose config no longer compiles (a secret it needs was deleted)
 * is published with no policy: its requests are refused (fail closed) and the reason logged
 * once per change. Re-reads the master key file first when it changed (another process
 * rotated the keys). */
int control_publish(struct control *c);

/* Publishes again if the store changed behind our back (another process: `authproxy keys
 * rotate`, `workspace create`); serve calls it periodically. 0, or -1 if the store is unreadable.
 */
int control_sync(struct control *c);
void control_set_publisher(struct control *c, control_publish_fn fn, void *ctx);

/* ---- box runtimes (box_runtime.h): NULL on a daemon that runs no sandboxes --------------------
 */

/* Gives control the daemon's runtime manager (borrowed; may be NULL, then unavailable says why,
 * copied): from now on every
 * published registry carries each running box's sandbox address (the transparent listener and
 * the sandbox resolver find the box's policy by it), and the lifecycle calls below act on it. */
void control_set_runtime(struct control *c, struct box_runtime *rt, const char *unavailable);
struct box_runtime *control_runtime(struct control *c);
/* Why there are no runtimes (the reason given to control_set_runtime, or a default). */
const char *control_runtime_unavailable(const struct control *c);

/* Starts the runtime of box b (of workspace ws_id) with its stored resources unless it runs,
 * records status "ready", and publishes, so its address is known to the data plane before any
 * command runs. 0 (without runtimes: only publishes), or -1 with a message in err: the runtime
 * could not start, or the registry could not be published (the runtime is stopped again then:
 * a sandbox the data plane does not know must not run). */
int control_box_start(struct control *c, const char *ws_id, const struct store_box *b, char *err,
                      size_t errlen);
/* Stops box b's runtime (its running commands end with why), records status "stopped" and
 * publishes. 0, or -1 if the store could not be written (logged). */
int control_box_stop(struct control *c, const char *ws_id, const struct store_box *b,
                     enum box_exec_end why);
/* box_runtime_hooks.idle_stopped (ctx: the control): records "stopped" and publishes. */
void control_box_idle_stopped(void *ctx, const char *ws_id, const char *box_id);
/* Before a box is deleted: stops its runtime and deletes its files. */
void control_box_remove(struct control *c, const char *box_id);
/* At daemon start, after reconcile: starts the runtime of every box whose status is "ready"
 * (those stopped stay stopped), then publishes. Failures are logged; such a box starts at its
 * next command. */
void control_restore_runtimes(struct control *c);
/* Appends to env the env_vars placeholders of the enabled rules of box_id's policy as last
 * published (nothing if the box has no applicable policy). */
void control_box_env(struct control *c, const char *box_id, struct box_runtime_env *env);

#endif
