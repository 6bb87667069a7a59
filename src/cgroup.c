/* cgroup: per-sandbox control groups on cgroup v1 and v2. See cgroup.h for the layout. */
#include "cgroup.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "log.h"
#include "util.h"

/* v1 controllers we manage, in this order in every per-controller array below. */
enum { CG_CPU = 0, CG_MEM, CG_PIDS, CG_NCTL };
static const char *const cg_ctl_names[CG_NCTL] = {"cpu", "memory", "pids"};

/* CFS period used for CPU limits: 100 ms, the kernel default; quota is a share of it. */
#define CG_CPU_PERIOD_US 100000u
/* The kernel refuses CFS quotas under 1 ms. */
#define CG_CPU_MIN_QUOTA_US 1000u

struct cgroup_tree {
    enum cgroup_version version;
    char *name;
    /* v2: bases[0] = <cgroup2 mount>/<name>; v1: bases[CG_*] = <controller mount>/<name>. */
    char *bases[CG_NCTL];
    size_t nbases;
    bool have_ctl[CG_NCTL]; /* controller usable for limits (always true on v1) */
};

struct cgroup {
    struct cgroup_tree *tree; /* borrowed */
    char *id;
    char *dirs[CG_NCTL]; /* same indexing as tree->bases */
    size_t ndirs;
};

/* Formats an error into err (if given) and logs it at debug level; keeps call sites short. */
static void cg_err(char *err, size_t errlen, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static void cg_err(char *err, size_t errlen, const char *fmt, ...)
{
    va_list ap;
    char buf[512];

    va_start(ap, fmt);
    vsnprintf(buf, sizeof(buf), fmt, ap);
    va_end(ap);
    if (err != NULL && errlen > 0)
        snprintf(err, errlen, "%s", buf);
    log_debug("cgroup: %s", buf);
}

/* Writes value to dir/file in one write(2) (cgroup files take one value per write).
 * 0, or -1 with errno. */
static int cg_write(const char *dir, const char *file, const char *value)
{
    char path[4096];
    int fd = -1, rc = -1, saved = 0;

    if ((size_t)snprintf(path, sizeof(path), "%s/%s", dir, file) >= sizeof(path)) {
        errno = ENAMETOOLONG;
        return -1;
    }
    fd = open(path, O_WRONLY | O_CLOEXEC);
    if (fd == -1)
        goto out;
    if (write(fd, value, strlen(value)) == -1)
        goto out;
    rc = 0;
out:
    saved = errno;
    if (fd != -1)
        close(fd);
    errno = saved;
    return rc;
}

/* Reads dir/file into a fresh heap string (caller frees); NULL with errno on error. */
static char *cg_read(const char *dir, const char *file)
{
    char *path = xasprintf("%s/%s", dir, file);
    char *s = read_file(path, 1 << 20, NULL);
    int saved = errno;

    free(path);
    errno = saved;
    return s;
}

/* True if the whitespace-separated list s contains word. */
static bool cg_has_word(const char *s, const char *word, const char *seps)
{
    size_t wl = strlen(word);
    const char *p = s;

    while (*p != '\0') {
        size_t n = strcspn(p, seps);
        if (n == wl && strncmp(p, word, wl) == 0)
            return true;
        p += n;
        p += strspn(p, seps);
    }
    return false;
}

/* Value of "key N" in a flat-keyed cgroup file (memory.events, memory.oom_control); 0 if absent. */
static uint64_t cg_keyed_value(const char *text, const char *key)
{
    size_t kl = strlen(key);
    const char *p = text;

    while (p != NULL && *p != '\0') {
        if (strncmp(p, key, kl) == 0 && p[kl] == ' ')
            return strtoull(p + kl + 1, NULL, 10);
        p = strchr(p, '\n');
        if (p != NULL)
            p++;
    }
    return 0;
}

/* A single safe path component: no '/', not "." or "..", no leading dot (so it can never name
 * a cgroup interface file or a hidden entry), limited charset. */
static bool cg_valid_component(const char *s)
{
    size_t n = strlen(s);

    if (n == 0 || n > 200 || s[0] == '.')
        return false;
    for (size_t i = 0; i < n; i++) {
        char c = s[i];
        if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
              c == '-' || c == '_' || c == '.'))
            return false;
    }
    return true;
}

