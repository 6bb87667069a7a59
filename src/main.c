/* main: command-line dispatch (SPEC §8). Each command parses its own options and calls into the
 * module that does the work; nothing here holds state. */
#include <errno.h>
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <event2/event.h>
#include <jansson.h>
#include <openssl/crypto.h>

#include "audit.h"
#include "config.h"
#include "control.h"
#include "sandbox_run.h"
#include "seal.h"
#include "signkeys.h"
#include "store.h"
#include "log.h"
#include "serve.h"
#include "tls_mitm.h"
#include "util.h"

#define DEFAULT_STATE_DIR "./var/authproxy"

static void usage(FILE *out)
{
    fprintf(out,
            "usage: authproxy COMMAND [OPTIONS]\n"
            "\n"
            "commands:\n"
            "  serve [--config FILE] [--state-dir DIR] [--listen-proxy ADDR:PORT]\n"
            "        [--listen-control ADDR:PORT] [--workers N] [--audit-log FILE|-]\n"
            "        [--upstream-dns ADDR:PORT] [--listen-transparent ADDR:PORT]\n"
            "        [--listen-dns ADDR:PORT] [--no-sandboxes] [--verbose]\n"
            "                        run the proxy and the control API; as root also the\n"
            "                        API-created sandboxes (--no-sandboxes: proxy-only boxes)\n"
            "  sandbox run [--config FILE] [--state-dir DIR] [--name NAME] [--vcpus N]\n"
            "        [--mem-bytes N] [--timeout S] [--upstream-dns ADDR:PORT] -- CMD [ARG...]\n"
            "                        run one command in a fresh sandbox (needs root)\n"
            "  ca cert [--state-dir DIR]\n"
            "                        print the interception CA certificate (PEM)\n"
            "  config check FILE     validate a standalone config file\n"
            "  audit verify FILE [FILE...]\n"
            "                        check an audit log's hash chain (exit 1 naming the first\n"
            "                        edited, removed or reordered line)\n"
            "  workspace create NAME [--state-dir DIR]\n"
            "                        create a workspace and print its API key (once)\n"
            "  keys rotate [--state-dir DIR]\n"
            "                        new master key; every stored value re-sealed under it\n"
            "  keys rotate-signing [--state-dir DIR]\n"
            "                        new callback-signing key; the old one stays published in\n"
            "                        the JWKS until its signatures have expired\n"
            "                        seal every stored secret under a new master key\n"
            "  version               print versions\n");
}

static int cmd_serve(int argc, char **argv)
{
    struct serve_options opt = {
        .state_dir = DEFAULT_STATE_DIR,
        .listen_proxy = "127.0.0.1:8080",
        .listen_control = "127.0.0.1:8081",
    };
    static const struct option longopts[] = {
        {"config", required_argument, NULL, 'c'},
        {"state-dir", required_argument, NULL, 's'},
        {"listen-proxy", required_argument, NULL, 'p'},
        {"listen-transparent", required_argument, NULL, 't'},
        {"listen-dns", required_argument, NULL, 'd'},
        {"listen-control", required_argument, NULL, 'C'},
        {"workers", required_argument, NULL, 'w'},
        {"audit-log", required_argument, NULL, 'a'},
        {"upstream-dns", required_argument, NULL, 'u'},
        {"verbose", no_argument, NULL, 'v'},
        {"no-sandboxes", no_argument, NULL, 'N'},
        {NULL, 0, NULL, 0},
    };
    int ch;
    while ((ch = getopt_long(argc, argv, "", longopts, NULL)) != -1) {
        switch (ch) {
        case 'c':
            opt.config_path = optarg;
            break;
        case 'N':
            opt.no_sandboxes = true;
            break;
        case 's':
            opt.state_dir = optarg;
            break;
        case 'p':
            opt.listen_proxy = optarg;
            break;
        case 'C':
            opt.listen_control = optarg;
            break;
        case 'a':
            opt.audit_path = optarg;
            break;
        case 'u':
            opt.upstream_dns = optarg;
            break;
        case 'v':
            log_set_level(LOG_DEBUG);
            break;
        case 't':
            opt.listen_transparent = optarg;
            break;
        case 'd':
            opt.listen_dns = optarg;
            break;
        case 'w': {
            char *end;
            long n = strtol(optarg, &end, 10);
            if (*end != '\0' || n < 1 || n > 64) {
                fprintf(stderr, "authproxy: --workers must be 1..64\n");
                return 2;
            }
            opt.workers = (int)n;
            break;
        }
        default:
            usage(stderr);
            return 2;
        }
    }
    if (optind != argc) {
        usage(stderr);
        return 2;
    }
    return serve_run(&opt);
}

