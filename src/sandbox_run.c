#define _XOPEN_SOURCE 700 /* nftw */
#include "sandbox_run.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <limits.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <openssl/rand.h>

#include "cgroup.h"
#include "config.h"
#include "jail.h"
#include "log.h"
#include "netns.h"
#include "policy.h"
#include "serve.h"
#include "util.h"

#define SYSTEM_CA_BUNDLE "/etc/ssl/certs/ca-certificates.crt"
#define SANDBOX_UID      65534 /* nobody: root-owned 0600 files stay out of reach */
#define SANDBOX_PIDS_MAX 512
#define ENV_MAX          64

static void *server_thread(void *arg)
{
    server_run(arg);
    return NULL;
}

static int remove_entry(const char *path, const struct stat *st, int flag, struct FTW *ftw)
{
    (void)st;
    (void)flag;
    (void)ftw;
    return remove(path) == 0 || errno == ENOENT ? 0 : -1;
}

/* Writes the sandbox's CA bundle: the system roots plus authproxy's CA, so every client in the
 * sandbox trusts the certificates the proxy mints. */
static int write_ca_bundle(const char *path, const char *state_dir)
{
    char *ca_path = xasprintf("%s/ca.crt", state_dir);
    size_t sys_len = 0, ca_len = 0;
    char *sys = read_file(SYSTEM_CA_BUNDLE, 16u << 20, &sys_len);
    char *ca = read_file(ca_path, 1u << 20, &ca_len);
    int rc = -1;
    int fd = -1;
    if (ca == NULL)
        goto out;
    fd = open(path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0644);
    if (fd == -1)
        goto out;
    if ((sys && write_all(fd, sys, sys_len) == -1) || write_all(fd, "\n", 1) == -1 ||
        write_all(fd, ca, ca_len) == -1)
        goto out;
    rc = 0;
out:
    if (fd != -1)
        close(fd);
    free(sys);
    free(ca);
    free(ca_path);
    return rc;
}

static int write_text(const char *path, const char *text)
{
    int fd = open(path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0644);
    if (fd == -1)
        return -1;
    int rc = write_all(fd, text, strlen(text));
    close(fd);
    return rc;
}