static void cg_sleep_ms(long ms)
{
    struct timespec ts = {ms / 1000, (ms % 1000) * 1000000L};
    while (nanosleep(&ts, &ts) == -1 && errno == EINTR)
        ;
}

/* SIGKILLs every pid listed in dir/cgroup.procs once. Returns how many were listed, -1 if the
 * file cannot be read. There is a small window in which a listed pid could exit and be reused;
 * callers kill the jail's pid-namespace init first (which takes the whole namespace down), so
 * this scan only mops up. */
static int cg_kill_scan(const char *dir)
{
    char *procs = cg_read(dir, "cgroup.procs");
    int n = 0;

    if (procs == NULL)
        return -1;
    for (char *p = procs; *p != '\0';) {
        char *end;
        long pid = strtol(p, &end, 10);
        if (end == p)
            break;
        if (pid > 0) {
            kill((pid_t)pid, SIGKILL);
            n++;
        }
        p = end;
        while (*p == '\n' || *p == ' ')
            p++;
    }
    free(procs);
    return n;
}

/* Empties dir (a cgroup directory): cgroup.kill when present, otherwise repeated scans. Waits up
 * to about 2 s for the group to become empty. 0 when empty, -1 otherwise. */
static int cg_empty_dir(const char *dir)
{
    bool have_kill = cg_write(dir, "cgroup.kill", "1") == 0;

    for (int i = 0; i < 200; i++) {
        int n = have_kill ? 0 : cg_kill_scan(dir);
        if (have_kill) {
            char *procs = cg_read(dir, "cgroup.procs");
            if (procs == NULL)
                return errno == ENOENT ? 0 : -1;
            n = procs[0] != '\0';
            free(procs);
        }
        if (n == 0)
            return 0;
        if (n < 0)
            return errno == ENOENT ? 0 : -1;
        cg_sleep_ms(10);
    }
    return -1;
}

/* Kills everything in dir and its descendants and removes them all, depth first (a sandbox has
 * no capability to create nested groups, but a leftover from some other tool might). Retries
 * rmdir while the kernel still reports the group busy. 0, or -1 with the group left behind. */
static int cg_remove_dir(const char *dir, int depth)
{
    DIR *d = NULL;
    struct dirent *de;
    int rc = 0;

    if (depth > 16)
        return -1;
    d = opendir(dir);
    if (d == NULL)
        return errno == ENOENT ? 0 : -1;
    while ((de = readdir(d)) != NULL) {
        if (de->d_name[0] == '.' || de->d_type != DT_DIR)
            continue;
        char *sub = xasprintf("%s/%s", dir, de->d_name);
        if (cg_remove_dir(sub, depth + 1) == -1)
            rc = -1;
        free(sub);
    }
    closedir(d);
    if (cg_empty_dir(dir) == -1)
        rc = -1;
    for (int i = 0; i < 100; i++) {
        if (rmdir(dir) == 0 || errno == ENOENT)
            return rc;
        if (errno != EBUSY)
            break;
        cg_kill_scan(dir);
        cg_sleep_ms(10);
    }
    log_warn("cgroup: cannot remove %s: %s", dir, strerror(errno));
    return -1;
}

/* Finds the cgroup2 mount and the v1 mounts of our controllers in /proc/self/mountinfo.
 * Fills v2_mount (heap, or NULL) and v1_mounts[CG_*] (heap, or NULL); the caller frees. */
static void cg_scan_mounts(char **v2_mount, char *v1_mounts[CG_NCTL])
{
    char *info = read_file("/proc/self/mountinfo", 1 << 22, NULL);

    *v2_mount = NULL;
    for (int i = 0; i < CG_NCTL; i++)
        v1_mounts[i] = NULL;
    if (info == NULL)
        return;
    for (char *line = strtok(info, "\n"); line != NULL; line = strtok(NULL, "\n")) {
        /* "id parent maj:min root mountpoint opts [optional...] - fstype source superopts" */
        char *sep = strstr(line, " - ");
        char *fields[5] = {0};
        char *save = NULL;
        if (sep == NULL)
            continue;
        *sep = '\0';
        char *p = line;
        for (int i = 0; i < 5; i++, p = NULL)
            fields[i] = strtok_r(p, " ", &save);
        if (fields[4] == NULL)
            continue;
        char *fstype = strtok_r(sep + 3, " ", &save);
        (void)strtok_r(NULL, " ", &save); /* source */
        char *superopts = strtok_r(NULL, " ", &save);
        if (fstype == NULL)
            continue;
        if (strcmp(fstype, "cgroup2") == 0 && *v2_mount == NULL) {
            *v2_mount = xstrdup(fields[4]);
        } else if (strcmp(fstype, "cgroup") == 0 && superopts != NULL) {
            for (int i = 0; i < CG_NCTL; i++)
                if (v1_mounts[i] == NULL && cg_has_word(superopts, cg_ctl_names[i], ","))
                    v1_mounts[i] = xstrdup(fields[4]);
        }
    }
    free(info);
}