/* Parses a non-negative decimal number; -1 on junk or overflow beyond max. */
static long long parse_count(const char *s, long long max)
{
    char *end;
    errno = 0;
    long long n = strtoll(s, &end, 10);
    if (errno != 0 || *s == '\0' || *end != '\0' || n < 0 || n > max)
        return -1;
    return n;
}

static int cmd_sandbox(int argc, char **argv)
{
    static const char usage_text[] =
        "usage: authproxy sandbox run [--config FILE] [--state-dir DIR] [--name NAME] [--vcpus N] "
        "[--mem-bytes N] [--timeout S] [--upstream-dns ADDR:PORT] -- CMD [ARG...]";
    struct sandbox_run_options o = {.state_dir = DEFAULT_STATE_DIR};
    static const struct option longopts[] = {
        {"config", required_argument, NULL, 'c'},       {"state-dir", required_argument, NULL, 's'},
        {"name", required_argument, NULL, 'n'},         {"vcpus", required_argument, NULL, 'v'},
        {"mem-bytes", required_argument, NULL, 'm'},    {"timeout", required_argument, NULL, 't'},
        {"upstream-dns", required_argument, NULL, 'u'}, {NULL, 0, NULL, 0},
    };
    if (argc < 2 || strcmp(argv[1], "run") != 0) {
        fprintf(stderr, "%s\n", usage_text);
        return 2;
    }
    optind = 2;
    int ch;
    long long n;
    while ((ch = getopt_long(argc, argv, "+", longopts, NULL)) != -1) {
        switch (ch) {
        case 'c':
            o.config_path = optarg;
            break;
        case 's':
            o.state_dir = optarg;
            break;
        case 'n':
            o.name = optarg;
            break;
        case 'u':
            o.upstream_dns = optarg;
            break;
        case 'v':
        case 'm':
        case 't':
            n = parse_count(optarg, ch == 'm' ? (1LL << 50) : 86400);
            if (n < 0) {
                fprintf(stderr, "authproxy: invalid number for --%s: %s\n",
                        ch == 'v'   ? "vcpus"
                        : ch == 'm' ? "mem-bytes"
                                    : "timeout",
                        optarg);
                return 2;
            }
            if (ch == 'v')
                o.vcpus = (unsigned)n;
            else if (ch == 'm')
                o.mem_bytes = (uint64_t)n;
            else
                o.timeout_s = (unsigned)n;
            break;
        default:
            fprintf(stderr, "%s\n", usage_text);
            return 2;
        }
    }
    if (optind >= argc) {
        fprintf(stderr, "%s\n", usage_text);
        return 2;
    }
    o.argv = argv + optind;
    return sandbox_run(&o);
}

static int cmd_ca(int argc, char **argv)
{
    const char *state_dir = DEFAULT_STATE_DIR;
    static const struct option longopts[] = {
        {"state-dir", required_argument, NULL, 's'},
        {NULL, 0, NULL, 0},
    };
    if (argc < 2 || strcmp(argv[1], "cert") != 0) {
        fprintf(stderr, "usage: authproxy ca cert [--state-dir DIR]\n");
        return 2;
    }
    int ch;
    optind = 2;
    while ((ch = getopt_long(argc, argv, "", longopts, NULL)) != -1) {
        if (ch != 's') {
            fprintf(stderr, "usage: authproxy ca cert [--state-dir DIR]\n");
            return 2;
        }
        state_dir = optarg;
    }
    char err[512];
    struct tls_mitm *m = tls_mitm_open(state_dir, 1, err, sizeof(err));
    if (m == NULL) {
        fprintf(stderr, "authproxy: %s\n", err);
        return 1;
    }
    fputs(tls_mitm_ca_pem(m), stdout);
    tls_mitm_free(m);
    return 0;
}

