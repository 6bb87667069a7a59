/* box_runtime: sandboxes' host side and the daemon's runtimes. Contract and choices in
 * box_runtime.h. */
#define _XOPEN_SOURCE 700 /* nftw */
#include "box_runtime.h"

#include <arpa/inet.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <limits.h>
#include <linux/loop.h>
#include <signal.h>
#include <spawn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <event2/event.h>
#include <openssl/evp.h>

#include "log.h"
#include "netns.h"
#include "policy.h"
#include "util.h"

#define DISK_IMAGE           "disk.img"
#define DISK_MOUNT           "mnt"
#define RESOLV_FILE          "resolv.conf"
#define CA_BUNDLE            "ca-bundle.pem"
#define BOXES_DIR            "boxes"
#define LOOP_CONTROL         "/dev/loop-control"
#define READ_CHUNK           65536
#define POLL_EXIT_MS         50 /* without pidfd: how often a command's exit is looked for */
#define LOOP_ATTEMPTS        8  /* another process may take the free loop device first */
#define DISK_TEMPLATE_PREFIX ".disk-template-" /* + <bytes>.img, in disk_cache_dir */
#define DISK_TEMPLATES_MAX   4                 /* sizes kept; the least recently used goes first */
#define COPY_CHUNK           (1u << 20)

static const char *const mkfs_paths[] = {"/usr/sbin/mkfs.ext4", "/sbin/mkfs.ext4"};

/* ---- environment lists ----------------------------------------------------------------------- */

void box_runtime_env_add(struct box_runtime_env *e, const char *name, const char *value)
{
    e->v = xrealloc(e->v, (e->n + 2) * sizeof(*e->v));
    e->v[e->n++] = xasprintf("%s=%s", name, value);
    e->v[e->n] = NULL;
}

void box_runtime_env_add_policy(struct box_runtime_env *e, const struct policy *p)
{
    size_t n = 0;
    const struct policy_rule *rules = p != NULL ? policy_rules(p, &n) : NULL;
    for (size_t i = 0; i < n; i++) {
        if (!rules[i].enabled)
            continue;
        for (size_t j = 0; j < rules[i].n_env_vars; j++)
            box_runtime_env_add(e, rules[i].env_vars[j].name, rules[i].env_vars[j].value);
    }
}

const char *const *box_runtime_env_list(struct box_runtime_env *e)
{
    if (e->v == NULL)
        e->v = xcalloc(1, sizeof(*e->v));
    return (const char *const *)e->v;
}

void box_runtime_env_free(struct box_runtime_env *e)
{
    for (size_t i = 0; i < e->n; i++)
        free(e->v[i]);
    free(e->v);
    e->v = NULL;
    e->n = 0;
}

/* ---- small file helpers ---------------------------------------------------------------------- */

/* Replaces path with data atomically (a temporary file renamed over it), mode 0644: the
 * sandbox's unprivileged user reads it through a read-only bind. Not fsync'd, unlike
 * util.h's write_file_atomic: these files (resolv.conf, the CA bundle) are derived and
 * written again at every start, so a crash can only lose a copy that is remade anyway, and
 * the two fsyncs cost milliseconds on every sandbox start. 0, or -1 with a message in err. */
static int write_public_file(const char *path, const void *data, size_t len, char *err,
                             size_t errlen)
{
    char *tmp = xasprintf("%s.tmp.XXXXXX", path);
    int fd = mkostemp(tmp, O_CLOEXEC), rc = -1;
    if (fd == -1) {
        snprintf(err, errlen, "cannot write %s: %s", path, strerror(errno));
        goto out;
    }
    bool ok = write_all(fd, data, len) == 0 && fchmod(fd, 0644) == 0;
    int e = errno;
    if (close(fd) == -1 && ok)
        ok = false, e = errno;
    if (ok && rename(tmp, path) == -1)
        ok = false, e = errno;
    if (!ok) {
        snprintf(err, errlen, "cannot write %s: %s", path, strerror(e));
        (void)unlink(tmp);
        goto out;
    }
    rc = 0;
out:
    free(tmp);
    return rc;
}

int box_runtime_write_ca_bundle(const char *path, const char *state_dir, char *err, size_t errlen)
{
    char *ca_path = xasprintf("%s/ca.crt", state_dir);
    size_t sys_len = 0, ca_len = 0;
    char *sys = read_file(BOX_RUNTIME_SYSTEM_CA, 16u << 20, &sys_len);
    char *ca = read_file(ca_path, 1u << 20, &ca_len);
    char *all = NULL;
    int rc = -1;
    if (ca == NULL) {
        snprintf(err, errlen, "cannot read %s: %s", ca_path, strerror(errno));
        goto out;
    }
    /* Without system roots (a minimal host) the bundle is authproxy's CA alone: everything the
     * sandbox reaches goes through the proxy, which presents certificates of that CA. */
    all = xasprintf("%s\n%s", sys != NULL ? sys : "", ca);
    if (write_public_file(path, all, strlen(all), err, errlen) == -1)
        goto out;
    rc = 0;
out:
    free(sys);
    free(ca);
    free(all);
    free(ca_path);
    return rc;
}

static int remove_entry(const char *path, const struct stat *st, int flag, struct FTW *ftw)
{
    (void)st;
    (void)flag;
    (void)ftw;
    return remove(path) == 0 || errno == ENOENT ? 0 : -1;
}

int box_runtime_remove_tree(const char *path)
{
    if (nftw(path, remove_entry, 16, FTW_DEPTH | FTW_PHYS | FTW_MOUNT) == -1 && errno != ENOENT)
        return -1;
    return 0;
}

/* mkdir that accepts an existing directory, then the owner and mode wanted. */
static int make_dir(const char *path, mode_t mode, uid_t uid)
{
    if (mkdir(path, mode) == -1 && errno != EEXIST)
        return -1;
    if (chown(path, uid, uid) == -1 || chmod(path, mode) == -1)
        return -1;
    return 0;
}

/* ---- the disk image -------------------------------------------------------------------------- */