/* Contract in cgroup.h. Prefers v2 when its controllers are usable: on a hybrid host the v1
 * mounts own the controllers and the cgroup2 mount (e.g. /sys/fs/cgroup/unified) has none. */
struct cgroup_tree *cgroup_tree_open(const char *name, char *err, size_t errlen)
{
    char *v2 = NULL, *v1[CG_NCTL];
    struct cgroup_tree *t = NULL;

    cg_scan_mounts(&v2, v1);
    if (v2 != NULL) {
        char *ctl = cg_read(v2, "cgroup.controllers");
        bool ok = ctl != NULL;
        for (int i = 0; ok && i < CG_NCTL; i++)
            ok = cg_has_word(ctl, cg_ctl_names[i], " \n");
        free(ctl);
        if (ok) {
            t = cgroup_tree_open_at(CGROUP_V2, v2, name, true, err, errlen);
            goto out;
        }
    }
    if (v1[CG_CPU] != NULL && v1[CG_MEM] != NULL && v1[CG_PIDS] != NULL) {
        /* cgroup_tree_open_at(V1) wants the parent of per-controller mounts; they may be
         * co-mounted ("cpu,cpuacct"), so build the tree directly from the mount points. */
        if (!cg_valid_component(name)) {
            cg_err(err, errlen, "invalid cgroup subtree name '%s'", name);
            goto out;
        }
        t = xcalloc(1, sizeof(*t));
        t->version = CGROUP_V1;
        t->name = xstrdup(name);
        t->nbases = CG_NCTL;
        for (int i = 0; i < CG_NCTL; i++) {
            t->bases[i] = xasprintf("%s/%s", v1[i], name);
            t->have_ctl[i] = true;
            if (mkdir(t->bases[i], 0755) == -1 && errno != EEXIST) {
                cg_err(err, errlen, "cannot create %s: %s", t->bases[i], strerror(errno));
                cgroup_tree_free(t);
                t = NULL;
                goto out;
            }
        }
        goto out;
    }
    cg_err(err, errlen,
           "no usable cgroup hierarchy: need cgroup v2 with cpu, memory and pids "
           "controllers, or cgroup v1 cpu, memory and pids mounts");
out:
    free(v2);
    for (int i = 0; i < CG_NCTL; i++)
        free(v1[i]);
    return t;
}

/* Contract in cgroup.h. */
struct cgroup_tree *cgroup_tree_open_at(enum cgroup_version version, const char *mount_root,
                                        const char *name, bool require_controllers, char *err,
                                        size_t errlen)
{
    struct cgroup_tree *t = NULL;

    if (!cg_valid_component(name)) {
        cg_err(err, errlen, "invalid cgroup subtree name '%s'", name);
        return NULL;
    }
    t = xcalloc(1, sizeof(*t));
    t->version = version;
    t->name = xstrdup(name);
    if (version == CGROUP_V1) {
        t->nbases = CG_NCTL;
        for (int i = 0; i < CG_NCTL; i++) {
            t->bases[i] = xasprintf("%s/%s/%s", mount_root, cg_ctl_names[i], name);
            t->have_ctl[i] = true;
            if (mkdir(t->bases[i], 0755) == -1 && errno != EEXIST) {
                cg_err(err, errlen, "cannot create %s: %s", t->bases[i], strerror(errno));
                goto fail;
            }
        }
        return t;
    }
    t->nbases = 1;
    t->bases[0] = xasprintf("%s/%s", mount_root, name);
    if (mkdir(t->bases[0], 0755) == -1 && errno != EEXIST) {
        cg_err(err, errlen, "cannot create %s: %s", t->bases[0], strerror(errno));
        goto fail;
    }
    /* Enable each controller at the mount root (for <name>) and in <name> (for the sandboxes).
     * <name> itself never holds a process, so the no-internal-processes rule is satisfied. */
    char *avail = cg_read(mount_root, "cgroup.controllers");
    for (int i = 0; i < CG_NCTL; i++) {
        char op[32];
        snprintf(op, sizeof(op), "+%s", cg_ctl_names[i]);
        t->have_ctl[i] = avail != NULL && cg_has_word(avail, cg_ctl_names[i], " \n") &&
                         cg_write(mount_root, "cgroup.subtree_control", op) == 0 &&
                         cg_write(t->bases[0], "cgroup.subtree_control", op) == 0;
        if (!t->have_ctl[i] && require_controllers) {
            cg_err(err, errlen, "cannot enable the %s controller for %s: %s", cg_ctl_names[i],
                   t->bases[0], avail == NULL ? "no cgroup.controllers" : strerror(errno));
            free(avail);
            goto fail;
        }
    }
    free(avail);
    return t;
fail:
    cgroup_tree_free(t);
    return NULL;
}

