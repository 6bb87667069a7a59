#include "audit.h"

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <jansson.h>

#include "util.h"

struct audit_log {
    int fd;
    bool owns_fd;
    pthread_mutex_t lock; /* one line at a time */
};

struct audit_log *audit_open(const char *path)
{
    if (path == NULL)
        return NULL;
    struct audit_log *a = xcalloc(1, sizeof(*a));
    if (strcmp(path, "-") == 0) {
        a->fd = 1;
    } else {
        a->fd = open(path, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0600);
        if (a->fd == -1) {
            int saved = errno;
            free(a);
            errno = saved;
            return NULL;
        }
        a->owns_fd = true;
    }
    pthread_mutex_init(&a->lock, NULL);
    return a;
}

void audit_close(struct audit_log *a)
{
    if (a == NULL)
        return;
    if (a->owns_fd)
        close(a->fd);
    pthread_mutex_destroy(&a->lock);
    free(a);
}

static json_t *str_or_null(const char *s)
{
    return s ? json_string(s) : json_null();
}

void audit_write(struct audit_log *a, const struct audit_record *r)
{
    if (a == NULL)
        return;
    struct timespec ts;
    struct tm tm;
    char when[40];
    clock_gettime(CLOCK_REALTIME, &ts);
    gmtime_r(&ts.tv_sec, &tm);
    size_t n = strftime(when, sizeof(when), "%Y-%m-%dT%H:%M:%S", &tm);
    snprintf(when + n, sizeof(when) - n, ".%06ldZ", ts.tv_nsec / 1000);

    json_t *injected = json_array();
    for (size_t i = 0; i < r->n_injected; i++)
        json_array_append_new(injected, json_string(r->injected[i]));
    json_t *o = json_object();
    json_object_set_new(o, "ts", json_string(when));
    json_object_set_new(o, "sandbox", str_or_null(r->sandbox));
    json_object_set_new(o, "workspace", str_or_null(r->workspace));
    json_object_set_new(o, "client", str_or_null(r->client));
    json_object_set_new(o, "method", str_or_null(r->method));
    json_object_set_new(o, "scheme", str_or_null(r->scheme));
    json_object_set_new(o, "host", str_or_null(r->host));
    json_object_set_new(o, "port", r->port ? json_integer(r->port) : json_null());
    json_object_set_new(o, "path", str_or_null(r->path));
    json_object_set_new(o, "decision", str_or_null(r->decision));
    json_object_set_new(o, "decided_by", str_or_null(r->decided_by));
    json_object_set_new(o, "injected_headers", injected);
    json_object_set_new(o, "status", r->status ? json_integer(r->status) : json_null());
    json_object_set_new(o, "upstream_status",
                        r->upstream_status ? json_integer(r->upstream_status) : json_null());
    json_object_set_new(o, "bytes_in", json_integer((json_int_t)r->bytes_from_client));
    json_object_set_new(o, "bytes_out", json_integer((json_int_t)r->bytes_to_client));
    json_object_set_new(o, "duration_ms", json_real((double)r->duration_us / 1000.0));
    json_object_set_new(o, "error", str_or_null(r->error));
    json_object_set_new(o, "policy_version", json_integer((json_int_t)r->policy_version));
    char *line = json_dumps(o, JSON_COMPACT | JSON_PRESERVE_ORDER | JSON_ENSURE_ASCII |
                                   JSON_REAL_PRECISION(10));
    json_decref(o);
    if (line == NULL)
        return;
    size_t len = strlen(line);
    line[len] = '\n'; /* replaces the NUL: one write of the whole line */
    pthread_mutex_lock(&a->lock);
    (void)write_all(a->fd, line, len + 1);
    pthread_mutex_unlock(&a->lock);
    free(line);
}
