/* backend_latency: request/reply latency of plain-TCP backends (PostgreSQL, Redis, MySQL, HTTP/1
 * without TLS) as the client sees it, per owning workload and per peer.
 *
 * Attach: tracepoints syscalls:sys_enter_* and sys_exit_* of write, sendto, writev, sendmsg
 * (requests) and read, recvfrom, readv, recvmsg (replies); sock:inet_sock_set_state at
 * CLOSE -> SYN_SENT (a new connection on a descriptor forgets the old one's request); and,
 * from fdpeers.h, sys_enter_connect / sys_exit_connect / sys_enter_close, which learn the peer
 * of each (process, fd) at a TCP connect(). Only descriptors with a known peer are measured:
 * TCP client sockets. Files, pipes, unix sockets, UDP sockets (a connected one too: a resolver's
 * queries are the dns probe's) and accepted server sockets return after one lookup.
 * A client socket whose request starts with a TLS record header (write and send are looked at)
 * is forgotten: TLS replies are tls_http's, and a provider's answers must not pass for a
 * backend's latency.
 *
 * Per (process, fd) the state is "awaiting a reply since T", T being the end of the LAST
 * successful write (ret > 0) of the request. The FIRST successful read (ret > 0; EAGAIN on a
 * non-blocking socket and EOF are not a reply) closes the request with latency = now - T, and
 * the descriptor goes back to idle: later reads of the same reply, and data the server pushes
 * without a request, are not counted. The latency therefore covers the network round trip,
 * the backend's work and the client's own delay in reading (e.g. its event loop being busy).
 * Pipelined requests on one connection (several in flight) count as one, measured from the
 * last write; full-duplex protocols (HTTP/2, gRPC) are not request/reply and are not this
 * probe's business.
 *
 * Aggregates (attributed to the current task: syscalls run in process context): a log2
 * histogram of latency in microseconds by cgroup; requests, latency sum (us) and requests at
 * or above SLOW_US by (cgroup, peer). Scope: in_scope(cgroup, tgid, 0, peer port), so a port
 * filter on the backend's port (5432) selects its clients.
 *
 * Rate: the handlers run on EVERY read/write-family syscall of every process on the node (most
 * return after the fd_peers lookup: ~0.1 us per run measured); one event is aggregated per
 * request that got a reply (~4 in-scope runs of ~0.3 us each).
 */
#define FDPEERS_TCP_ONLY 1 /* a connected UDP socket (a resolver's) is not a backend */
#include "fdpeers.h"

/* Requests at or above this latency count as slow. 2^16 us = 65.5 ms, a log2 bucket boundary,
 * so the per-peer slow count agrees with the histogram's buckets >= 65536 us. */
#define SLOW_US 65536

#define DIR_WRITE 1
#define DIR_READ 2

struct call_t {
    u32 fd;
    u32 dir;
};

struct peer_key_t {
    u64 cgid;
    struct peer_t peer;
};

struct peer_val_t {
    u64 requests;
    u64 latency_sum_us;
    u64 slow;
};

/* thread -> read/write call in flight on a measured descriptor. LRU: a thread that dies inside
 * a syscall never reaches sys_exit. Long blocking reads are the oldest entries, so the map is
 * as large as fd_peers. */
BPF_TABLE("lru_hash", u32, struct call_t, calls, 16384);
/* (process, fd) -> end of the last write of the request awaiting its reply. LRU: a descriptor
 * closed while awaiting a reply leaves its entry behind. */
BPF_TABLE("lru_hash", struct fd_key_t, u64, awaiting, 16384);
BPF_HASH(latency_us, struct hist_key_t, u64, 2048);
BPF_HASH(peers, struct peer_key_t, struct peer_val_t, 4096);

/* Whether a request's first bytes are a TLS record header: content type 20-23 (change cipher
 * spec, alert, handshake, application data), then major version 3 and minor 0-4. No plain
 * protocol this probe is for starts that way (PostgreSQL messages start with a type letter or a
 * length, HTTP/1 with a method, Redis with '*'). */
static __always_inline int is_tls_record(const void *buf) {
    u8 h[3] = {};
    if (!buf || bpf_probe_read_user(&h, sizeof(h), buf) != 0)
        return 0;
    return h[0] >= 20 && h[0] <= 23 && h[1] == 3 && h[2] <= 4;
}

/* buf: the request's buffer for write() and send(); 0 where the call has none to look at. */
static __always_inline int on_enter(u32 fd, u32 dir, const void *buf) {
    if (!is_armed())
        return 0;
    u64 pid_tgid = bpf_get_current_pid_tgid();
    struct fd_key_t k = {};
    k.tgid = pid_tgid >> 32;
    k.fd = fd;
    struct peer_t *peer = fd_peers.lookup(&k);
    if (!peer)
        return 0;  /* not a client socket: the common case, one hash lookup */
    if (!in_scope(bpf_get_current_cgroup_id(), k.tgid, 0, peer->port))
        return 0;
    if (dir == DIR_WRITE && is_tls_record(buf)) {
        /* TLS: its replies are tls_http's (time to first byte, by status); timing them here
         * would mix a provider's answers into the backends' latency. Forgotten until the
         * descriptor connects again. */
        fd_peers.delete(&k);
        awaiting.delete(&k);
        return 0;
    }
    u32 tid = pid_tgid;
    struct call_t c = {};
    c.fd = fd;
    c.dir = dir;
    calls.update(&tid, &c);
    return 0;
}