enum cgroup_version cgroup_tree_version(const struct cgroup_tree *t)
{
    return t->version;
}

/* Contract in cgroup.h. */
int cgroup_tree_remove(struct cgroup_tree *t)
{
    int rc = 0;

    for (size_t i = 0; i < t->nbases; i++)
        if (rmdir(t->bases[i]) == -1 && errno != ENOENT)
            rc = -1;
    return rc;
}

/* Frees the description only; the subtree directory stays (it is shared by daemon restarts). */
void cgroup_tree_free(struct cgroup_tree *t)
{
    if (t == NULL)
        return;
    for (size_t i = 0; i < CG_NCTL; i++)
        free(t->bases[i]);
    free(t->name);
    free(t);
}

/* Writes the limits into a freshly created group. 0, or -1 with a message in err. Swap is
 * turned off for the group where the host has swap accounting (memsw / memory.swap.max);
 * hosts without it simply have no file to write, which is not an error. */
static int cg_apply_limits(struct cgroup *cg, const struct cgroup_limits *lim, char *err,
                           size_t errlen)
{
    struct cgroup_tree *t = cg->tree;
    bool v2 = t->version == CGROUP_V2;
    char val[64];

    if (lim->cpu_millicores > 0) {
        const char *dir = v2 ? cg->dirs[0] : cg->dirs[CG_CPU];
        uint64_t quota = (uint64_t)lim->cpu_millicores * CG_CPU_PERIOD_US / 1000u;
        if (quota < CG_CPU_MIN_QUOTA_US)
            quota = CG_CPU_MIN_QUOTA_US;
        if (!t->have_ctl[CG_CPU])
            goto no_ctl_cpu;
        if (v2) {
            snprintf(val, sizeof(val), "%llu %u", (unsigned long long)quota, CG_CPU_PERIOD_US);
            if (cg_write(dir, "cpu.max", val) == -1)
                goto fail_write_cpu;
        } else {
            snprintf(val, sizeof(val), "%u", CG_CPU_PERIOD_US);
            if (cg_write(dir, "cpu.cfs_period_us", val) == -1)
                goto fail_write_cpu;
            snprintf(val, sizeof(val), "%llu", (unsigned long long)quota);
            if (cg_write(dir, "cpu.cfs_quota_us", val) == -1)
                goto fail_write_cpu;
        }
    }
    if (lim->mem_bytes > 0) {
        const char *dir = v2 ? cg->dirs[0] : cg->dirs[CG_MEM];
        if (!t->have_ctl[CG_MEM])
            goto no_ctl_mem;
        snprintf(val, sizeof(val), "%llu", (unsigned long long)lim->mem_bytes);
        if (v2) {
            if (cg_write(dir, "memory.max", val) == -1)
                goto fail_write_mem;
            if (cg_write(dir, "memory.swap.max", "0") == -1 && errno != ENOENT)
                goto fail_write_mem;
            /* An OOM kills the whole sandbox command tree at once rather than one victim. */
            (void)cg_write(dir, "memory.oom.group", "1");
        } else {
            if (cg_write(dir, "memory.limit_in_bytes", val) == -1)
                goto fail_write_mem;
            /* memsw = mem + swap; equal to the memory limit means no swap. */
            if (cg_write(dir, "memory.memsw.limit_in_bytes", val) == -1 && errno != ENOENT)
                goto fail_write_mem;
            (void)cg_write(dir, "memory.swappiness", "0");
        }
    }
    if (lim->pids_max > 0) {
        const char *dir = v2 ? cg->dirs[0] : cg->dirs[CG_PIDS];
        if (!t->have_ctl[CG_PIDS])
            goto no_ctl_pids;
        snprintf(val, sizeof(val), "%u", lim->pids_max);
        if (cg_write(dir, "pids.max", val) == -1) {
            cg_err(err, errlen, "cannot set pids.max in %s: %s", dir, strerror(errno));
            return -1;
        }
    }
    return 0;
fail_write_cpu:
    cg_err(err, errlen, "cannot set the CPU limit in %s: %s", cg->dirs[v2 ? 0 : CG_CPU],
           strerror(errno));
    return -1;
fail_write_mem:
    cg_err(err, errlen, "cannot set the memory limit in %s: %s", cg->dirs[v2 ? 0 : CG_MEM],
           strerror(errno));
    return -1;
no_ctl_cpu:
    cg_err(err, errlen, "a CPU limit was asked for but the cpu controller is not available");
    return -1;
no_ctl_mem:
    cg_err(err, errlen, "a memory limit was asked for but the memory controller is not available");
    return -1;
no_ctl_pids:
    cg_err(err, errlen, "a pids limit was asked for but the pids controller is not available");
    return -1;
}