static const char *mkfs_path(void)
{
    for (size_t i = 0; i < ARRAY_LEN(mkfs_paths); i++)
        if (access(mkfs_paths[i], X_OK) == 0)
            return mkfs_paths[i];
    return NULL;
}

/* Runs mkfs.ext4 on image (a regular file) and waits for it: a few milliseconds for a sparse
 * image, since inode tables and journal are initialised lazily. 0, or -1 with a message. */
static int run_mkfs(const char *image, char *err, size_t errlen)
{
    const char *mkfs = mkfs_path();
    char *const argv[] = {(char *)"mkfs.ext4",
                          (char *)"-q",
                          (char *)"-F",
                          (char *)"-m",
                          (char *)"0",
                          (char *)"-E",
                          (char *)"lazy_itable_init=1,lazy_journal_init=1,nodiscard",
                          (char *)"-L",
                          (char *)"authproxy-box",
                          (char *)image,
                          NULL};
    char *const envp[] = {(char *)"PATH=/usr/sbin:/usr/bin:/sbin:/bin", (char *)"LC_ALL=C", NULL};
    posix_spawn_file_actions_t fa;
    pid_t pid;
    int status = 0, rc;

    if (mkfs == NULL) {
        snprintf(err, errlen, "mkfs.ext4 not found");
        return -1;
    }
    posix_spawn_file_actions_init(&fa);
    posix_spawn_file_actions_addopen(&fa, 0, "/dev/null", O_RDONLY, 0);
    posix_spawn_file_actions_addopen(&fa, 1, "/dev/null", O_WRONLY, 0);
    posix_spawn_file_actions_addopen(&fa, 2, "/dev/null", O_WRONLY, 0);
    rc = posix_spawn(&pid, mkfs, &fa, NULL, argv, envp);
    posix_spawn_file_actions_destroy(&fa);
    if (rc != 0) {
        snprintf(err, errlen, "cannot run %s: %s", mkfs, strerror(rc));
        return -1;
    }
    while (waitpid(pid, &status, 0) == -1) {
        if (errno != EINTR) {
            snprintf(err, errlen, "waiting for mkfs.ext4: %s", strerror(errno));
            return -1;
        }
    }
    if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) {
        snprintf(err, errlen, "mkfs.ext4 failed (status %d)", status);
        return -1;
    }
    return 0;
}

/* Makes sure image exists as an ext4 filesystem of bytes (a sparse file: the host's disk only
 * holds what the box wrote). An existing image is kept as it is (its size was fixed at the
 * box's creation). 0, or -1 with a message; a failed attempt leaves nothing. */
static int disk_ensure(const char *image, uint64_t bytes, char *err, size_t errlen)
{
    struct stat st;
    char *tmp = NULL;
    int fd = -1, rc = -1;

    if (stat(image, &st) == 0)
        return 0;
    tmp = xasprintf("%s.new", image);
    (void)unlink(tmp); /* a crash while making it */
    fd = open(tmp, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC | O_NOFOLLOW, 0600);
    if (fd == -1 || ftruncate(fd, (off_t)bytes) == -1) {
        snprintf(err, errlen, "cannot create the disk image %s: %s", tmp, strerror(errno));
        goto out;
    }
    close(fd);
    fd = -1;
    if (run_mkfs(tmp, err, errlen) == -1)
        goto out;
    if (rename(tmp, image) == -1) {
        snprintf(err, errlen, "cannot rename %s: %s", tmp, strerror(errno));
        goto out;
    }
    rc = 0;
out:
    if (fd != -1)
        close(fd);
    if (rc != 0)
        (void)unlink(tmp);
    free(tmp);
    return rc;
}

/* Copies src, a sparse file, to a new file dst (created 0600; it must not exist) of the same
 * size, writing only src's data extents and fsyncing dst: a fresh ext4 image of 1 GiB holds
 * well under a MiB of data, so the copy is far cheaper than running mkfs.ext4 again. 0, or -1
 * with a message; a failed copy leaves no dst. */
static int copy_sparse(const char *src, const char *dst, char *err, size_t errlen)
{
    int in = -1, out = -1, rc = -1;
    char *buf = NULL;
    struct stat st;

    in = open(src, O_RDONLY | O_CLOEXEC | O_NOFOLLOW);
    if (in == -1 || fstat(in, &st) == -1) {
        snprintf(err, errlen, "cannot read %s: %s", src, strerror(errno));
        goto out;
    }
    out = open(dst, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC | O_NOFOLLOW, 0600);
    if (out == -1 || ftruncate(out, st.st_size) == -1) {
        snprintf(err, errlen, "cannot create %s: %s", dst, strerror(errno));
        goto out;
    }
    buf = xmalloc(COPY_CHUNK);
    for (off_t pos = 0; pos < st.st_size;) {
        off_t data = lseek(in, pos, SEEK_DATA);
        if (data == -1 && errno == ENXIO)
            break;      /* only a hole is left */
        if (data == -1) /* no SEEK_DATA here: everything counts as data */
            data = pos;
        off_t hole = lseek(in, data, SEEK_HOLE);
        if (hole == -1)
            hole = st.st_size;
        for (pos = data; pos < hole;) {
            size_t want = (size_t)(hole - pos) < COPY_CHUNK ? (size_t)(hole - pos) : COPY_CHUNK;
            ssize_t n = pread(in, buf, want, pos);
            if (n <= 0 || pwrite(out, buf, (size_t)n, pos) != n) {
                snprintf(err, errlen, "cannot copy %s to %s: %s", src, dst,
                         n == 0 ? "short read" : strerror(errno));
                goto out;
            }
            pos += n;
        }
    }
    if (fsync(out) == -1) {
        snprintf(err, errlen, "cannot write %s: %s", dst, strerror(errno));
        goto out;
    }
    rc = 0;
out:
    free(buf);
    if (in != -1)
        close(in);
    if (out != -1) {
        close(out);
        if (rc == -1)
            (void)unlink(dst);
    }
    return rc;
}

/* Keeps at most DISK_TEMPLATES_MAX - 1 templates in dir (room for one more), removing the
 * least recently used (templates are touched at each use). Best effort. */