static int cmd_config(int argc, char **argv)
{
    if (argc != 3 || strcmp(argv[1], "check") != 0) {
        fprintf(stderr, "usage: authproxy config check FILE\n");
        return 2;
    }
    struct errlist errs = {0};
    struct config *cfg = config_load_file(argv[2], 1, &errs);
    if (cfg == NULL) {
        for (size_t i = 0; i < errs.n; i++)
            fprintf(stderr, "%s\n", errs.msgs[i]);
        fprintf(stderr, "%s: %zu error%s\n", argv[2], errs.n, errs.n == 1 ? "" : "s");
        errlist_free(&errs);
        return 1;
    }
    config_free(cfg);
    printf("%s: ok\n", argv[2]);
    return 0;
}

/* `audit verify FILE...`: checks each file's hash chain (audit.h). Prints "OK: N lines, chain
 * intact" and the last line's hash per good file, or "FAIL: <first bad line and why>"; the
 * status is 0 only when every file is intact. */
static int cmd_audit(int argc, char **argv)
{
    if (argc < 3 || strcmp(argv[1], "verify") != 0) {
        fprintf(stderr, "usage: authproxy audit verify FILE [FILE...]\n");
        return 2;
    }
    int status = 0;
    for (int i = 2; i < argc; i++) {
        const char *name = argc > 3 ? argv[i] : "", *sep = argc > 3 ? ": " : "";
        FILE *f = fopen(argv[i], "r");
        if (f == NULL) {
            fprintf(stderr, "authproxy: %s: %s\n", argv[i], strerror(errno));
            status = 1;
            continue;
        }
        struct audit_verify_result res;
        int rc = audit_verify(f, &res);
        if (rc == -1) {
            fprintf(stderr, "authproxy: %s: %s\n", argv[i], strerror(errno));
        } else if (rc == 0) {
            printf("%s%sOK: %llu lines, chain intact\n", name, sep, (unsigned long long)res.lines);
            if (res.lines > 0)
                printf("%s%slast line sha256 %s\n", name, sep, res.last_hash);
        } else {
            printf("%s%sFAIL: %s\n", name, sep, res.reason);
        }
        if (rc != 0)
            status = 1;
        fclose(f);
    }
    return status;
}

/* Parses the only option of the state commands: --state-dir DIR, after `first` positional
 * arguments. Returns the directory, or NULL after printing usage. */
static const char *state_dir_option(int argc, char **argv, int first, const char *usage_text)
{
    static const struct option longopts[] = {
        {"state-dir", required_argument, NULL, 's'},
        {NULL, 0, NULL, 0},
    };
    const char *dir = DEFAULT_STATE_DIR;
    int ch;
    optind = first;
    while ((ch = getopt_long(argc, argv, "", longopts, NULL)) != -1) {
        if (ch != 's') {
            fprintf(stderr, "usage: %s\n", usage_text);
            return NULL;
        }
        dir = optarg;
    }
    if (optind != argc) {
        fprintf(stderr, "usage: %s\n", usage_text);
        return NULL;
    }
    return dir;
}

static int cmd_workspace(int argc, char **argv)
{
    static const char usage_text[] = "authproxy workspace create NAME [--state-dir DIR]";
    if (argc < 3 || strcmp(argv[1], "create") != 0) {
        fprintf(stderr, "usage: %s\n", usage_text);
        return 2;
    }
    const char *name = argv[2];
    const char *dir = state_dir_option(argc, argv, 3, usage_text);
    if (dir == NULL)
        return 2;
    char err[512];
    struct control *ctl = control_open(dir, err, sizeof(err));
    if (ctl == NULL) {
        fprintf(stderr, "authproxy: %s\n", err);
        return 1;
    }
    char *key = NULL;
    struct store_workspace ws = {0};
    int rc = store_workspace_create(control_store(ctl), name, &ws, &key);
    if (rc == STORE_OK) {
        printf("%s\n", key);
        fprintf(stderr,
                "created workspace \"%s\" (id %s); its API key is printed above and "
                "cannot be shown again\n",
                ws.name, ws.id);
    } else {
        fprintf(stderr, "authproxy: cannot create workspace \"%s\": %s\n", name,
                rc == STORE_EXISTS ? "the name is taken" : store_strerror(rc));
    }
    secret_free(key);
    store_workspace_free(&ws);
    control_close(ctl);
    return rc == STORE_OK ? 0 : 1;
}

/* `authproxy keys rotate-signing`: a new Ed25519 key signs callbacks from now on; a running
 * daemon picks it up on its next signature or JWKS request (signkeys_reload). */
