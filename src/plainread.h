/* plainread: reads a plain socket bufferevent's input with one readv per readable event,
 * without libevent's ioctl(FIONREAD) before it.
 *
 * Why: libevent 2.1's evbuffer_read asks the kernel how many bytes are waiting
 * (ioctl(FIONREAD)) before every read, and then reads at most 4096 bytes. On the plain HTTP
 * path that is two of the six system calls per proxied request (one per socket), about 8 % of
 * the proxy's CPU in a profile (docs/BENCHMARKS.md). Here each read reserves PLAINREAD_MAX in
 * the input buffer and a short read is simply the end of what was there.
 *
 * How: the bufferevent's own read event (the semi-public event2/bufferevent_struct.h, as
 * outflush uses the write event) is re-assigned to this module's callback. Everything else
 * stays libevent's: enabling and disabling reading add and delete that same event, read
 * timeouts are its timeout, and the callback ends exactly as libevent's does — the read
 * callback through bufferevent_trigger (low-water mark and deferral honoured), EOF, errors and
 * timeouts through bufferevent_trigger_event after reading is disabled. A read high-water mark
 * caps each read; libevent's own input callback suspends reading when the mark is reached.
 *
 * Not for bufferevents that use rate limits or bufferevent_setfd (which re-assigns the event
 * back to libevent's callback). */
#ifndef AUTHPROXY_PLAINREAD_H
#define AUTHPROXY_PLAINREAD_H

struct bufferevent;

/* The most one readv takes: what libevent reads at most, less its chain header, so that the
 * chain a read allocates stays 4 KiB. 16 KiB (a 32 KiB chain per read) cost the worker threads'
 * malloc a heap trim (madvise) every dozen requests. */
#define PLAINREAD_MAX 4000

/* Takes over reading for bev, made by bufferevent_socket_new with a socket and not yet
 * reading (EV_READ never enabled). */
void plainread_attach(struct bufferevent *bev);

#endif
