/* serve: the daemon — listeners, worker threads, signals, reload and shutdown.
 *
 * The main thread owns the configuration lifecycle: it loads the config, builds snapshots and
 * hands them to the workers; it handles SIGHUP (reload: a file that fails validation keeps the
 * running policy and logs why) and SIGTERM/SIGINT (stop accepting, let in-flight requests
 * finish within a grace period, exit 0). */
#ifndef AUTHPROXY_SERVE_H
#define AUTHPROXY_SERVE_H

#include <stdbool.h>
#include <stdint.h>

struct serve_options {
    const char *config_path;        /* NULL: empty policy (forward everything unchanged) */
    const char *state_dir;          /* default ./var/authproxy */
    const char *listen_proxy;       /* default 127.0.0.1:8080 */
    const char *listen_control;     /* default 127.0.0.1:8081; NULL: no control API and no store */
    const char *listen_transparent; /* sandboxes' captured TCP ("0.0.0.0:0"), or NULL */
    const char *listen_dns;         /* sandboxes' resolver, UDP+TCP ("0.0.0.0:0"), or NULL */
    const char *audit_path;         /* "-" = stdout, NULL = <state_dir>/audit.log */
    const char *upstream_dns;       /* NULL: /etc/resolv.conf */
    int workers;                    /* 0: one per CPU */
    bool no_sandboxes; /* keep boxes proxy-only; otherwise a root daemon with a control API runs
                          them (box_runtime.h), defaulting both listeners above to 0.0.0.0:0 */
};

/* Runs until SIGTERM/SIGINT. Returns the process exit status. */
int serve_run(const struct serve_options *opt);

/* The same daemon in parts, for embedding (authproxy sandbox run): start brings everything up
 * and starts the workers (NULL on failure, logged; opt must outlive the server); run dispatches
 * the main loop until SIGTERM/SIGINT or server_stop (thread-safe); free tears it all down. */
struct server;
struct netns_pool;
struct config;
struct server *server_start(const struct serve_options *opt);
int server_run(struct server *s);
void server_stop(struct server *s);
void server_free(struct server *s);
uint16_t server_transparent_port(const struct server *s);
uint16_t server_dns_port(const struct server *s);
struct netns_pool *server_netns_pool(struct server *s);
const struct config *server_config(const struct server *s);

#endif