static void disk_templates_trim(const char *dir)
{
    for (;;) {
        DIR *d = opendir(dir);
        struct dirent *e;
        char *oldest = NULL;
        struct timespec t_old = {0, 0};
        int n = 0;
        if (d == NULL)
            return;
        while ((e = readdir(d)) != NULL) {
            struct stat st;
            if (strncmp(e->d_name, DISK_TEMPLATE_PREFIX, strlen(DISK_TEMPLATE_PREFIX)) != 0 ||
                fstatat(dirfd(d), e->d_name, &st, AT_SYMLINK_NOFOLLOW) == -1 ||
                !S_ISREG(st.st_mode))
                continue;
            n++;
            if (oldest == NULL || st.st_mtim.tv_sec < t_old.tv_sec ||
                (st.st_mtim.tv_sec == t_old.tv_sec && st.st_mtim.tv_nsec < t_old.tv_nsec)) {
                free(oldest);
                oldest = xasprintf("%s/%s", dir, e->d_name);
                t_old = st.st_mtim;
            }
        }
        closedir(d);
        bool again = n >= DISK_TEMPLATES_MAX && oldest != NULL && unlink(oldest) == 0;
        free(oldest);
        if (!again)
            return;
    }
}

/* Makes image a copy of the pristine filesystem of its size kept in cache_dir, making that
 * template first (mkfs.ext4, once per size) when there is none. Copies share the template's
 * filesystem UUID, which ext4 and loop devices do not mind. An existing image is kept. 0, or
 * -1 with a message; a failed attempt leaves no image. */
static int disk_from_template(const char *cache_dir, const char *image, uint64_t bytes, char *err,
                              size_t errlen)
{
    struct stat st;
    char *tpl = NULL, *tmp = NULL;
    int rc = -1;

    if (stat(image, &st) == 0)
        return 0;
    tpl = xasprintf("%s/" DISK_TEMPLATE_PREFIX "%llu.img", cache_dir, (unsigned long long)bytes);
    if (stat(tpl, &st) == -1) {
        disk_templates_trim(cache_dir);
        if (disk_ensure(tpl, bytes, err, errlen) == -1)
            goto out;
    }
    tmp = xasprintf("%s.new", image);
    (void)unlink(tmp); /* a crash while making it */
    if (copy_sparse(tpl, tmp, err, errlen) == -1)
        goto out;
    if (rename(tmp, image) == -1) {
        snprintf(err, errlen, "cannot rename %s: %s", tmp, strerror(errno));
        (void)unlink(tmp);
        goto out;
    }
    (void)utimensat(AT_FDCWD, tpl, NULL, 0); /* most recently used */
    rc = 0;
out:
    free(tpl);
    free(tmp);
    return rc;
}

/* Attaches image to a free loop device with autoclear (the device detaches itself when its
 * last user, the mount, goes) and mounts it at mnt. 0, or -1 with a message. */
static int disk_mount(const char *image, const char *mnt, char *err, size_t errlen)
{
    int img = -1, ctl = -1, lfd = -1, rc = -1;
    char dev[32] = "";

    img = open(image, O_RDWR | O_CLOEXEC | O_NOFOLLOW);
    ctl = open(LOOP_CONTROL, O_RDWR | O_CLOEXEC);
    if (img == -1 || ctl == -1) {
        snprintf(err, errlen, "cannot open %s: %s", img == -1 ? image : LOOP_CONTROL,
                 strerror(errno));
        goto out;
    }
    for (int attempt = 0; attempt < LOOP_ATTEMPTS; attempt++) {
        int n = ioctl(ctl, LOOP_CTL_GET_FREE);
        if (n < 0) {
            snprintf(err, errlen, "no free loop device: %s", strerror(errno));
            goto out;
        }
        snprintf(dev, sizeof(dev), "/dev/loop%d", n);
        lfd = open(dev, O_RDWR | O_CLOEXEC);
        if (lfd == -1)
            continue;
        struct loop_config lc;
        memset(&lc, 0, sizeof(lc));
        lc.fd = (uint32_t)img;
        lc.info.lo_flags = LO_FLAGS_AUTOCLEAR;
        if (ioctl(lfd, LOOP_CONFIGURE, &lc) == 0)
            break;
        if (errno == EINVAL || errno == ENOTTY) { /* kernel before 5.8 */
            struct loop_info64 li;
            memset(&li, 0, sizeof(li));
            li.lo_flags = LO_FLAGS_AUTOCLEAR;
            if (ioctl(lfd, LOOP_SET_FD, img) == 0) {
                if (ioctl(lfd, LOOP_SET_STATUS64, &li) == 0)
                    break;
                (void)ioctl(lfd, LOOP_CLR_FD, 0);
            }
        }
        close(lfd);
        lfd = -1;
        if (errno != EBUSY) {
            snprintf(err, errlen, "cannot attach %s to %s: %s", image, dev, strerror(errno));
            goto out;
        }
    }
    if (lfd == -1) {
        snprintf(err, errlen, "cannot attach %s to a loop device: all busy", image);
        goto out;
    }
    if (mount(dev, mnt, "ext4", MS_NOSUID | MS_NODEV | MS_NOATIME, NULL) == -1) {
        snprintf(err, errlen, "cannot mount %s (%s) at %s: %s", image, dev, mnt, strerror(errno));
        (void)ioctl(lfd, LOOP_CLR_FD, 0);
        goto out;
    }
    rc = 0;
out:
    if (lfd != -1)
        close(lfd); /* the mount holds the device now; autoclear detaches it at unmount */
    if (img != -1)
        close(img);
    if (ctl != -1)
        close(ctl);
    return rc;
}

/* Unmounts a box's disk; a busy mount (a process still holding a file) is detached lazily.
 * Not mounted counts as done. */
static int disk_unmount(const char *mnt)
{
    if (umount2(mnt, 0) == 0 || errno == EINVAL || errno == ENOENT)
        return 0;
    if (errno == EBUSY && umount2(mnt, MNT_DETACH) == 0)
        return 0;
    log_error("box runtime: cannot unmount %s: %s", mnt, strerror(errno));
    return -1;
}

