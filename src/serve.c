#include "serve.h"

#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include <event2/event.h>
#include <event2/thread.h>
#include <event2/util.h>

#include "audit.h"
#include "config.h"
#include "log.h"
#include "snapshot.h"
#include "tls_mitm.h"
#include "util.h"
#include "worker.h"

#define MAX_WORKERS 64

struct server {
    const struct serve_options *opt;
    struct serve_shared shared;
    struct event_base *base; /* main thread: signals only */
    struct worker *workers[MAX_WORKERS];
    int n_workers;
    struct snapshot *current;
    uint64_t next_version;
};

/* Opens a listening TCP socket on "addr:port". Returns the fd or -1 with a message in err. */
static int listen_on(const char *spec, char *err, size_t err_len)
{
    struct sockaddr_storage ss;
    int sslen = sizeof(ss);
    memset(&ss, 0, sizeof(ss));
    if (evutil_parse_sockaddr_port(spec, (struct sockaddr *)&ss, &sslen) != 0) {
        snprintf(err, err_len, "invalid listen address '%s' (expected ADDR:PORT)", spec);
        return -1;
    }
    int fd = socket(ss.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd == -1) {
        snprintf(err, err_len, "socket: %s", strerror(errno));
        return -1;
    }
    int one = 1;
    (void)setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
    if (bind(fd, (struct sockaddr *)&ss, (socklen_t)sslen) == -1 || listen(fd, 1024) == -1) {
        snprintf(err, err_len, "cannot listen on %s: %s", spec, strerror(errno));
        close(fd);
        return -1;
    }
    return fd;
}

/* Loads the config named in the options (or the default one) into a new snapshot. On failure
 * logs every problem and returns NULL. */
static struct snapshot *load_snapshot(struct server *s)
{
    struct errlist errs = {0};
    uint64_t version = s->next_version;
    struct config *cfg = s->opt->config_path
                             ? config_load_file(s->opt->config_path, version, &errs)
                             : config_new_default(version);
    if (cfg == NULL) {
        for (size_t i = 0; i < errs.n; i++)
            log_error("%s", errs.msgs[i]);
        errlist_free(&errs);
        return NULL;
    }
    errlist_free(&errs);
    char err[256];
    struct snapshot *snap = snapshot_new(cfg, err, sizeof(err));
    if (snap == NULL) {
        log_error("%s", err);
        return NULL;
    }
    s->next_version++;
    return snap;
}

static void reload(struct server *s)
{
    struct snapshot *snap = load_snapshot(s);
    if (snap == NULL) {
        log_error("reload of %s failed; keeping policy version %llu",
                  s->opt->config_path ? s->opt->config_path : "(defaults)",
                  (unsigned long long)s->current->version);
        return;
    }
    for (int i = 0; i < s->n_workers; i++)
        worker_post_snapshot(s->workers[i], snap);
    snapshot_unref(s->current);
    s->current = snap;
    log_info("reloaded %s: policy version %llu",
             s->opt->config_path ? s->opt->config_path : "(defaults)",
             (unsigned long long)snap->version);
}

static void signal_cb(evutil_socket_t sig, short what, void *arg)
{
    struct server *s = arg;
    (void)what;
    if (sig == SIGHUP) {
        reload(s);
        return;
    }
    log_info("received %s, shutting down", sig == SIGTERM ? "SIGTERM" : "SIGINT");
    event_base_loopbreak(s->base);
}

int serve_run(const struct serve_options *opt)
{
    struct server s = {.opt = opt, .next_version = 1};
    int status = 1;
    int proxy_fd = -1;
    struct event *sig_events[3] = {NULL, NULL, NULL};
    char err[512];

    /* Secrets live in this process's memory: keep them out of core dumps and away from
     * ptrace by other users. */
    (void)prctl(PR_SET_DUMPABLE, 0, 0, 0, 0);
    signal(SIGPIPE, SIG_IGN);
    evthread_use_pthreads();

    s.current = load_snapshot(&s);
    if (s.current == NULL)
        goto out;
    s.shared.mitm = tls_mitm_open(opt->state_dir, 0, err, sizeof(err));
    if (s.shared.mitm == NULL) {
        log_error("interception CA: %s", err);
        goto out;
    }
    char *audit_default = NULL;
    const char *audit_path = opt->audit_path;
    if (audit_path == NULL)
        audit_path = audit_default = xasprintf("%s/audit.log", opt->state_dir);
    s.shared.audit = audit_open(audit_path);
    if (s.shared.audit == NULL) {
        log_error("cannot open audit log %s: %s", audit_path, strerror(errno));
        free(audit_default);
        goto out;
    }
    s.shared.upstream_dns = opt->upstream_dns;

    proxy_fd = listen_on(opt->listen_proxy, err, sizeof(err));
    if (proxy_fd == -1) {
        log_error("%s", err);
        free(audit_default);
        goto out;
    }
    s.n_workers = opt->workers > 0 ? opt->workers : (int)sysconf(_SC_NPROCESSORS_ONLN);
    if (s.n_workers < 1)
        s.n_workers = 1;
    if (s.n_workers > MAX_WORKERS)
        s.n_workers = MAX_WORKERS;
    for (int i = 0; i < s.n_workers; i++) {
        s.workers[i] = worker_new(i, &s.shared, proxy_fd, s.current, err, sizeof(err));
        if (s.workers[i] == NULL || worker_start(s.workers[i]) != 0) {
            log_error("worker %d: %s", i, s.workers[i] ? "cannot start thread" : err);
            if (s.workers[i]) {
                worker_join_and_free(s.workers[i]);
                s.workers[i] = NULL;
            }
            s.n_workers = i;
            free(audit_default);
            goto stop;
        }
    }

    s.base = event_base_new();
    int sigs[3] = {SIGHUP, SIGTERM, SIGINT};
    for (int i = 0; i < 3; i++) {
        sig_events[i] = evsignal_new(s.base, sigs[i], signal_cb, &s);
        event_add(sig_events[i], NULL);
    }
    log_info("authproxy %s: proxy listening on %s, %d workers, policy version %llu, audit log %s",
             AUTHPROXY_VERSION, opt->listen_proxy, s.n_workers,
             (unsigned long long)s.current->version, audit_path);
    free(audit_default);
    event_base_dispatch(s.base);
    status = 0;

stop:
    for (int i = 0; i < s.n_workers; i++)
        worker_stop(s.workers[i]);
    for (int i = 0; i < s.n_workers; i++)
        worker_join_and_free(s.workers[i]);
out:
    for (int i = 0; i < 3; i++)
        if (sig_events[i])
            event_free(sig_events[i]);
    if (s.base)
        event_base_free(s.base);
    if (proxy_fd != -1)
        close(proxy_fd);
    audit_close(s.shared.audit);
    tls_mitm_free(s.shared.mitm);
    snapshot_unref(s.current);
    if (status == 0)
        log_info("stopped");
    return status;
}
