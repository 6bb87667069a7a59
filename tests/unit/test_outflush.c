/* outflush: plain sockets' output written once per loop turn, straight to the socket; what the
 * socket does not take, and errors, go back to libevent; TLS bufferevents' output written by
 * their own path in the same turn, head and body in one record. Real sockets (socketpairs),
 * real libevent loop, real TLS. */
#include <errno.h>
#include <setjmp.h>
#include <signal.h>
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
#include <event2/bufferevent_ssl.h>
#include <event2/event.h>
#include <openssl/evp.h>
#include <openssl/ssl.h>
#include <openssl/x509.h>

#include "outflush.h"

struct fixture {
    struct event_base *base;
    struct outflush_queue q;
    struct outflush f;
    struct bufferevent *bev;
    int peer; /* the other end of the socketpair */
    int write_cbs;
    short events; /* what the event callback saw */
};

static void write_cb(struct bufferevent *bev, void *arg)
{
    (void)bev;
    ((struct fixture *)arg)->write_cbs++;
}

static void event_cb(struct bufferevent *bev, short what, void *arg)
{
    (void)bev;
    ((struct fixture *)arg)->events |= what;
}

/* A bufferevent on one end of a socketpair of the given type, attached to a queue. */
static void setup(struct fixture *fx, int type)
{
    memset(fx, 0, sizeof(*fx));
    int sv[2];
    assert_int_equal(socketpair(AF_UNIX, type | SOCK_NONBLOCK, 0, sv), 0);
    fx->peer = sv[1];
    fx->base = event_base_new();
    assert_non_null(fx->base);
    assert_int_equal(outflush_queue_init(&fx->q, fx->base), 0);
    fx->bev = bufferevent_socket_new(fx->base, sv[0], BEV_OPT_CLOSE_ON_FREE | BEV_OPT_DEFER_CALLBACKS);
    assert_non_null(fx->bev);
    bufferevent_setcb(fx->bev, NULL, write_cb, event_cb, fx);
    outflush_attach(&fx->f, &fx->q, fx->bev);
}

static void teardown_fx(struct fixture *fx)
{
    outflush_detach(&fx->f);
    bufferevent_free(fx->bev);
    event_base_loop(fx->base, EVLOOP_NONBLOCK); /* releases a bufferevent with deferred cbs */
    outflush_queue_free(&fx->q);
    event_base_free(fx->base);
    close(fx->peer);
}

static void turn(struct fixture *fx)
{
    event_base_loop(fx->base, EVLOOP_NONBLOCK);
}

/* Two adds in one turn leave as one write (one SEQPACKET record), after the turn's callbacks
 * and not before; the write event is never armed; the write callback runs once drained. */
static void test_adds_of_one_turn_leave_in_one_write_without_the_write_event(void **state)
{
    (void)state;
    struct fixture fx;
    setup(&fx, SOCK_SEQPACKET);
    struct evbuffer *out = bufferevent_get_output(fx.bev);
    evbuffer_add(out, "HTTP/1.1 200 OK\r\n\r\n", 19);
    evbuffer_add(out, "body", 4);
    char buf[256];
    assert_int_equal(recv(fx.peer, buf, sizeof(buf), 0), -1); /* nothing written yet */
    assert_int_equal(errno, EAGAIN);

    turn(&fx);
    ssize_t n = recv(fx.peer, buf, sizeof(buf), 0);
    assert_int_equal(n, 23); /* one record: head and body together */
    assert_memory_equal(buf, "HTTP/1.1 200 OK\r\n\r\nbody", 23);
    assert_int_equal(evbuffer_get_length(out), 0);
    assert_int_equal(bufferevent_get_enabled(fx.bev) & EV_WRITE, 0);
    turn(&fx); /* the deferred write callback */
    assert_int_equal(fx.write_cbs, 1);

    /* The next response takes the same path. */
    evbuffer_add(out, "again", 5);
    turn(&fx);
    assert_int_equal(recv(fx.peer, buf, sizeof(buf), 0), 5);
    assert_int_equal(bufferevent_get_enabled(fx.bev) & EV_WRITE, 0);
    teardown_fx(&fx);
}

/* More than the socket takes: the rest goes to libevent (EV_WRITE on) and arrives intact as the
 * peer reads; the write callback runs when all is out. */