/* Decodes mountinfo's octal escapes (\040 for a space) in place. */
static void unescape_mountinfo(char *s)
{
    char *o = s;
    for (char *p = s; *p != '\0'; p++) {
        if (p[0] == '\\' && p[1] >= '0' && p[1] <= '3' && p[2] >= '0' && p[2] <= '7' &&
            p[3] >= '0' && p[3] <= '7') {
            *o++ = (char)((p[1] - '0') * 64 + (p[2] - '0') * 8 + (p[3] - '0'));
            p += 3;
        } else {
            *o++ = *p;
        }
    }
    *o = '\0';
}

/* Unmounts every mount point below dir (a crashed daemon's disks). Returns how many. */
static int unmount_below(const char *dir)
{
    char *text = read_file("/proc/self/mountinfo", 16u << 20, NULL);
    char *save = NULL;
    size_t dlen = strlen(dir);
    int n = 0;
    char **found = NULL;
    size_t nfound = 0;

    if (text == NULL)
        return 0;
    for (char *line = strtok_r(text, "\n", &save); line != NULL;
         line = strtok_r(NULL, "\n", &save)) {
        /* "36 35 98:0 /root /mnt/point rw,..." : the fifth field is the mount point. */
        char *f = line;
        for (int i = 0; i < 4 && f != NULL; i++) {
            f = strchr(f, ' ');
            if (f != NULL)
                f++;
        }
        if (f == NULL)
            continue;
        char *end = strchr(f, ' ');
        if (end != NULL)
            *end = '\0';
        unescape_mountinfo(f);
        if (strncmp(f, dir, dlen) == 0 && f[dlen] == '/') {
            found = xrealloc(found, (nfound + 1) * sizeof(*found));
            found[nfound++] = xstrdup(f);
        }
    }
    /* Deepest first: the last mounted comes last in mountinfo. */
    for (size_t i = nfound; i-- > 0;) {
        if (umount2(found[i], MNT_DETACH) == 0) {
            log_info("box runtime: reconcile unmounted %s", found[i]);
            n++;
        }
        free(found[i]);
    }
    free(found);
    free(text);
    return n;
}

/* ---- one sandbox's host side ----------------------------------------------------------------- */

struct box_host {
    char *id;
    char *hostname;
    struct netns_handle *net;
    struct cgroup *cg;
    char *resolv;    /* <dir>/resolv.conf */
    char *workspace; /* host directory bound at /workspace */
    char *tmp;       /* host directory bound at /tmp, or NULL: a fresh tmpfs per command */
    char *mnt;       /* the disk's mount point, or NULL without a disk */
    char *ca_bundle;
    char **hidden; /* NULL-terminated */
    struct jail_bind binds[1];
    uint64_t fs_capacity;
};

static void host_free(struct box_host *h)
{
    if (h == NULL)
        return;
    free(h->id);
    free(h->hostname);
    free(h->resolv);
    free(h->workspace);
    free(h->tmp);
    free(h->mnt);
    free(h->ca_bundle);
    for (size_t i = 0; h->hidden != NULL && h->hidden[i] != NULL; i++)
        free(h->hidden[i]);
    free(h->hidden);
    free(h);
}

/* Prepares the writable space: the disk (mounted, with workspace/ and tmp/ on it) or the plain
 * workspace directory. 0, or -1 with a message. */
static int host_prepare_files(struct box_host *h, const struct box_host_config *c, char *err,
                              size_t errlen)
{
    char *image = NULL;
    int rc = -1;
    if (c->disk_bytes == 0) {
        h->workspace = xasprintf("%s/workspace", c->dir);
        if (make_dir(h->workspace, 0700, BOX_RUNTIME_UID) == -1) {
            snprintf(err, errlen, "cannot prepare %s: %s", h->workspace, strerror(errno));
            goto out;
        }
        rc = 0;
        goto out;
    }
    image = xasprintf("%s/%s", c->dir, DISK_IMAGE);
    h->mnt = xasprintf("%s/%s", c->dir, DISK_MOUNT);
    uint64_t bytes = c->disk_bytes < BOX_RUNTIME_DISK_MIN ? BOX_RUNTIME_DISK_MIN : c->disk_bytes;
    if ((c->disk_cache_dir != NULL
             ? disk_from_template(c->disk_cache_dir, image, bytes, err, errlen)
             : disk_ensure(image, bytes, err, errlen)) == -1)
        goto out;
    if (mkdir(h->mnt, 0700) == -1 && errno != EEXIST) {
        snprintf(err, errlen, "cannot create %s: %s", h->mnt, strerror(errno));
        goto out;
    }
    (void)disk_unmount(h->mnt); /* whatever was left mounted there */
    if (disk_mount(image, h->mnt, err, errlen) == -1)
        goto out;
    h->workspace = xasprintf("%s/workspace", h->mnt);
    h->tmp = xasprintf("%s/tmp", h->mnt);
    if (make_dir(h->workspace, 0755, BOX_RUNTIME_UID) == -1 || make_dir(h->tmp, 01777, 0) == -1) {
        snprintf(err, errlen, "cannot prepare the disk's directories: %s", strerror(errno));
        (void)disk_unmount(h->mnt);
        goto out;
    }
    rc = 0;
out:
    free(image);
    return rc;
}

struct box_host *box_runtime_host_start(const struct box_host_config *c, char *err, size_t errlen)
{
    struct box_host *h = xcalloc(1, sizeof(*h));
    char *msg = NULL;
    bool files_ready = false;
    size_t n_hidden = 0;

    h->id = xstrdup(c->id);
    h->hostname = xstrdup(c->hostname != NULL ? c->hostname : "sandbox");
    h->ca_bundle = c->ca_bundle != NULL ? xstrdup(c->ca_bundle) : NULL;
    h->fs_capacity = c->fs_capacity_bytes;
    while (c->hidden != NULL && c->hidden[n_hidden] != NULL)
        n_hidden++;
    h->hidden = xcalloc(n_hidden + 1, sizeof(*h->hidden));
    for (size_t i = 0; i < n_hidden; i++)
        h->hidden[i] = xstrdup(c->hidden[i]);

