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
#include <time.h>
#include <unistd.h>

#include <event2/buffer.h>
#include <event2/event.h>
#include <event2/thread.h>
#include <event2/util.h>

#include "api.h"
#include "audit.h"
#include "box_runtime.h"
#include "config.h"
#include "control.h"
#include "log.h"
#include "dns_server.h"
#include "credcache.h"
#include "netns.h"
#include "registry.h"
#include "sandbox_limits.h"
#include "metrics.h"
#include "snapshot.h"
#include "signkeys.h"
#include "tls_mitm.h"
#include "util.h"
#include "worker.h"

#define MAX_WORKERS 64
/* How long a publish waits for every worker to take the new snapshot before it gives up
 * waiting (the workers still take it; the caller is just not held longer). */
#define PUBLISH_WAIT_MAX_US (5u * 1000000u)
/* How often the daemon looks for store changes made by other processes (CLI commands). */
#define STORE_SYNC_INTERVAL_S 2
/* Dynamic credentials held at most (callback answers, GCP tokens), all sandboxes together. */
#define CREDCACHE_MAX_ENTRIES 10000

struct server {
    const struct serve_options *opt;
    struct serve_shared shared;
    struct event_base *base; /* main thread: signals, control API, store sync */
    struct worker *workers[MAX_WORKERS];
    int n_workers;
    struct snapshot_base *snap_base; /* reference: the config file part */
    struct registry *registry;       /* reference: the sandboxes part (NULL before control) */
    struct snapshot *current;        /* reference: what the workers were last given */
    uint64_t next_version;
    struct control *control; /* NULL without a control API (sandbox run) */
    struct api *api;
    struct event *sync_timer;
    struct event *sig_events[3];
    struct event *stop_event; /* server_stop from another thread */
    int proxy_fd;
    int transparent_fd;
    uint16_t transparent_port;
    uint16_t dns_port;
    struct netns_pool *netns_pool; /* with a transparent listener: whose peers are sandboxes */
    const char *listen_transparent; /* opt's, or the default for a root daemon with sandboxes */
    const char *listen_dns;
    struct box_runtime *runtime; /* API-created boxes' runtimes; NULL: boxes are proxy-only */
    char *audit_default;
    char *callback_issuer; /* shared.callback_issuer's storage */
};