static void test_what_the_socket_does_not_take_is_written_by_libevent(void **state)
{
    (void)state;
    struct fixture fx;
    setup(&fx, SOCK_STREAM);
    int small = 4096;
    setsockopt(bufferevent_getfd(fx.bev), SOL_SOCKET, SO_SNDBUF, &small, sizeof(small));
    size_t total = 1 << 20;
    unsigned char *data = malloc(total);
    for (size_t i = 0; i < total; i++)
        data[i] = (unsigned char)(i * 31 + 7);
    evbuffer_add(bufferevent_get_output(fx.bev), data, total);
    turn(&fx);
    assert_true(evbuffer_get_length(bufferevent_get_output(fx.bev)) > 0);
    assert_int_not_equal(bufferevent_get_enabled(fx.bev) & EV_WRITE, 0);

    unsigned char *got = malloc(total);
    size_t have = 0;
    for (int rounds = 0; have < total && rounds < 100000; rounds++) {
        ssize_t n = recv(fx.peer, got + have, total - have, 0);
        if (n > 0)
            have += (size_t)n;
        turn(&fx);
    }
    assert_int_equal(have, total);
    assert_memory_equal(got, data, total);
    turn(&fx);
    assert_true(fx.write_cbs >= 1);
    assert_int_equal(fx.events, 0);
    free(got);
    free(data);
    teardown_fx(&fx);
}

/* A write error is reported the way libevent reports it: through the event callback. */
static void test_a_write_error_reaches_the_event_callback(void **state)
{
    (void)state;
    struct fixture fx;
    setup(&fx, SOCK_STREAM);
    close(fx.peer);
    fx.peer = -1;
    evbuffer_add(bufferevent_get_output(fx.bev), "lost", 4);
    for (int i = 0; i < 10 && fx.events == 0; i++)
        turn(&fx);
    assert_int_not_equal(fx.events & BEV_EVENT_ERROR, 0);
    assert_int_not_equal(fx.events & BEV_EVENT_WRITING, 0);
    teardown_fx(&fx);
}

/* Detaching with output queued leaves it to libevent (nothing stranded, no dangling entry in
 * the queue); a detached bufferevent can be freed before the flush event runs. */
static void test_detach_hands_queued_output_to_libevent(void **state)
{
    (void)state;
    struct fixture fx;
    setup(&fx, SOCK_SEQPACKET);
    evbuffer_add(bufferevent_get_output(fx.bev), "queued", 6);
    outflush_detach(&fx.f);
    assert_int_not_equal(bufferevent_get_enabled(fx.bev) & EV_WRITE, 0);
    for (int i = 0; i < 3; i++)
        turn(&fx);
    char buf[16];
    assert_int_equal(recv(fx.peer, buf, sizeof(buf), 0), 6);

    /* Queued, detached and freed within one turn: the flush event finds an empty queue. */
    outflush_attach(&fx.f, &fx.q, fx.bev);
    evbuffer_add(bufferevent_get_output(fx.bev), "gone", 4);
    outflush_detach(&fx.f);
    bufferevent_free(fx.bev);
    fx.bev = NULL;
    turn(&fx);
    outflush_queue_free(&fx.q);
    event_base_free(fx.base);
    close(fx.peer);
}

/* A self-signed P-256 certificate for key, CN "outflush.test". */
static X509 *self_signed(EVP_PKEY *key)
{
    X509 *cert = X509_new();
    assert_non_null(cert);
    X509_set_version(cert, 2);
    ASN1_INTEGER_set(X509_get_serialNumber(cert), 1);
    X509_gmtime_adj(X509_getm_notBefore(cert), -60);
    X509_gmtime_adj(X509_getm_notAfter(cert), 3600);
    X509_set_pubkey(cert, key);
    X509_NAME *name = X509_get_subject_name(cert);
    X509_NAME_add_entry_by_txt(name, "CN", MBSTRING_ASC, (const unsigned char *)"outflush.test",
                               -1, -1, 0);
    X509_set_issuer_name(cert, name);
    assert_true(X509_sign(cert, key, EVP_sha256()) > 0);
    return cert;
}