    if (mkdir_p(c->dir, &msg) == -1) {
        snprintf(err, errlen, "%s", msg);
        goto fail;
    }
    if (host_prepare_files(h, c, err, errlen) == -1)
        goto fail;
    files_ready = true;
    h->net = netns_create(c->pool, c->id, c->transparent_port, c->dns_port);
    if (h->net == NULL) {
        snprintf(err, errlen, "cannot create the sandbox network: %s", strerror(errno));
        goto fail;
    }
    char host_ip[INET_ADDRSTRLEN], text[128];
    inet_ntop(AF_INET, &h->net->host_addr, host_ip, sizeof(host_ip));
    snprintf(text, sizeof(text), "nameserver %s\noptions ndots:0\n", host_ip);
    h->resolv = xasprintf("%s/%s", c->dir, RESOLV_FILE);
    if (write_public_file(h->resolv, text, strlen(text), err, errlen) == -1)
        goto fail;
    h->cg = cgroup_create(c->cgroups, c->id, &c->limits, err, errlen);
    if (h->cg == NULL)
        goto fail;
    h->binds[0] = (struct jail_bind){.src = h->resolv, .dst = "/etc/resolv.conf"};
    free(msg);
    return h;
fail:
    free(msg);
    netns_free(h->net);
    if (files_ready && h->mnt != NULL)
        (void)disk_unmount(h->mnt);
    host_free(h);
    return NULL;
}

void box_runtime_host_spec(const struct box_host *h, struct jail_spec *spec)
{
    spec->netns_fd = h->net->fd;
    spec->cgroup = h->cg;
    spec->workspace = h->workspace;
    spec->tmp_dir = h->tmp;
    spec->binds = h->binds;
    spec->n_binds = ARRAY_LEN(h->binds);
    spec->ca_bundle = h->ca_bundle;
    spec->hidden_paths = (const char *const *)h->hidden;
    spec->fs_capacity_bytes = h->fs_capacity;
    spec->hostname = h->hostname;
    spec->uid = BOX_RUNTIME_UID;
    spec->gid = BOX_RUNTIME_UID;
}

struct in_addr box_runtime_host_addr(const struct box_host *h)
{
    return h->net->sandbox_addr;
}

void box_runtime_host_stop(struct box_host *h)
{
    if (h == NULL)
        return;
    /* Processes first: nothing may still use the network or the disk when they go. */
    cgroup_destroy(h->cg);
    netns_free(h->net);
    if (h->mnt != NULL)
        (void)disk_unmount(h->mnt);
    host_free(h);
}

/* ---- the manager ----------------------------------------------------------------------------- */

struct box_rt;

/* One running command. */
struct box_exec {
    struct box_rt *owner;
    struct jail_proc proc;
    struct event *ev_out, *ev_err, *ev_exit, *ev_deadline;
    char *out, *err;
    size_t out_len, err_len;
    bool out_truncated, err_truncated;
    bool out_open, err_open, reaped, timed_out;
    struct jail_status status;
    uint64_t start_us;
    box_exec_done_fn done;
    void *arg;
    struct box_exec *next;
};

/* One box's runtime. */
struct box_rt {
    struct box_runtime *mgr;
    char *ws_id, *box_id;
    struct box_host *host;
    int64_t idle_ttl;
    struct event *idle_ev;
    struct box_exec *execs;
    size_t n_execs;
    struct box_rt *next;
};

struct box_runtime {
    struct event_base *base;
    char *state_dir; /* real path */
    char *boxes_dir;
    char *config_path; /* real path, or NULL */
    char *ca_bundle;
    const char *hidden[3];
    char name_prefix[16];
    char link_prefix[8];
    struct netns_pool *pool;
    struct cgroup_tree *cgroups;
    uint16_t transparent_port, dns_port;
    bool disk; /* loop devices and mkfs.ext4: capacity-enforced disks */
    struct box_runtime_hooks hooks;
    struct box_rt *boxes;
};

static struct box_rt *find_rt(const struct box_runtime *rt, const char *box_id)
{
    for (struct box_rt *b = rt != NULL ? rt->boxes : NULL; b != NULL; b = b->next)
        if (strcmp(b->box_id, box_id) == 0)
            return b;
    return NULL;
}

/* Box ids become path components and object names: UUID characters only. */
static bool box_id_ok(const char *id)
{
    if (id == NULL || id[0] == '\0' || strlen(id) > 64)
        return false;
    for (const char *p = id; *p != '\0'; p++)
        if (!((*p >= 'a' && *p <= 'z') || (*p >= 'A' && *p <= 'Z') || (*p >= '0' && *p <= '9') ||
              *p == '-'))
            return false;
    return true;
}

/* The per-deployment names (see box_runtime.h): from the SHA-256 of the state dir's real path. */
static void derive_names(struct box_runtime *rt)
{
    static const char b36[] = "0123456789abcdefghijklmnopqrstuvwxyz";
    unsigned char md[EVP_MAX_MD_SIZE];
    unsigned int mdlen = 0;
    if (EVP_Digest(rt->state_dir, strlen(rt->state_dir), md, &mdlen, EVP_sha256(), NULL) != 1)
        abort(); /* SHA-256 is always there; failing here is an OpenSSL allocation failure */
    snprintf(rt->name_prefix, sizeof(rt->name_prefix), "apbox%02x%02x%02x%02x", md[0], md[1], md[2],
             md[3]);
    for (int i = 0; i < 4; i++)
        rt->link_prefix[i] = b36[md[4 + i] % 36];
    rt->link_prefix[4] = '\0';
}

static void exec_free(struct box_exec *ex)
{
    if (ex->ev_out != NULL)
        event_free(ex->ev_out);
    if (ex->ev_err != NULL)
        event_free(ex->ev_err);
    if (ex->ev_exit != NULL)
        event_free(ex->ev_exit);
    if (ex->ev_deadline != NULL)
        event_free(ex->ev_deadline);
    jail_proc_close(&ex->proc);
    free(ex->out);
    free(ex->err);
    free(ex);
}