static int cmd_keys_rotate_signing(int argc, char **argv)
{
    static const char usage_text[] = "authproxy keys rotate-signing [--state-dir DIR]";
    const char *dir = state_dir_option(argc, argv, 2, usage_text);
    if (dir == NULL)
        return 2;
    char *msg = NULL, *kid = NULL;
    if (signkeys_rotate(dir, time(NULL), &kid, &msg) != 0) {
        fprintf(stderr, "authproxy: cannot rotate the callback-signing key: %s\n",
                msg ? msg : "?");
        free(msg);
        return 1;
    }
    printf("callback-signing key rotated: new key id %s; the previous key stays in the JWKS "
           "for %d s\n",
           kid, SIGNKEYS_TOKEN_LIFETIME + SIGNKEYS_CLOCK_SKEW);
    free(kid);
    return 0;
}

static int cmd_keys(int argc, char **argv)
{
    static const char usage_text[] =
        "authproxy keys rotate [--state-dir DIR] | keys rotate-signing [--state-dir DIR]";
    if (argc >= 2 && strcmp(argv[1], "rotate-signing") == 0)
        return cmd_keys_rotate_signing(argc, argv);
    if (argc < 2 || strcmp(argv[1], "rotate") != 0) {
        fprintf(stderr, "usage: %s\n", usage_text);
        return 2;
    }
    const char *dir = state_dir_option(argc, argv, 2, usage_text);
    if (dir == NULL)
        return 2;
    char *msg = NULL;
    int status = 1;
    struct store *st = NULL;
    struct seal_keyring *kr = seal_keyring_open(dir, NULL, &msg);
    if (kr == NULL) {
        fprintf(stderr, "authproxy: master key: %s\n", msg ? msg : "cannot open");
        goto out;
    }
    st = store_open(dir, kr, &msg);
    if (st == NULL) {
        fprintf(stderr, "authproxy: store: %s\n", msg ? msg : "cannot open");
        goto out;
    }
    if (seal_keyring_rotate(kr, &msg) != 0) {
        fprintf(stderr, "authproxy: cannot rotate the master key: %s\n", msg ? msg : "?");
        goto out;
    }
    size_t n = 0;
    int rc = store_reseal_all(st, &n);
    if (rc != STORE_OK) {
        fprintf(stderr,
                "authproxy: re-sealing failed (%s); nothing was changed in the store, "
                "values stay sealed under the previous key, which is kept\n",
                store_strerror(rc));
        goto out;
    }
    printf("master key rotated: current key %s, %zu value%s re-sealed\n",
           seal_keyring_current_id(kr), n, n == 1 ? "" : "s");
    status = 0;
out:
    free(msg);
    if (st)
        store_close(st);
    seal_keyring_free(kr);
    return status;
}

static int cmd_version(void)
{
    printf("authproxy %s\n", AUTHPROXY_VERSION);
    printf("openssl %s\n", OpenSSL_version(OPENSSL_VERSION_STRING));
    printf("libevent %s\n", event_get_version());
    printf("jansson %s\n", jansson_version_str());
    return 0;
}

int main(int argc, char **argv)
{
    if (argc < 2) {
        usage(stderr);
        return 2;
    }
    util_install_zeroing_json_allocator();
    const char *cmd = argv[1];
    if (strcmp(cmd, "serve") == 0)
        return cmd_serve(argc - 1, argv + 1);
    if (strcmp(cmd, "ca") == 0)
        return cmd_ca(argc - 1, argv + 1);
    if (strcmp(cmd, "config") == 0)
        return cmd_config(argc - 1, argv + 1);
    if (strcmp(cmd, "audit") == 0)
        return cmd_audit(argc - 1, argv + 1);
    if (strcmp(cmd, "sandbox") == 0)
        return cmd_sandbox(argc - 1, argv + 1);
    if (strcmp(cmd, "workspace") == 0)
        return cmd_workspace(argc - 1, argv + 1);
    if (strcmp(cmd, "keys") == 0)
        return cmd_keys(argc - 1, argv + 1);
    if (strcmp(cmd, "version") == 0 || strcmp(cmd, "--version") == 0)
        return cmd_version();
    if (strcmp(cmd, "help") == 0 || strcmp(cmd, "--help") == 0 || strcmp(cmd, "-h") == 0) {
        usage(stdout);
        return 0;
    }
    fprintf(stderr, "authproxy: unknown command '%s'\n\n", cmd);
    usage(stderr);
    return 2;
}