/* Only an armed, in-scope on_enter() stores a call, so the exits need no is_armed() of their own. */
static __always_inline int on_exit(long ret) {
    u64 pid_tgid = bpf_get_current_pid_tgid();
    u32 tid = pid_tgid;
    struct call_t *cp = calls.lookup(&tid);
    if (!cp)
        return 0;
    struct call_t c = *cp;
    calls.delete(&tid);
    if (ret <= 0)  /* error (EAGAIN -11 included), EOF or nothing written */
        return 0;
    struct fd_key_t k = {};
    k.tgid = pid_tgid >> 32;
    k.fd = c.fd;
    u64 now = bpf_ktime_get_ns();
    if (c.dir == DIR_WRITE) {
        awaiting.update(&k, &now);  /* the last write so far: the reply is timed from here */
        return 0;
    }
    u64 *sent = awaiting.lookup(&k);
    if (!sent)
        return 0;  /* the rest of a reply already counted, or a push with no request */
    u64 lat_us = (now - *sent) / 1000;
    awaiting.delete(&k);
    struct peer_t *peer = fd_peers.lookup(&k);
    if (!peer)
        return 0;  /* closed by another thread meanwhile */

    u64 cgid = bpf_get_current_cgroup_id();
    u64 zero = 0;
    struct hist_key_t hk = {};
    hk.cgid = cgid;
    hk.slot = bpf_log2l(lat_us);
    u64 *count_latency_us = latency_us.lookup_or_try_init(&hk, &zero);
    INCREMENT_OR_LOST(count_latency_us);

    struct peer_key_t pk = {};
    pk.cgid = cgid;
    pk.peer = *peer;
    struct peer_val_t init = {};
    struct peer_val_t *v = peers.lookup_or_try_init(&pk, &init);
    if (v) {
        __sync_fetch_and_add(&v->requests, 1);
        __sync_fetch_and_add(&v->latency_sum_us, lat_us);
        if (lat_us >= SLOW_US)
            __sync_fetch_and_add(&v->slow, 1);
    } else {
        stat_add(STAT_LOST);
    }
    stat_add(STAT_EVENTS);
    return 0;
}

/* Requests. */
/* Requests. OpenSSL writes its records with write(), asyncio's TLS transport with send()
 * (sendto): both are checked for a TLS record header. */
TRACEPOINT_PROBE(syscalls, sys_enter_write) { return on_enter(args->fd, DIR_WRITE, args->buf); }
TRACEPOINT_PROBE(syscalls, sys_exit_write) { return on_exit(args->ret); }
TRACEPOINT_PROBE(syscalls, sys_enter_sendto) { return on_enter(args->fd, DIR_WRITE, args->buff); }
TRACEPOINT_PROBE(syscalls, sys_exit_sendto) { return on_exit(args->ret); }
TRACEPOINT_PROBE(syscalls, sys_enter_writev) { return on_enter(args->fd, DIR_WRITE, 0); }
TRACEPOINT_PROBE(syscalls, sys_exit_writev) { return on_exit(args->ret); }
TRACEPOINT_PROBE(syscalls, sys_enter_sendmsg) { return on_enter(args->fd, DIR_WRITE, 0); }
TRACEPOINT_PROBE(syscalls, sys_exit_sendmsg) { return on_exit(args->ret); }

/* Replies. */
TRACEPOINT_PROBE(syscalls, sys_enter_read) { return on_enter(args->fd, DIR_READ, 0); }
TRACEPOINT_PROBE(syscalls, sys_exit_read) { return on_exit(args->ret); }
TRACEPOINT_PROBE(syscalls, sys_enter_recvfrom) { return on_enter(args->fd, DIR_READ, 0); }
TRACEPOINT_PROBE(syscalls, sys_exit_recvfrom) { return on_exit(args->ret); }
TRACEPOINT_PROBE(syscalls, sys_enter_readv) { return on_enter(args->fd, DIR_READ, 0); }
TRACEPOINT_PROBE(syscalls, sys_exit_readv) { return on_exit(args->ret); }
TRACEPOINT_PROBE(syscalls, sys_enter_recvmsg) { return on_enter(args->fd, DIR_READ, 0); }
TRACEPOINT_PROBE(syscalls, sys_exit_recvmsg) { return on_exit(args->ret); }

/* A new TCP connection on a descriptor number that an earlier connection used (close, then a
 * reconnect gets the lowest free fd) must not inherit a request left awaiting: a server that
 * speaks first (MySQL's greeting) would otherwise close it with a bogus latency. Inside
 * connect() the thread's fdpeers entry names the descriptor. */
TRACEPOINT_PROBE(sock, inet_sock_set_state) {
    if (!is_armed() || args->protocol != PROTO_TCP || args->newstate != 2 /* TCP_SYN_SENT */)
        return 0;
    struct fd_key_t k = {};
    if (fdpeers_saw_tcp(&k))
        awaiting.delete(&k);
    return 0;
}