/* Unlinks ex from its box. */
static void exec_unlink(struct box_exec *ex)
{
    struct box_rt *b = ex->owner;
    for (struct box_exec **pp = &b->execs; *pp != NULL; pp = &(*pp)->next) {
        if (*pp == ex) {
            *pp = ex->next;
            b->n_execs--;
            return;
        }
    }
}

static void idle_arm(struct box_rt *b)
{
    if (b->n_execs > 0 || b->idle_ttl <= 0) {
        event_del(b->idle_ev);
        return;
    }
    struct timeval tv = {(time_t)b->idle_ttl, 0};
    event_add(b->idle_ev, &tv);
}

/* Hands ex's result to its caller and frees it. end: how it came to an end. */
static void exec_finish(struct box_exec *ex, enum box_exec_end end)
{
    struct box_exec_result r;
    memset(&r, 0, sizeof(r));
    r.end = end;
    if (end == BOX_EXEC_EXITED) {
        r.signal = ex->status.signal;
        r.oom_killed = ex->status.oom_killed;
        r.timed_out = ex->timed_out;
        if (ex->timed_out)
            r.exit_code = BOX_RUNTIME_TIMEOUT_EXIT;
        else if (ex->status.signal != 0)
            r.exit_code = 128 + ex->status.signal;
        else
            r.exit_code = ex->status.exit_code;
    } else {
        r.exit_code = -1;
    }
    r.out = ex->out != NULL ? ex->out : "";
    r.err = ex->err != NULL ? ex->err : "";
    r.out_len = ex->out_len;
    r.err_len = ex->err_len;
    r.out_truncated = ex->out_truncated;
    r.err_truncated = ex->err_truncated;
    r.duration_ms = (monotonic_us() - ex->start_us) / 1000;
    exec_unlink(ex);
    ex->done(ex->arg, &r);
    exec_free(ex);
}

/* Completes ex once its output pipes are at EOF and its init has been reaped. */
static void exec_maybe_finish(struct box_exec *ex)
{
    if (ex->out_open || ex->err_open || !ex->reaped)
        return;
    struct box_rt *b = ex->owner;
    exec_finish(ex, BOX_EXEC_EXITED);
    idle_arm(b);
}

/* Reads what one pipe has; at EOF closes it. */
static void exec_read(struct box_exec *ex, bool is_out)
{
    char buf[READ_CHUNK];
    int *fd = is_out ? &ex->proc.stdout_fd : &ex->proc.stderr_fd;
    char **dst = is_out ? &ex->out : &ex->err;
    size_t *len = is_out ? &ex->out_len : &ex->err_len;
    bool *trunc = is_out ? &ex->out_truncated : &ex->err_truncated;
    ssize_t n = read(*fd, buf, sizeof(buf));

    if (n < 0 && (errno == EAGAIN || errno == EINTR))
        return;
    if (n <= 0) {
        event_del(is_out ? ex->ev_out : ex->ev_err);
        close(*fd);
        *fd = -1;
        if (is_out)
            ex->out_open = false;
        else
            ex->err_open = false;
        exec_maybe_finish(ex);
        return;
    }
    size_t take = (size_t)n;
    if (*len + take > BOX_RUNTIME_OUTPUT_MAX) {
        take = BOX_RUNTIME_OUTPUT_MAX - *len;
        *trunc = true;
    }
    if (take > 0) {
        *dst = xrealloc(*dst, *len + take + 1);
        memcpy(*dst + *len, buf, take);
        *len += take;
        (*dst)[*len] = '\0';
    }
}

static void exec_out_cb(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    exec_read(arg, true);
}

static void exec_err_cb(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    exec_read(arg, false);
}

/* The sandbox init exited (pidfd readable), or the poll timer without pidfd. */
static void exec_exit_cb(evutil_socket_t fd, short what, void *arg)
{
    struct box_exec *ex = arg;
    (void)fd;
    (void)what;
    if (ex->reaped)
        return;
    int rc = jail_wait(&ex->proc, false, &ex->status);
    if (rc == 0)
        return;
    if (rc == -1) { /* cannot happen for our own child; treat it as gone */
        log_error("box runtime: waiting for a command of %s: %s", ex->owner->box_id,
                  strerror(errno));
        memset(&ex->status, 0, sizeof(ex->status));
        ex->status.exit_code = -1;
        ex->status.signal = SIGKILL;
    }
    ex->reaped = true;
    event_del(ex->ev_exit);
    exec_maybe_finish(ex);
}

static void exec_deadline_cb(evutil_socket_t fd, short what, void *arg)
{
    struct box_exec *ex = arg;
    (void)fd;
    (void)what;
    if (ex->reaped)
        return;
    ex->timed_out = true;
    log_info("box runtime: a command in %s timed out; its process tree is killed",
             ex->owner->box_id);
    jail_kill(&ex->proc); /* the pipes close and the exit event follows */
}

/* Ends every command of b with why (immediately: they are killed and reaped). */
static void abort_execs(struct box_rt *b, enum box_exec_end why)
{
    while (b->execs != NULL) {
        struct box_exec *ex = b->execs;
        jail_kill(&ex->proc);
        exec_finish(ex, why);
    }
}

/* Stops and frees one runtime (unlinked from the manager). */
static void rt_release(struct box_rt *b, enum box_exec_end why)
{
    abort_execs(b, why);
    box_runtime_host_stop(b->host);
    if (b->idle_ev != NULL)
        event_free(b->idle_ev);
    log_info("box runtime: stopped sandbox %s", b->box_id);
    free(b->ws_id);
    free(b->box_id);
    free(b);
}

static void rt_unlink(struct box_runtime *rt, struct box_rt *b)
{
    for (struct box_rt **pp = &rt->boxes; *pp != NULL; pp = &(*pp)->next) {
        if (*pp == b) {
            *pp = b->next;
            return;
        }
    }
}

