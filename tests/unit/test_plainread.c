/* plainread: a socket bufferevent's reads made without ioctl(FIONREAD), keeping libevent's
 * contract — data reaches the input and the read callback, EOF, errors and read timeouts reach
 * the event callback with reading disabled, enable/disable and a read high-water mark hold.
 * Real sockets (socketpairs, a loopback TCP pair), real libevent loop. */
#include <errno.h>
#include <netinet/in.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cmocka.h>
#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/event.h>

#include "plainread.h"

struct fixture {
    struct event_base *base;
    struct bufferevent *bev;
    int peer; /* the other end */
    int read_cbs;
    short events; /* what the event callback saw */
};

static void read_cb(struct bufferevent *bev, void *arg)
{
    (void)bev;
    ((struct fixture *)arg)->read_cbs++;
}

static void event_cb(struct bufferevent *bev, short what, void *arg)
{
    (void)bev;
    ((struct fixture *)arg)->events |= what;
}

/* A reading bufferevent on fd (its peer: peer) with plainread attached. */
static void setup_fds(struct fixture *fx, int fd, int peer)
{
    memset(fx, 0, sizeof(*fx));
    fx->peer = peer;
    fx->base = event_base_new();
    assert_non_null(fx->base);
    fx->bev = bufferevent_socket_new(fx->base, fd, BEV_OPT_CLOSE_ON_FREE | BEV_OPT_DEFER_CALLBACKS);
    assert_non_null(fx->bev);
    plainread_attach(fx->bev);
    bufferevent_setcb(fx->bev, read_cb, NULL, event_cb, fx);
    bufferevent_enable(fx->bev, EV_READ);
}

static void setup(struct fixture *fx)
{
    int sv[2];
    assert_int_equal(socketpair(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK, 0, sv), 0);
    setup_fds(fx, sv[0], sv[1]);
}

static void teardown_fx(struct fixture *fx)
{
    bufferevent_free(fx->bev);
    event_base_loop(fx->base, EVLOOP_NONBLOCK); /* releases a bufferevent with deferred cbs */
    event_base_free(fx->base);
    if (fx->peer != -1)
        close(fx->peer);
}

static void turn(struct fixture *fx)
{
    event_base_loop(fx->base, EVLOOP_NONBLOCK);
}

static void send_all(int fd, const void *data, size_t len)
{
    const unsigned char *p = data;
    while (len > 0) {
        ssize_t n = send(fd, p, len, MSG_NOSIGNAL);
        assert_true(n > 0);
        p += n;
        len -= (size_t)n;
    }
}

/* A small message arrives whole and runs the read callback once; a large one arrives intact,
 * never more than PLAINREAD_MAX per read. */
static void test_data_reaches_the_input_and_the_read_callback(void **state)
{
    (void)state;
    struct fixture fx;
    setup(&fx);
    send_all(fx.peer, "GET / HTTP/1.1\r\n\r\n", 18);
    turn(&fx);
    turn(&fx); /* the deferred read callback */
    struct evbuffer *in = bufferevent_get_input(fx.bev);
    assert_int_equal(evbuffer_get_length(in), 18);
    assert_memory_equal(evbuffer_pullup(in, -1), "GET / HTTP/1.1\r\n\r\n", 18);
    assert_int_equal(fx.read_cbs, 1);
    assert_int_equal(fx.events, 0);
    evbuffer_drain(in, 18);

    size_t total = 200000;
    unsigned char *data = malloc(total);
    for (size_t i = 0; i < total; i++)
        data[i] = (unsigned char)(i * 131 + 3);
    unsigned char *got = malloc(total);
    size_t sent = 0, have = 0;
    for (int rounds = 0; have < total && rounds < 100000; rounds++) {
        if (sent < total) {
            ssize_t n = send(fx.peer, data + sent, total - sent, MSG_NOSIGNAL);
            if (n > 0)
                sent += (size_t)n;
        }
        event_base_loop(fx.base, EVLOOP_ONCE | EVLOOP_NONBLOCK);
        size_t len = evbuffer_get_length(in);
        assert_true(len <= PLAINREAD_MAX); /* one readv per readable event, at most this */
        evbuffer_remove(in, got + have, len);
        have += len;
    }
    assert_int_equal(have, total);
    assert_memory_equal(got, data, total);
    free(data);
    free(got);
    teardown_fx(&fx);
}

/* The peer's orderly close: what it sent first is read, then EOF|READING, reading disabled. */
static void test_eof_reaches_the_event_callback_and_stops_reading(void **state)
{
    (void)state;
    struct fixture fx;
    setup(&fx);
    send_all(fx.peer, "last", 4);
    close(fx.peer);
    fx.peer = -1;
    for (int i = 0; i < 5; i++)
        turn(&fx);
    assert_int_equal(evbuffer_get_length(bufferevent_get_input(fx.bev)), 4);
    assert_int_equal(fx.events, BEV_EVENT_EOF | BEV_EVENT_READING);
    assert_int_equal(bufferevent_get_enabled(fx.bev) & EV_READ, 0);
    teardown_fx(&fx);
}