int sandbox_run(const struct sandbox_run_options *o)
{
    int status = 125;
    char id[25];
    char err[512];
    char tmpdir[] = "/tmp/authproxy-sandbox-XXXXXX";
    bool have_tmpdir = false;
    char *workspace = NULL, *ca_bundle = NULL, *resolv = NULL, *abs_state = NULL;
    char *abs_config = NULL;
    char *env[ENV_MAX + 1];
    size_t n_env = 0;
    struct server *srv = NULL;
    pthread_t thread;
    bool thread_started = false;
    struct netns_handle *net = NULL;
    struct cgroup_tree *tree = NULL;
    struct cgroup *cg = NULL;
    struct jail_result res = {0};

    unsigned char rnd[12];
    if (RAND_bytes(rnd, sizeof(rnd)) != 1)
        goto out;
    for (size_t i = 0; i < sizeof(rnd); i++)
        snprintf(id + 2 * i, 3, "%02x", rnd[i]);

    struct serve_options so = {
        .config_path = o->config_path,
        .state_dir = o->state_dir,
        .listen_proxy = "127.0.0.1:0",
        .listen_control = NULL,
        .listen_transparent = "0.0.0.0:0",
        .listen_dns = "0.0.0.0:0",
        .upstream_dns = o->upstream_dns,
        .workers = 1,
    };
    srv = server_start(&so);
    if (srv == NULL)
        goto out; /* logged */
    if (!server_config(srv)->has_proxy_config)
        log_warn("sandbox run: no proxy_config (--config FILE): every connection is refused");
    if (pthread_create(&thread, NULL, server_thread, srv) != 0)
        goto out;
    thread_started = true;

    abs_state = realpath(o->state_dir, NULL);
    abs_config = o->config_path ? realpath(o->config_path, NULL) : NULL;
    if (mkdtemp(tmpdir) == NULL) {
        log_error("sandbox run: cannot create a temporary directory: %s", strerror(errno));
        goto out;
    }
    have_tmpdir = true;
    workspace = xasprintf("%s/workspace", tmpdir);
    ca_bundle = xasprintf("%s/ca-bundle.pem", tmpdir);
    resolv = xasprintf("%s/resolv.conf", tmpdir);
    if (mkdir(workspace, 0700) == -1 || chown(workspace, SANDBOX_UID, SANDBOX_UID) == -1 ||
        chmod(tmpdir, 0755) == -1 || write_ca_bundle(ca_bundle, o->state_dir) == -1) {
        log_error("sandbox run: cannot prepare the sandbox's files: %s", strerror(errno));
        goto out;
    }

    net = netns_create(server_netns_pool(srv), id, server_transparent_port(srv),
                       server_dns_port(srv));
    if (net == NULL) {
        log_error("sandbox run: cannot create the sandbox network: %s", strerror(errno));
        goto out;
    }
    char host_ip[INET_ADDRSTRLEN];
    inet_ntop(AF_INET, &net->host_addr, host_ip, sizeof(host_ip));
    char resolv_text[128];
    snprintf(resolv_text, sizeof(resolv_text), "nameserver %s\noptions ndots:0\n", host_ip);
    if (write_text(resolv, resolv_text) == -1) {
        log_error("sandbox run: cannot write resolv.conf: %s", strerror(errno));
        goto out;
    }

    tree = cgroup_tree_open("authproxy", err, sizeof(err));
    if (tree == NULL) {
        log_error("sandbox run: cgroups: %s", err);
        goto out;
    }
    struct cgroup_limits lim = {
        .cpu_millicores = o->vcpus * 1000,
        .mem_bytes = o->mem_bytes,
        .pids_max = SANDBOX_PIDS_MAX,
    };
    cg = cgroup_create(tree, id, &lim, err, sizeof(err));
    if (cg == NULL) {
        log_error("sandbox run: cgroup: %s", err);
        goto out;
    }

    /* The environment is built from scratch (jail.h): the placeholders of enabled rules only. */
    size_t n_rules = 0;
    const struct policy_rule *rules = policy_rules(server_config(srv)->policy, &n_rules);
    for (size_t i = 0; i < n_rules; i++) {
        if (!rules[i].enabled)
            continue;
        for (size_t j = 0; j < rules[i].n_env_vars && n_env < ENV_MAX; j++)
            env[n_env++] =
                xasprintf("%s=%s", rules[i].env_vars[j].name, rules[i].env_vars[j].value);
    }
    env[n_env] = NULL;

    const char *hidden[] = {abs_state, abs_config, NULL};
    if (abs_state == NULL)
        hidden[0] = abs_config, hidden[1] = NULL;
    struct jail_bind binds[] = {{.src = resolv, .dst = "/etc/resolv.conf", .writable = false}};
    struct jail_spec spec = {
        .argv = (const char *const *)o->argv,
        .env = (const char *const *)env,
        .ca_bundle = ca_bundle,
        .workspace = workspace,
        .hidden_paths = hidden,
        .binds = binds,
        .n_binds = ARRAY_LEN(binds),
        .netns_fd = net->fd,
        .cgroup = cg,
        .hostname = o->name,
        .uid = SANDBOX_UID,
        .gid = SANDBOX_UID,
        .timeout_ms = o->timeout_s * 1000u,
    };
    if (jail_run(&spec, NULL, 0, 0, &res, err, sizeof(err)) != 0) {
        log_error("sandbox run: %s", err);
        goto out;
    }
    (void)write_all(1, res.out, res.out_len);
    (void)write_all(2, res.err, res.err_len);
    if (res.status.timed_out) {
        log_error("sandbox run: the command timed out after %u s and was killed", o->timeout_s);
        status = 124;
    } else if (res.status.signal != 0) {
        if (res.status.oom_killed)
            log_error("sandbox run: the command ran out of memory and was killed");
        status = 128 + res.status.signal;
    } else {
        status = res.status.exit_code;
    }
out:
    jail_result_free(&res);
    for (size_t i = 0; i < n_env; i++)
        free(env[i]);
    cgroup_destroy(cg); /* kills what is left, removes the group, frees cg */
    cgroup_tree_free(tree);
    netns_free(net);
    if (have_tmpdir)
        (void)nftw(tmpdir, remove_entry, 16, FTW_DEPTH | FTW_PHYS);
    if (thread_started) {
        server_stop(srv);
        pthread_join(thread, NULL);
    }
    server_free(srv);
    free(workspace);
    free(ca_bundle);
    free(resolv);
    free(abs_state);
    free(abs_config);
    return status;
}