static void idle_cb(evutil_socket_t fd, short what, void *arg)
{
    struct box_rt *b = arg;
    struct box_runtime *rt = b->mgr;
    (void)fd;
    (void)what;
    if (b->n_execs > 0)
        return; /* a command started meanwhile (its start disarmed us; defensive) */
    char *ws = xstrdup(b->ws_id), *id = xstrdup(b->box_id);
    log_info("box runtime: sandbox %s idle for %lld s: stopping it", id, (long long)b->idle_ttl);
    rt_unlink(rt, b);
    rt_release(b, BOX_EXEC_STOPPED);
    if (rt->hooks.idle_stopped != NULL)
        rt->hooks.idle_stopped(rt->hooks.ctx, ws, id);
    free(ws);
    free(id);
}

struct box_runtime *box_runtime_new(const struct box_runtime_config *cfg, char *err, size_t errlen)
{
    struct box_runtime *rt = NULL;
    char *msg = NULL;
    char cgerr[256];
    int removed = 0, n;

    if (geteuid() != 0) {
        snprintf(err, errlen, "sandboxes need root (network namespaces, nftables, cgroups)");
        return NULL;
    }
    if (cfg->transparent_port == 0 || cfg->dns_port == 0) {
        snprintf(err, errlen, "sandboxes need the transparent listener and the sandbox resolver");
        return NULL;
    }
    rt = xcalloc(1, sizeof(*rt));
    rt->base = cfg->base;
    rt->hooks = cfg->hooks;
    rt->transparent_port = cfg->transparent_port;
    rt->dns_port = cfg->dns_port;
    rt->state_dir = realpath(cfg->state_dir, NULL);
    if (rt->state_dir == NULL) {
        snprintf(err, errlen, "state dir %s: %s", cfg->state_dir, strerror(errno));
        goto fail;
    }
    rt->config_path = cfg->config_path != NULL ? realpath(cfg->config_path, NULL) : NULL;
    rt->hidden[0] = rt->state_dir;
    rt->hidden[1] = rt->config_path;
    rt->boxes_dir = xasprintf("%s/%s", rt->state_dir, BOXES_DIR);
    rt->ca_bundle = xasprintf("%s/%s", rt->boxes_dir, CA_BUNDLE);
    derive_names(rt);

    struct netns_pool_config pc = {.name_prefix = rt->name_prefix, .link_prefix = rt->link_prefix};
    rt->pool = netns_pool_new(&pc, &msg);
    if (rt->pool == NULL) {
        snprintf(err, errlen, "sandbox network pool: %s", msg != NULL ? msg : "invalid");
        goto fail;
    }
    rt->cgroups = cgroup_tree_open(rt->name_prefix, cgerr, sizeof(cgerr));
    if (rt->cgroups == NULL) {
        snprintf(err, errlen, "cgroups unavailable: %s", cgerr);
        goto fail;
    }

    /* Reconcile, processes first (they hold the namespaces and the disks). */
    n = cgroup_reconcile(rt->cgroups, NULL, 0);
    removed += n > 0 ? n : 0;
    removed += unmount_below(rt->boxes_dir);
    n = netns_reconcile(&pc);
    if (n == -1) {
        snprintf(err, errlen, "cannot clean up sandbox networks (nftables unavailable?)");
        goto fail;
    }
    removed += n;
    if (removed > 0)
        log_info("box runtime: removed %d objects left by a previous run", removed);

    if (mkdir_p(rt->boxes_dir, &msg) == -1) {
        snprintf(err, errlen, "%s", msg);
        goto fail;
    }
    if (box_runtime_write_ca_bundle(rt->ca_bundle, rt->state_dir, err, errlen) == -1)
        goto fail;
    rt->disk = access(LOOP_CONTROL, R_OK | W_OK) == 0 && mkfs_path() != NULL;
    if (!rt->disk)
        log_warn("box runtime: no loop devices or no mkfs.ext4: a box's workspace is a plain "
                 "directory and fs_capacity_bytes caps only its /tmp and /dev/shm");
    free(msg);
    return rt;
fail:
    free(msg);
    box_runtime_free(rt);
    return NULL;
}

void box_runtime_free(struct box_runtime *rt)
{
    if (rt == NULL)
        return;
    while (rt->boxes != NULL) {
        struct box_rt *b = rt->boxes;
        rt->boxes = b->next;
        rt_release(b, BOX_EXEC_SHUTDOWN);
    }
    if (rt->cgroups != NULL) {
        (void)cgroup_tree_remove(rt->cgroups); /* EBUSY only if a group could not go */
        cgroup_tree_free(rt->cgroups);
    }
    netns_pool_free(rt->pool);
    free(rt->state_dir);
    free(rt->boxes_dir);
    free(rt->config_path);
    free(rt->ca_bundle);
    free(rt);
}

int box_runtime_start(struct box_runtime *rt, const char *ws_id, const char *box_id,
                      const struct box_runtime_limits *lim, char *err, size_t errlen)
{
    if (find_rt(rt, box_id) != NULL)
        return 0;
    if (!box_id_ok(box_id)) {
        snprintf(err, errlen, "invalid sandbox id");
        return -1;
    }
    uint64_t t0 = monotonic_us();
    char *dir = xasprintf("%s/%s", rt->boxes_dir, box_id);
    uint64_t fs = lim->fs_capacity_bytes > 0 ? (uint64_t)lim->fs_capacity_bytes : 0;
    struct box_host_config hc = {
        .id = box_id,
        .dir = dir,
        .hostname = lim->name,
        .pool = rt->pool,
        .transparent_port = rt->transparent_port,
        .dns_port = rt->dns_port,
        .cgroups = rt->cgroups,
        .limits = {.cpu_millicores = (uint32_t)lim->cpu_millicores,
                   .mem_bytes = (uint64_t)lim->mem_bytes,
                   .pids_max = BOX_RUNTIME_PIDS_MAX},
        .disk_bytes = rt->disk ? (fs > 0 ? fs : BOX_RUNTIME_DISK_DEFAULT) : 0,
        .disk_cache_dir = rt->boxes_dir,
        .fs_capacity_bytes = fs,
        .ca_bundle = rt->ca_bundle,
        .hidden = rt->hidden,
    };
    struct box_host *h = box_runtime_host_start(&hc, err, errlen);
    free(dir);
    if (h == NULL)
        return -1;
    struct box_rt *b = xcalloc(1, sizeof(*b));
    b->mgr = rt;
    b->ws_id = xstrdup(ws_id);
    b->box_id = xstrdup(box_id);
    b->host = h;
    b->idle_ttl = lim->idle_ttl_seconds;
    b->idle_ev = evtimer_new(rt->base, idle_cb, b);
    if (b->idle_ev == NULL)
        abort(); /* libevent allocation failure: util.h's policy */
    b->next = rt->boxes;
    rt->boxes = b;
    idle_arm(b);
    char ip[INET_ADDRSTRLEN];
    struct in_addr a = box_runtime_host_addr(h);
    inet_ntop(AF_INET, &a, ip, sizeof(ip));
    log_info("box runtime: started sandbox %s (address %s) in %llu ms", box_id, ip,
             (unsigned long long)((monotonic_us() - t0) / 1000));
    return 0;
}