/* A reset connection: ERROR|READING with the socket's error in errno terms. */
static void test_a_reset_reaches_the_event_callback_as_an_error(void **state)
{
    (void)state;
    int l = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t alen = sizeof(a);
    assert_int_equal(bind(l, (struct sockaddr *)&a, sizeof(a)), 0);
    assert_int_equal(listen(l, 1), 0);
    assert_int_equal(getsockname(l, (struct sockaddr *)&a, &alen), 0);
    int c = socket(AF_INET, SOCK_STREAM, 0);
    assert_int_equal(connect(c, (struct sockaddr *)&a, sizeof(a)), 0);
    int s = accept(l, NULL, NULL);
    assert_true(s >= 0);
    close(l);
    evutil_make_socket_nonblocking(s);
    struct fixture fx;
    setup_fds(&fx, s, c);
    struct linger lg = {.l_onoff = 1, .l_linger = 0};
    setsockopt(c, SOL_SOCKET, SO_LINGER, &lg, sizeof(lg));
    close(c); /* an RST */
    fx.peer = -1;
    for (int i = 0; i < 5 && fx.events == 0; i++) {
        usleep(10000);
        turn(&fx);
    }
    assert_int_equal(fx.events, BEV_EVENT_ERROR | BEV_EVENT_READING);
    assert_int_equal(bufferevent_get_enabled(fx.bev) & EV_READ, 0);
    teardown_fx(&fx);
}

/* The read timeout still works: none while data comes, TIMEOUT|READING when it stops. */
static void test_the_read_timeout_fires_only_without_data(void **state)
{
    (void)state;
    struct fixture fx;
    setup(&fx);
    struct timeval tv = {.tv_sec = 0, .tv_usec = 100000};
    bufferevent_set_timeouts(fx.bev, &tv, NULL);
    for (int i = 0; i < 4; i++) { /* 4 x 40 ms with data: longer than the timeout in all */
        send_all(fx.peer, "x", 1);
        usleep(40000);
        turn(&fx);
    }
    assert_int_equal(fx.events, 0);
    assert_int_equal(evbuffer_get_length(bufferevent_get_input(fx.bev)), 4);
    for (int i = 0; i < 50 && fx.events == 0; i++) {
        usleep(10000);
        turn(&fx);
    }
    assert_int_equal(fx.events, BEV_EVENT_TIMEOUT | BEV_EVENT_READING);
    assert_int_equal(bufferevent_get_enabled(fx.bev) & EV_READ, 0);
    teardown_fx(&fx);
}

/* Disabled reading reads nothing; enabled again, it reads what waited. A read high-water mark
 * caps the input; draining below it resumes reading. */
static void test_disable_and_the_high_water_mark_hold(void **state)
{
    (void)state;
    struct fixture fx;
    setup(&fx);
    struct evbuffer *in = bufferevent_get_input(fx.bev);
    bufferevent_disable(fx.bev, EV_READ);
    send_all(fx.peer, "0123456789abcdefghij", 20);
    turn(&fx);
    assert_int_equal(evbuffer_get_length(in), 0);

    /* No read callback from here: libevent itself re-runs one that leaves the input at the
     * mark, turn after turn (bufferevent_inbuf_wm_check). */
    bufferevent_setcb(fx.bev, NULL, NULL, event_cb, &fx);
    bufferevent_setwatermark(fx.bev, EV_READ, 0, 8);
    bufferevent_enable(fx.bev, EV_READ);
    for (int i = 0; i < 5; i++)
        turn(&fx);
    assert_int_equal(evbuffer_get_length(in), 8);
    assert_memory_equal(evbuffer_pullup(in, -1), "01234567", 8);
    evbuffer_drain(in, 8);
    for (int i = 0; i < 5; i++)
        turn(&fx);
    assert_int_equal(evbuffer_get_length(in), 8);
    assert_memory_equal(evbuffer_pullup(in, -1), "89abcdef", 8);
    assert_int_equal(fx.events, 0);
    teardown_fx(&fx);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_data_reaches_the_input_and_the_read_callback),
        cmocka_unit_test(test_eof_reaches_the_event_callback_and_stops_reading),
        cmocka_unit_test(test_a_reset_reaches_the_event_callback_as_an_error),
        cmocka_unit_test(test_the_read_timeout_fires_only_without_data),
        cmocka_unit_test(test_disable_and_the_high_water_mark_hold),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