/* Contract in cgroup.h. */
struct cgroup *cgroup_create(struct cgroup_tree *t, const char *id, const struct cgroup_limits *lim,
                             char *err, size_t errlen)
{
    struct cgroup *cg = NULL;

    if (!cg_valid_component(id)) {
        cg_err(err, errlen, "invalid sandbox id '%s' for a cgroup name", id);
        return NULL;
    }
    cg = xcalloc(1, sizeof(*cg));
    cg->tree = t;
    cg->id = xstrdup(id);
    cg->ndirs = t->nbases;
    for (size_t i = 0; i < cg->ndirs; i++)
        cg->dirs[i] = xasprintf("%s/%s", t->bases[i], id);
    for (size_t i = 0; i < cg->ndirs; i++) {
        if (mkdir(cg->dirs[i], 0755) == 0)
            continue;
        if (errno == EEXIST) {
            log_warn("cgroup: removing leftover group %s", cg->dirs[i]);
            if (cg_remove_dir(cg->dirs[i], 0) == 0 && mkdir(cg->dirs[i], 0755) == 0)
                continue;
        }
        cg_err(err, errlen, "cannot create %s: %s", cg->dirs[i], strerror(errno));
        goto fail;
    }
    if (lim != NULL && cg_apply_limits(cg, lim, err, errlen) == -1)
        goto fail;
    return cg;
fail:
    cgroup_destroy(cg);
    return NULL;
}

/* Contract in cgroup.h. */
int cgroup_attach(struct cgroup *cg, pid_t pid)
{
    char val[32];

    snprintf(val, sizeof(val), "%ld", (long)pid);
    for (size_t i = 0; i < cg->ndirs; i++)
        if (cg_write(cg->dirs[i], "cgroup.procs", val) == -1)
            return -1;
    return 0;
}

/* Contract in cgroup.h. */
int cgroup_kill(struct cgroup *cg)
{
    int rc = 0;

    for (size_t i = 0; i < cg->ndirs; i++)
        if (cg_empty_dir(cg->dirs[i]) == -1)
            rc = -1;
    return rc;
}

/* Contract in cgroup.h. */
uint64_t cgroup_oom_kills(const struct cgroup *cg)
{
    bool v2 = cg->tree->version == CGROUP_V2;
    char *text = cg_read(cg->dirs[v2 ? 0 : CG_MEM], v2 ? "memory.events" : "memory.oom_control");
    uint64_t n;

    if (text == NULL)
        return 0;
    n = cg_keyed_value(text, "oom_kill");
    free(text);
    return n;
}