bool box_runtime_running(const struct box_runtime *rt, const char *box_id)
{
    return find_rt(rt, box_id) != NULL;
}

struct in_addr box_runtime_addr(const struct box_runtime *rt, const char *box_id)
{
    const struct box_rt *b = find_rt(rt, box_id);
    struct in_addr none = {0};
    return b != NULL ? box_runtime_host_addr(b->host) : none;
}

void box_runtime_set_idle_ttl(struct box_runtime *rt, const char *box_id, int64_t seconds)
{
    struct box_rt *b = find_rt(rt, box_id);
    if (b == NULL)
        return;
    b->idle_ttl = seconds;
    idle_arm(b);
}

/* Makes fd non-blocking for the event loop. */
static int set_nonblock(int fd)
{
    int fl = fcntl(fd, F_GETFL);
    return fl == -1 ? -1 : fcntl(fd, F_SETFL, fl | O_NONBLOCK);
}

int box_runtime_exec(struct box_runtime *rt, const char *box_id, const struct box_exec_request *req,
                     box_exec_done_fn done, void *arg, char *err, size_t errlen)
{
    struct box_rt *b = find_rt(rt, box_id);
    struct jail_spec spec;
    struct box_exec *ex = NULL;

    if (b == NULL) {
        snprintf(err, errlen, "the sandbox is not running");
        errno = ENOENT;
        return -1;
    }
    if (b->n_execs >= BOX_RUNTIME_EXEC_MAX) {
        snprintf(err, errlen, "%d commands are running in this sandbox already",
                 BOX_RUNTIME_EXEC_MAX);
        errno = EAGAIN;
        return -1;
    }
    memset(&spec, 0, sizeof(spec));
    box_runtime_host_spec(b->host, &spec);
    spec.argv = req->argv;
    spec.env = req->env;
    spec.cwd = req->cwd;
    spec.timeout_ms = 0; /* the deadline is an event here, not jail_wait's polling */

    ex = xcalloc(1, sizeof(*ex));
    ex->owner = b;
    ex->done = done;
    ex->arg = arg;
    ex->start_us = monotonic_us();
    int rc = jail_spawn(&spec, &ex->proc, err, errlen);
    if (rc != 0) {
        free(ex);
        errno = rc == JAIL_SPAWN_COMMAND_ERROR ? EINVAL : EIO;
        if (errno == EIO)
            log_error("box runtime: cannot start a command in %s: %s", box_id, err);
        return -1;
    }
    ex->out_open = ex->err_open = true;
    if (set_nonblock(ex->proc.stdout_fd) == -1 || set_nonblock(ex->proc.stderr_fd) == -1)
        abort(); /* fcntl on our own fresh pipe cannot fail */
    ex->ev_out = event_new(rt->base, ex->proc.stdout_fd, EV_READ | EV_PERSIST, exec_out_cb, ex);
    ex->ev_err = event_new(rt->base, ex->proc.stderr_fd, EV_READ | EV_PERSIST, exec_err_cb, ex);
    if (ex->proc.pidfd >= 0)
        ex->ev_exit = event_new(rt->base, ex->proc.pidfd, EV_READ | EV_PERSIST, exec_exit_cb, ex);
    else
        ex->ev_exit = event_new(rt->base, -1, EV_PERSIST, exec_exit_cb, ex);
    ex->ev_deadline = evtimer_new(rt->base, exec_deadline_cb, ex);
    if (ex->ev_out == NULL || ex->ev_err == NULL || ex->ev_exit == NULL || ex->ev_deadline == NULL)
        abort(); /* libevent allocation failure: util.h's policy */
    event_add(ex->ev_out, NULL);
    event_add(ex->ev_err, NULL);
    struct timeval poll_tv = {0, POLL_EXIT_MS * 1000};
    event_add(ex->ev_exit, ex->proc.pidfd >= 0 ? NULL : &poll_tv);
    if (req->timeout_ms > 0) {
        struct timeval tv = {(time_t)(req->timeout_ms / 1000),
                             (suseconds_t)(req->timeout_ms % 1000) * 1000};
        event_add(ex->ev_deadline, &tv);
    }
    ex->next = b->execs;
    b->execs = ex;
    b->n_execs++;
    idle_arm(b); /* disarms: a command runs */
    return 0;
}

void box_runtime_stop(struct box_runtime *rt, const char *box_id, enum box_exec_end why)
{
    struct box_rt *b = find_rt(rt, box_id);
    if (b == NULL)
        return;
    rt_unlink(rt, b);
    rt_release(b, why);
}

int box_runtime_remove(struct box_runtime *rt, const char *box_id)
{
    if (!box_id_ok(box_id))
        return -1;
    box_runtime_stop(rt, box_id, BOX_EXEC_DELETED);
    char *dir = xasprintf("%s/%s", rt->boxes_dir, box_id);
    char *mnt = xasprintf("%s/%s", dir, DISK_MOUNT);
    int rc = 0;
    (void)disk_unmount(mnt); /* never delete through a mounted disk */
    if (box_runtime_remove_tree(dir) == -1) {
        log_error("box runtime: cannot remove %s: %s", dir, strerror(errno));
        rc = -1;
    }
    free(mnt);
    free(dir);
    return rc;
}
