/* serve: the daemon — listeners, worker threads, signals, reload and shutdown.
 *
 * The main thread owns the configuration lifecycle: it loads the config, builds snapshots and
 * hands them to the workers; it handles SIGHUP (reload: a file that fails validation keeps the
 * running policy and logs why) and SIGTERM/SIGINT (stop accepting, let in-flight requests
 * finish within a grace period, exit 0). */
#ifndef AUTHPROXY_SERVE_H
#define AUTHPROXY_SERVE_H

struct serve_options {
    const char *config_path;    /* NULL: empty policy (forward everything unchanged) */
    const char *state_dir;      /* default ./var/authproxy */
    const char *listen_proxy;   /* default 127.0.0.1:8080 */
    const char *listen_control; /* default 127.0.0.1:8081 (control API: a later issue) */
    const char *audit_path;     /* "-" = stdout, NULL = <state_dir>/audit.log */
    const char *upstream_dns;   /* NULL: /etc/resolv.conf */
    int workers;                /* 0: one per CPU */
};

/* Runs until SIGTERM/SIGINT. Returns the process exit status. */
int serve_run(const struct serve_options *opt);

#endif
