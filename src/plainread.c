#include "plainread.h"

#include <errno.h>
#include <stdlib.h>
#include <sys/uio.h>

#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/bufferevent_struct.h> /* ev_read of a socket bufferevent: see plainread.h */
#include <event2/event.h>

/* Reads what the socket holds into the space reserved in in (at most max bytes). Returns the
 * bytes read, 0 at EOF, -1 with errno set. */
static ssize_t plainread_into(struct evbuffer *in, evutil_socket_t fd, size_t max)
{
    struct evbuffer_iovec vec[2];
    struct iovec iov[2];
    int n = evbuffer_reserve_space(in, (ev_ssize_t)max, vec, 2);
    if (n <= 0)
        abort(); /* out of memory: the documented policy (util.h) */
    size_t left = max;
    for (int i = 0; i < n; i++) {
        size_t len = vec[i].iov_len < left ? vec[i].iov_len : left;
        iov[i].iov_base = vec[i].iov_base;
        iov[i].iov_len = len;
        left -= len;
    }
    ssize_t got = readv(fd, iov, n);
    if (got <= 0)
        return got; /* nothing committed: the reserved space is simply unused */
    size_t rest = (size_t)got;
    int used = 0;
    for (; used < n && rest > 0; used++) {
        vec[used].iov_len = rest < iov[used].iov_len ? rest : iov[used].iov_len;
        rest -= vec[used].iov_len;
    }
    evbuffer_commit_space(in, vec, used);
    return got;
}

/* The bufferevent's read event: libevent's bufferevent_readcb (bufferevent_sock.c) with the
 * read made by plainread_into, through public calls only. */
static void plainread_cb(evutil_socket_t fd, short what, void *arg)
{
    struct bufferevent *bev = arg;
    short report = BEV_EVENT_READING;
    bufferevent_incref(bev);
    if (what == EV_TIMEOUT) { /* a bare timeout: with EV_READ as well, data came in time */
        report |= BEV_EVENT_TIMEOUT;
        goto fail;
    }
    struct evbuffer *in = bufferevent_get_input(bev);
    size_t max = PLAINREAD_MAX, low = 0, high = 0;
    bufferevent_getwatermark(bev, EV_READ, &low, &high);
    if (high != 0) {
        size_t have = evbuffer_get_length(in);
        if (have >= high)
            goto out; /* libevent's input callback suspends reading at the mark */
        if (high - have < max)
            max = high - have;
    }
    /* A socket bufferevent keeps its input's end frozen so that only its read path adds to
     * it; that path unfreezes around its read in the same way. */
    evbuffer_unfreeze(in, 0);
    ssize_t got = plainread_into(in, fd, max);
    int err = errno;
    evbuffer_freeze(in, 0);
    if (got < 0 && (err == EAGAIN || err == EWOULDBLOCK || err == EINTR))
        goto out; /* spurious wake-up: wait for the next one */
    if (got <= 0) {
        report |= got == 0 ? BEV_EVENT_EOF : BEV_EVENT_ERROR;
        errno = err; /* for the event callback's EVUTIL_SOCKET_ERROR() */
        goto fail;
    }
    bufferevent_trigger(bev, EV_READ, 0);
    goto out;
fail:
    bufferevent_disable(bev, EV_READ);
    bufferevent_trigger_event(bev, report, 0);
out:
    bufferevent_decref(bev);
}

/* See plainread.h. */
void plainread_attach(struct bufferevent *bev)
{
    event_assign(&bev->ev_read, bev->ev_base, bufferevent_getfd(bev),
                 EV_READ | EV_PERSIST | EV_FINALIZE, plainread_cb, bev);
}
