#include "sandbox_run.h"

#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/rand.h>

#include "box_runtime.h"
#include "cgroup.h"
#include "config.h"
#include "jail.h"
#include "log.h"
#include "serve.h"
#include "util.h"

static void *server_thread(void *arg)
{
    server_run(arg);
    return NULL;
}

int sandbox_run(const struct sandbox_run_options *o)
{
    int status = 125;
    char id[25];
    char err[512];
    char tmpdir[] = "/tmp/authproxy-sandbox-XXXXXX";
    bool have_tmpdir = false;
    char *ca_bundle = NULL, *abs_state = NULL, *abs_config = NULL;
    struct box_runtime_env env = {0};
    struct server *srv = NULL;
    pthread_t thread;
    bool thread_started = false;
    struct cgroup_tree *tree = NULL;
    struct box_host *host = NULL;
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
    ca_bundle = xasprintf("%s/ca-bundle.pem", tmpdir);
    if (box_runtime_write_ca_bundle(ca_bundle, o->state_dir, err, sizeof(err)) == -1) {
        log_error("sandbox run: %s", err);
        goto out;
    }
    tree = cgroup_tree_open("authproxy", err, sizeof(err));
    if (tree == NULL) {
        log_error("sandbox run: cgroups: %s", err);
        goto out;
    }

    const char *hidden[] = {abs_state, abs_config, NULL};
    if (abs_state == NULL)
        hidden[0] = abs_config, hidden[1] = NULL;
    struct box_host_config hc = {
        .id = id,
        .dir = tmpdir,
        .hostname = o->name,
        .pool = server_netns_pool(srv),
        .transparent_port = server_transparent_port(srv),
        .dns_port = server_dns_port(srv),
        .cgroups = tree,
        .limits = {.cpu_millicores = o->vcpus * 1000,
                   .mem_bytes = o->mem_bytes,
                   .pids_max = BOX_RUNTIME_PIDS_MAX},
        .disk_bytes = 0, /* one command: a plain workspace and a fresh /tmp are enough */
        .ca_bundle = ca_bundle,
        .hidden = hidden,
    };
    host = box_runtime_host_start(&hc, err, sizeof(err));
    if (host == NULL) {
        log_error("sandbox run: %s", err);
        goto out;
    }

    /* The environment is built from scratch (jail.h): the placeholders of enabled rules only. */
    box_runtime_env_add_policy(&env, server_config(srv)->policy);
    struct jail_spec spec;
    memset(&spec, 0, sizeof(spec));
    box_runtime_host_spec(host, &spec);
    spec.argv = (const char *const *)o->argv;
    spec.env = box_runtime_env_list(&env);
    spec.timeout_ms = o->timeout_s * 1000u;
    if (jail_run(&spec, NULL, 0, 0, &res, err, sizeof(err)) != 0) {
        log_error("sandbox run: %s", err);
        goto out;
    }
    (void)write_all(1, res.out, res.out_len);
    (void)write_all(2, res.err, res.err_len);
    if (res.status.timed_out) {
        log_error("sandbox run: the command timed out after %u s and was killed", o->timeout_s);
        status = BOX_RUNTIME_TIMEOUT_EXIT;
    } else if (res.status.signal != 0) {
        if (res.status.oom_killed)
            log_error("sandbox run: the command ran out of memory and was killed");
        status = 128 + res.status.signal;
    } else {
        status = res.status.exit_code;
    }
out:
    jail_result_free(&res);
    box_runtime_env_free(&env);
    box_runtime_host_stop(host); /* kills what is left, removes the network and the cgroup */
    cgroup_tree_free(tree);
    if (have_tmpdir)
        (void)box_runtime_remove_tree(tmpdir);
    if (thread_started) {
        server_stop(srv);
        pthread_join(thread, NULL);
    }
    server_free(srv);
    free(ca_bundle);
    free(abs_state);
    free(abs_config);
    return status;
}