/* Opens a listening TCP socket on "addr:port". Returns the fd or -1 with a message in err. */
static int listen_on(const char *spec, char *err, size_t err_len)
{
    struct sockaddr_storage ss;
    int sslen = sizeof(ss);
    memset(&ss, 0, sizeof(ss));
    if (parse_listen_address(spec, (struct sockaddr *)&ss, &sslen) != 0) {
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

/* Loads the config file (or the defaults) into a new snapshot base. On failure logs every
 * problem and returns NULL. */
static struct snapshot_base *load_base(struct server *s)
{
    struct errlist errs = {0};
    struct config *cfg = s->opt->config_path
                             ? config_load_file(s->opt->config_path, s->next_version, &errs)
                             : config_new_default(s->next_version);
    if (cfg == NULL) {
        for (size_t i = 0; i < errs.n; i++)
            log_error("%s", errs.msgs[i]);
        errlist_free(&errs);
        return NULL;
    }
    errlist_free(&errs);
    char err[256];
    struct snapshot_base *b = snapshot_base_new(cfg, s->opt->config_path != NULL, err, sizeof(err));
    if (b == NULL)
        log_error("%s", err);
    return b;
}

/* Makes a snapshot of the current base and registry, hands it to every worker and waits until
 * each has taken it: when this returns, every request that starts uses it. */
static void publish(struct server *s)
{
    struct snapshot *snap = snapshot_new(s->next_version++, s->snap_base, s->registry);
    snapshot_unref(s->current);
    s->current = snap;
    for (int i = 0; i < s->n_workers; i++)
        worker_post_snapshot(s->workers[i], snap);
    uint64_t start = monotonic_us();
    for (int i = 0; i < s->n_workers; i++) {
        while (atomic_load(&s->workers[i]->applied_version) < snap->version) {
            if (monotonic_us() - start > PUBLISH_WAIT_MAX_US) {
                log_warn("worker %d has not taken policy version %llu yet", i,
                         (unsigned long long)snap->version);
                break;
            }
            struct timespec ts = {0, 50000};
            nanosleep(&ts, NULL);
        }
    }
}

static void publish_registry(void *ctx, struct registry *reg)
{
    struct server *s = ctx;
    registry_unref(s->registry);
    s->registry = registry_ref(reg);
    if (s->n_workers > 0)
        publish(s);
}

static void reload(struct server *s)
{
    struct snapshot_base *b = load_base(s);
    if (b == NULL) {
        log_error("reload of %s failed; keeping policy version %llu",
                  s->opt->config_path ? s->opt->config_path : "(defaults)",
                  (unsigned long long)s->current->version);
        return;
    }
    snapshot_base_unref(s->snap_base);
    s->snap_base = b;
    publish(s);
    log_info("reloaded %s: policy version %llu",
             s->opt->config_path ? s->opt->config_path : "(defaults)",
             (unsigned long long)s->current->version);
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

static void sync_cb(evutil_socket_t fd, short what, void *arg)
{
    struct server *s = arg;
    (void)fd;
    (void)what;
    control_sync(s->control);
}

/* The /metrics hook of the control API: every worker's counters plus process-wide facts. */
static void render_metrics(void *ctx, struct evbuffer *out)
{
    struct server *s = ctx;
    struct metrics *blocks[MAX_WORKERS];
    for (int i = 0; i < s->n_workers; i++)
        blocks[i] = &s->workers[i]->metrics;
    struct tls_mitm_stats ts;
    tls_mitm_get_stats(s->shared.mitm, &ts);
    struct metrics_globals g = {
        .config_version = s->current ? s->current->version : 0,
        .cert_cache_hits = ts.cache_hits,
        .cert_cache_misses = ts.cache_misses,
        .cert_mints = ts.mints,
        .cert_cache_size = ts.cache_size,
    };
    metrics_render(out, blocks, (size_t)s->n_workers, &g);
}

/* The JWKS hook of the control API (SPEC §4): the public keys that verify callback
 * signatures, picking up a rotation made by `authproxy keys rotate-signing` first. */
static void render_jwks(void *ctx, struct evbuffer *out)
{
    struct server *s = ctx;
    char *err = NULL;
    if (signkeys_reload(s->shared.signkeys, &err) != 0) {
        log_warn("callback signing keys: %s (publishing the keys loaded before)", err);
        free(err);
    }
    json_t *jwks = signkeys_jwks(s->shared.signkeys, time(NULL));
    char *text = json_dumps(jwks, JSON_COMPACT);
    if (text == NULL)
        abort(); /* jansson fails only on allocation: the documented OOM policy */
    evbuffer_add(out, text, strlen(text));
    free(text);
    json_decref(jwks);
}

static bool is_sandbox_peer(void *ctx, struct in_addr addr)
{
    return netns_pool_contains(ctx, addr);
}

/* The sandbox resolver's view of policy, called in worker 0's thread: the policy of the
 * sandbox at that address — the running box's, else the config file's (sandbox run). */
static const struct policy *dns_policy(void *ctx, const struct sockaddr *client)
{
    struct worker *w = ctx;
    const struct serve_shared *sh = w->shared;
    if (client->sa_family != AF_INET || sh->is_sandbox_peer == NULL ||
        !sh->is_sandbox_peer(sh->sandbox_ctx, ((const struct sockaddr_in *)client)->sin_addr))
        return NULL;
    const struct registry_box *box = registry_find_by_addr(
        w->current->registry, ((const struct sockaddr_in *)client)->sin_addr);
    if (box != NULL)
        return box->policy; /* NULL (not applicable now): every name refused */
    return w->current->base->anonymous_allowed ? w->current->config->policy : NULL;
}

/* Who a sandbox resolver client is, for its DNS audit lines: the running box at that address
 * (its name and workspace, as the request audit lines name it), or nothing. */
static void dns_identify(void *ctx, const struct sockaddr *client, const char **sandbox,
                         const char **workspace)
{
    struct worker *w = ctx;
    if (client->sa_family != AF_INET)
        return;
    const struct registry_box *box = registry_find_by_addr(
        w->current->registry, ((const struct sockaddr_in *)client)->sin_addr);
    if (box != NULL) {
        *sandbox = box->name;
        *workspace = box->workspace_id;
    }
}

static bool dns_is_remapped(void *ctx, const char *name)
{
    struct worker *w = ctx;
    return config_find_remap(w->current->config, name) != NULL;
}

static bool dns_is_local(void *ctx, struct in_addr addr)
{
    struct worker *w = ctx;
    return w->shared->is_sandbox_peer != NULL &&
           w->shared->is_sandbox_peer(w->shared->sandbox_ctx, addr);
}

static void stop_cb(evutil_socket_t fd, short what, void *arg)
{
    struct server *s = arg;
    (void)fd;
    (void)what;
    event_base_loopbreak(s->base);
}

/* The port a listening socket is bound to (after asking for port 0). */
static uint16_t bound_port(int fd)
{
    struct sockaddr_storage ss;
    socklen_t len = sizeof(ss);
    if (getsockname(fd, (struct sockaddr *)&ss, &len) == -1)
        return 0;
    return ntohs(ss.ss_family == AF_INET ? ((struct sockaddr_in *)&ss)->sin_port
                                         : ((struct sockaddr_in6 *)&ss)->sin6_port);
}

/* The boxes' runtimes (box_runtime.h), once the transparent listener and the resolver have
 * their ports: reconcile what a crashed run left, then bring back the boxes that were running.
 * Without them boxes stay proxy-only, and the API says why. */
static void start_runtimes(struct server *s)
{
    char err[512];
    if (s->opt->no_sandboxes)
        snprintf(err, sizeof(err), "started with --no-sandboxes");
    else if (s->transparent_fd == -1 || s->dns_port == 0)
        snprintf(err, sizeof(err), "%s",
                 geteuid() != 0 ? "sandboxes need root"
                                : "sandboxes need both --listen-transparent and --listen-dns");
    else {
        struct box_runtime_config rc = {
            .base = s->base,
            .state_dir = s->opt->state_dir,
            .config_path = s->opt->config_path,
            .transparent_port = s->transparent_port,
            .dns_port = s->dns_port,
            .hooks = {.idle_stopped = control_box_idle_stopped, .ctx = s->control},
        };
        s->runtime = box_runtime_new(&rc, err, sizeof(err));
    }
    if (s->runtime == NULL) {
        log_warn("sandboxes unavailable (%s): boxes are proxy-only", err);
        control_set_runtime(s->control, NULL, err);
        return;
    }
    control_set_runtime(s->control, s->runtime, NULL);
    control_restore_runtimes(s->control);
}

void server_free(struct server *s)
{
    if (s == NULL)
        return;
    /* All stopped and joined before any is freed: a running worker may hand a peer a
     * connection until it has taken its own stop. */
    for (int i = 0; i < s->n_workers; i++)
        worker_stop(s->workers[i]);
    for (int i = 0; i < s->n_workers; i++)
        worker_join(s->workers[i]);
    for (int i = 0; i < s->n_workers; i++)
        worker_join_and_free(s->workers[i]);
    for (int i = 0; i < 3; i++)
        if (s->sig_events[i])
            event_free(s->sig_events[i]);
    if (s->stop_event)
        event_free(s->stop_event);
    if (s->sync_timer)
        event_free(s->sync_timer);
    /* Runtimes before the API: their running commands are answered on its requests. */
    if (s->control != NULL)
        control_set_runtime(s->control, NULL, "authproxy is stopping");
    box_runtime_free(s->runtime);
    if (s->runtime != NULL && s->base != NULL)
        (void)event_base_loop(s->base, EVLOOP_NONBLOCK); /* send those answers while we can */
    api_free(s->api);
    if (s->base)
        event_base_free(s->base);
    if (s->proxy_fd != -1)
        close(s->proxy_fd);
    if (s->transparent_fd != -1)
        close(s->transparent_fd);
    free(s->audit_default);
    credcache_free(s->shared.credcache); /* after the workers: no flight or waiter is left */
    sandbox_limits_free(s->shared.limits);
    signkeys_free(s->shared.signkeys);
    free(s->callback_issuer);
    audit_close(s->shared.audit);
    tls_mitm_free(s->shared.mitm);
    snapshot_unref(s->current);
    registry_unref(s->registry);
    snapshot_base_unref(s->snap_base);
    control_close(s->control);
    netns_pool_free(s->netns_pool);
    free(s);
}

struct server *server_start(const struct serve_options *opt)
{
    struct server *s = xcalloc(1, sizeof(*s));
    char err[512];
    s->opt = opt;
    s->next_version = 1;
    s->proxy_fd = -1;
    s->transparent_fd = -1;

    /* Secrets live in this process's memory: keep them out of core dumps and away from
     * ptrace by other users. */
    (void)prctl(PR_SET_DUMPABLE, 0, 0, 0, 0);
    signal(SIGPIPE, SIG_IGN);
    evthread_use_pthreads();

    s->snap_base = load_base(s);
    if (s->snap_base == NULL)
        goto fail;
    s->shared.mitm = tls_mitm_open(opt->state_dir, 0, err, sizeof(err));
    if (s->shared.mitm == NULL) {
        log_error("interception CA: %s", err);
        goto fail;
    }
    char *msg = NULL;
    s->shared.signkeys = signkeys_open(opt->state_dir, &msg);
    if (s->shared.signkeys == NULL) {
        log_error("callback signing keys: %s", msg);
        free(msg);
        goto fail;
    }
    s->shared.credcache = credcache_new(CREDCACHE_MAX_ENTRIES);
    s->shared.limits = sandbox_limits_new();
    if (opt->listen_control != NULL) {
        s->control = control_open(opt->state_dir, err, sizeof(err));
        if (s->control == NULL) {
            log_error("control plane: %s", err);
            goto fail;
        }
        control_set_publisher(s->control, publish_registry, s);
        if (control_publish(s->control) != 0) /* no workers yet: only records the registry */
            goto fail;
    }
    s->current = snapshot_new(s->next_version++, s->snap_base, s->registry);

    const char *audit_path = opt->audit_path;
    if (audit_path == NULL)
        audit_path = s->audit_default = xasprintf("%s/audit.log", opt->state_dir);
    s->shared.audit = audit_open(audit_path);
    if (s->shared.audit == NULL) {
        log_error("cannot open audit log %s: %s", audit_path, strerror(errno));
        goto fail;
    }
    s->shared.upstream_dns = opt->upstream_dns;

    s->proxy_fd = listen_on(opt->listen_proxy, err, sizeof(err));
    if (s->proxy_fd == -1) {
        log_error("%s", err);
        goto fail;
    }
    /* A root daemon with a control API runs the boxes' sandboxes unless told not to: their
     * captured traffic needs the transparent listener and the resolver (any free port; only
     * peers in the sandbox pool are served). */
    s->listen_transparent = opt->listen_transparent;
    s->listen_dns = opt->listen_dns;
    if (opt->listen_control != NULL && !opt->no_sandboxes && geteuid() == 0 &&
        s->listen_transparent == NULL && s->listen_dns == NULL)
        s->listen_transparent = s->listen_dns = "0.0.0.0:0";
    if (s->listen_transparent != NULL) {
        msg = NULL;
        s->netns_pool = netns_pool_new(NULL, &msg);
        if (s->netns_pool == NULL) {
            log_error("sandbox network pool: %s", msg ? msg : "invalid");
            free(msg);
            goto fail;
        }
        s->transparent_fd = listen_on(s->listen_transparent, err, sizeof(err));
        if (s->transparent_fd == -1) {
            log_error("%s", err);
            goto fail;
        }
        s->transparent_port = bound_port(s->transparent_fd);
        s->shared.is_sandbox_peer = is_sandbox_peer;
        s->shared.sandbox_ctx = s->netns_pool;
    }
    s->base = event_base_new();
    if (s->base == NULL)
        goto fail;
    /* Signals are caught from here on (handled once the main loop runs), before the workers
     * serve anything: a SIGTERM during the rest of the start-up is a clean stop, not a kill. */
    int sigs[3] = {SIGHUP, SIGTERM, SIGINT};
    for (int i = 0; i < 3; i++) {
        s->sig_events[i] = evsignal_new(s->base, sigs[i], signal_cb, s);
        event_add(s->sig_events[i], NULL);
    }
    if (s->control != NULL) {
        struct api_hooks hooks = {.render_metrics = render_metrics,
                                  .render_jwks = render_jwks,
                                  .ctx = s,
                                  .proxy_address = opt->listen_proxy};
        s->api = api_new(s->base, s->control, opt->listen_control, &hooks, err, sizeof(err));
        if (s->api == NULL) {
            log_error("control API: %s", err);
            goto fail;
        }
    }

    /* Callback signatures name the control API's origin as their issuer (SPEC §4). */
    s->callback_issuer = s->api ? xasprintf("http://%s", api_listen_address(s->api))
                                : xstrdup("authproxy");
    s->shared.callback_issuer = s->callback_issuer;

    /* Our own listeners are never a destination (see upstream.c is_self). */
    const char *selves[3] = {s->api ? api_listen_address(s->api) : NULL, opt->listen_proxy,
                             s->listen_transparent};
    for (int i = 0; i < 3; i++) {
        int len = sizeof(s->shared.self[0]);
        if (selves[i] != NULL &&
            parse_listen_address(selves[i], (struct sockaddr *)&s->shared.self[s->shared.n_self],
                                 &len) == 0) {
            if (i == 2) /* the transparent port may have been 0: record the real one */
                ((struct sockaddr_in *)&s->shared.self[s->shared.n_self])->sin_port =
                    htons(s->transparent_port);
            s->shared.n_self++;
        }
    }

    int n = opt->workers > 0 ? opt->workers : (int)sysconf(_SC_NPROCESSORS_ONLN);
    n = n < 1 ? 1 : (n > MAX_WORKERS ? MAX_WORKERS : n);
    /* Every worker exists before any starts: each one's peers are in shared.workers. */
    s->shared.workers = s->workers;
    s->shared.n_workers = (size_t)n;
    for (int i = 0; i < n; i++) {
        s->workers[i] =
            worker_new(i, &s->shared, s->proxy_fd, s->transparent_fd, s->current, err, sizeof(err));
        if (s->workers[i] == NULL) {
            log_error("worker %d: %s", i, err);
            goto fail;
        }
        s->n_workers = i + 1;
        if (i == 0 && s->listen_dns != NULL) {
            struct dns_server_config dc = {
                .listen = s->listen_dns,
                .upstream = s->workers[0]->dns,
                .policy = dns_policy,
                .policy_ctx = s->workers[0],
                .is_remapped = dns_is_remapped,
                .audit = s->shared.audit,
                .is_local_addr = dns_is_local,
                .identify = dns_identify,
            };
            s->workers[0]->dns_server = dns_server_new(s->workers[0]->base, &dc, err, sizeof(err));
            if (s->workers[0]->dns_server == NULL) {
                log_error("sandbox resolver: %s", err);
                goto fail;
            }
            s->dns_port = dns_server_port(s->workers[0]->dns_server);
        }
    }
    for (int i = 0; i < n; i++) {
        if (worker_start(s->workers[i]) != 0) {
            log_error("worker %d: cannot start thread", i);
            goto fail;
        }
    }

    if (s->control != NULL)
        start_runtimes(s);

    s->stop_event = event_new(s->base, -1, EV_PERSIST, stop_cb, s);
    event_add(s->stop_event, NULL);
    if (s->control != NULL) {
        s->sync_timer = event_new(s->base, -1, EV_PERSIST, sync_cb, s);
        struct timeval sync_tv = {STORE_SYNC_INTERVAL_S, 0};
        event_add(s->sync_timer, &sync_tv);
    }
    log_info("authproxy %s: proxy on %s, control API on %s, %d workers, policy version %llu, "
             "audit log %s",
             AUTHPROXY_VERSION, opt->listen_proxy, s->api ? api_listen_address(s->api) : "(none)",
             s->n_workers, (unsigned long long)s->current->version, audit_path);
    return s;
fail:
    server_free(s);
    return NULL;
}

int server_run(struct server *s)
{
    event_base_dispatch(s->base);
    return 0;
}

void server_stop(struct server *s)
{
    event_active(s->stop_event, EV_READ, 0);
}

uint16_t server_transparent_port(const struct server *s)
{
    return s->transparent_port;
}

uint16_t server_dns_port(const struct server *s)
{
    return s->dns_port;
}

struct netns_pool *server_netns_pool(struct server *s)
{
    return s->netns_pool;
}

const struct config *server_config(const struct server *s)
{
    return s->snap_base->config;
}

int serve_run(const struct serve_options *opt)
{
    struct server *s = server_start(opt);
    if (s == NULL)
        return 1;
    server_run(s);
    server_free(s);
    log_info("stopped");
    return 0;
}