/* The raw TLS records waiting on fd (peeked, not consumed): how many, and their total size. */
static int peek_records(int fd, size_t *total)
{
    unsigned char buf[65536];
    ssize_t n = recv(fd, buf, sizeof(buf), MSG_PEEK);
    *total = n > 0 ? (size_t)n : 0;
    int records = 0;
    for (size_t off = 0; off + 5 <= *total; records++)
        off += 5 + ((size_t)buf[off + 3] << 8 | buf[off + 4]);
    return records;
}

/* A TLS bufferevent: a response head and body added as two chains in one turn leave in that
 * turn as one TLS record (libevent alone makes a record, and a write, of each chain), and the
 * peer decrypts them intact; the next response takes the same path. */
static void test_tls_head_and_body_leave_as_one_record_in_the_same_turn(void **state)
{
    (void)state;
    int sv[2];
    assert_int_equal(socketpair(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK, 0, sv), 0);
    EVP_PKEY *key = EVP_EC_gen("P-256");
    assert_non_null(key);
    X509 *cert = self_signed(key);
    SSL_CTX *server_ctx = SSL_CTX_new(TLS_server_method());
    SSL_CTX *client_ctx = SSL_CTX_new(TLS_client_method());
    assert_non_null(server_ctx);
    assert_non_null(client_ctx);
    assert_int_equal(SSL_CTX_use_certificate(server_ctx, cert), 1);
    assert_int_equal(SSL_CTX_use_PrivateKey(server_ctx, key), 1);
    SSL_CTX_set_num_tickets(server_ctx, 0); /* only the records under test reach the peer */

    struct event_base *base = event_base_new();
    struct outflush_queue q;
    struct outflush f;
    assert_int_equal(outflush_queue_init(&q, base), 0);
    struct bufferevent *bev =
        bufferevent_openssl_socket_new(base, sv[0], SSL_new(server_ctx), BUFFEREVENT_SSL_ACCEPTING,
                                       BEV_OPT_CLOSE_ON_FREE | BEV_OPT_DEFER_CALLBACKS);
    assert_non_null(bev);
    bufferevent_enable(bev, EV_READ | EV_WRITE);
    outflush_attach_tls(&f, &q, bev);
    SSL *client = SSL_new(client_ctx);
    SSL_set_fd(client, sv[1]);
    int rc = 0;
    for (int i = 0; i < 1000 && rc != 1; i++) {
        rc = SSL_connect(client);
        event_base_loop(base, EVLOOP_NONBLOCK);
    }
    assert_int_equal(rc, 1);
    for (int i = 0; i < 10; i++) /* the server's side of the handshake settles */
        event_base_loop(base, EVLOOP_NONBLOCK);

    for (int round = 0; round < 2; round++) {
        struct evbuffer *body = evbuffer_new();
        evbuffer_add(body, "body", 4);
        struct evbuffer *out = bufferevent_get_output(bev);
        evbuffer_add(out, "HTTP/1.1 200 OK\r\n\r\n", 19);
        evbuffer_add_buffer(out, body); /* moves the chain: the output now holds two */
        evbuffer_free(body);
        event_base_loop(base, EVLOOP_NONBLOCK);
        size_t total;
        assert_int_equal(peek_records(sv[1], &total), 1);
        assert_int_equal(evbuffer_get_length(out), 0);
        char got[64];
        int n = SSL_read(client, got, sizeof(got));
        assert_int_equal(n, 23);
        assert_memory_equal(got, "HTTP/1.1 200 OK\r\n\r\nbody", 23);
    }

    outflush_detach(&f);
    bufferevent_free(bev);
    event_base_loop(base, EVLOOP_NONBLOCK);
    outflush_queue_free(&q);
    event_base_free(base);
    SSL_free(client);
    close(sv[1]);
    SSL_CTX_free(client_ctx);
    SSL_CTX_free(server_ctx);
    X509_free(cert);
    EVP_PKEY_free(key);
}

int main(void)
{
    signal(SIGPIPE, SIG_IGN); /* as the daemon does (serve.c) */
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_adds_of_one_turn_leave_in_one_write_without_the_write_event),
        cmocka_unit_test(test_what_the_socket_does_not_take_is_written_by_libevent),
        cmocka_unit_test(test_a_write_error_reaches_the_event_callback),
        cmocka_unit_test(test_detach_hands_queued_output_to_libevent),
        cmocka_unit_test(test_tls_head_and_body_leave_as_one_record_in_the_same_turn),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