/* Contract in cgroup.h. */
int cgroup_nprocs(const struct cgroup *cg)
{
    int max = 0;

    for (size_t i = 0; i < cg->ndirs; i++) {
        char *procs = cg_read(cg->dirs[i], "cgroup.procs");
        int n = 0;
        if (procs == NULL)
            return -1;
        for (char *p = procs; *p != '\0'; p++)
            n += *p == '\n';
        free(procs);
        if (n > max)
            max = n;
    }
    return max;
}

/* Contract in cgroup.h. */
const char *cgroup_path(const struct cgroup *cg, const char *controller)
{
    if (cg->tree->version == CGROUP_V2)
        return cg->dirs[0];
    for (int i = 0; i < CG_NCTL; i++)
        if (strcmp(controller, cg_ctl_names[i]) == 0)
            return cg->dirs[i];
    return NULL;
}

/* Contract in cgroup.h. */
int cgroup_destroy(struct cgroup *cg)
{
    int rc = 0;

    if (cg == NULL)
        return 0;
    for (size_t i = 0; i < cg->ndirs; i++)
        if (cg_remove_dir(cg->dirs[i], 0) == -1)
            rc = -1;
    cgroup_free(cg);
    return rc;
}

/* Contract in cgroup.h. */
void cgroup_free(struct cgroup *cg)
{
    if (cg == NULL)
        return;
    for (size_t i = 0; i < cg->ndirs; i++)
        free(cg->dirs[i]);
    free(cg->id);
    free(cg);
}

/* Collects the distinct per-sandbox ids present under any base of the tree into a heap array of
 * heap strings (*ids, *n; the caller frees both). -1 if a base cannot be read. */
static int cg_list_ids(struct cgroup_tree *t, char ***ids, size_t *n)
{
    *ids = NULL;
    *n = 0;
    for (size_t b = 0; b < t->nbases; b++) {
        DIR *d = opendir(t->bases[b]);
        struct dirent *de;
        if (d == NULL)
            return -1;
        while ((de = readdir(d)) != NULL) {
            bool seen = false;
            if (de->d_name[0] == '.' || de->d_type != DT_DIR)
                continue;
            for (size_t i = 0; i < *n && !seen; i++)
                seen = strcmp((*ids)[i], de->d_name) == 0;
            if (seen)
                continue;
            *ids = xrealloc(*ids, (*n + 1) * sizeof(**ids));
            (*ids)[(*n)++] = xstrdup(de->d_name);
        }
        closedir(d);
    }
    return 0;
}

static void cg_free_ids(char **ids, size_t n)
{
    for (size_t i = 0; i < n; i++)
        free(ids[i]);
    free(ids);
}

/* Contract in cgroup.h. */
/* Removes sandbox group id in every controller of t. True when all went. */
static bool cg_remove_id(struct cgroup_tree *t, const char *id)
{
    bool ok = true;
    for (size_t b = 0; b < t->nbases; b++) {
        char *dir = xasprintf("%s/%s", t->bases[b], id);
        if (cg_remove_dir(dir, 0) == -1)
            ok = false;
        free(dir);
    }
    return ok;
}

int cgroup_reconcile(struct cgroup_tree *t, const char *const *live_ids, size_t n_live)
{
    char **ids = NULL;
    size_t n = 0;
    int removed = 0;
    bool failed = false;

    if (cg_list_ids(t, &ids, &n) == -1)
        failed = true;
    for (size_t i = 0; i < n; i++) {
        bool live = false;
        for (size_t j = 0; j < n_live && !live; j++)
            live = strcmp(ids[i], live_ids[j]) == 0;
        if (live)
            continue;
        if (cg_remove_id(t, ids[i])) {
            log_info("cgroup: removed leftover sandbox group %s/%s", t->name, ids[i]);
            removed++;
        } else {
            failed = true;
        }
    }
    cg_free_ids(ids, n);
    return failed ? -1 : removed;
}

/* See cgroup.h. */
int cgroup_forget(struct cgroup_tree *t, const char *id)
{
    return cg_remove_id(t, id) ? 0 : -1;
}

/* Contract in cgroup.h. */
int cgroup_count(struct cgroup_tree *t)
{
    char **ids = NULL;
    size_t n = 0;
    int rc = cg_list_ids(t, &ids, &n);

    cg_free_ids(ids, n);
    return rc == -1 ? -1 : (int)n;
}
