/* tls_http: HTTP/1.x response statuses and time to first response byte, per workload and peer,
 * read from the plaintext side of the target's libssl.
 *
 * Attach: uprobes and uretprobes on libssl's SSL_write, SSL_write_ex, SSL_read and SSL_read_ex
 * (CPython 3.10+ calls the _ex family; whichever exist are attached, once per library file, for
 * every process: the scope filter runs here); tracepoints syscalls:sys_enter_write and
 * sys_enter_sendto (the descriptor a connection writes to), plus fdpeers.h's connect()/close()
 * tracepoints (the peer of that descriptor).
 *
 * Per connection (keyed by process and SSL*): when the request was last written (SSL_write*
 * returned), and whether its response has started. The first SSL_read* after a write that
 * returns data is the response start: its first 13 bytes ("HTTP/1.1 429 ") give the status, and
 * its return time minus the write's gives the time to first byte. Later reads are the body and
 * are never counted again. This is how provider throttling shows even when the client SDK
 * retries the 429s away before the application sees them.
 *
 * The SSL* does not name its socket: the descriptor is learned when the thread does a write()
 * or sendto() syscall while inside SSL_write for that SSL*. Clients that drive TLS over memory
 * BIOs (asyncio's SSLObject: the event loop writes the socket later) keep an unknown peer,
 * rendered "unknown". HTTP/2 (binary frames, no status line) is out of scope: such responses
 * are not counted.
 *
 * Aggregates: responses by (cgroup, peer, status); a log2 histogram of time to first byte in
 * microseconds by cgroup; time-to-first-byte sum and count by (cgroup, peer).
 * Rate: one aggregated event per HTTP response. The cost is the uprobe traps, paid per SSL_read
 * and SSL_write call by every process that maps the probed libssl (the scope is checked after
 * the trap): about 13 us of CPU per call, measured on this project's VM (traps are usually
 * cheaper on bare metal).
 * A response takes 3-4 calls; a streamed body one more per chunk. The write()/sendto()
 * tracepoints add one map lookup per syscall on the node while armed.
 */
#include "fdpeers.h"

struct ssl_key_t {
    u64 ssl;
    u32 tgid;
    u32 pad;
};

struct conn_t {
    u64 written_ns; /* when the request was last written (SSL_write* returned) */
    u32 fd;
    u8 fd_known;
    u8 awaiting; /* a request was written and its response has not started yet */
    u16 pad;
};

struct read_call_t {
    u64 ssl;
    u64 buf;
    u64 readbytes; /* SSL_read_ex's size_t *readbytes; 0 for SSL_read (which returns the count) */
};

struct status_key_t {
    u64 cgid;
    struct peer_t peer;
    u32 status;
    u32 pad;
};

struct peer_key_t {
    u64 cgid;
    struct peer_t peer;
};

struct ttfb_sum_t {
    u64 sum_us;
    u64 count;
};

/* LRU: a connection freed without a last read, or a thread that dies inside SSL_*, must not
 * fill its map. */
BPF_TABLE("lru_hash", struct ssl_key_t, struct conn_t, conns, 16384);
BPF_TABLE("lru_hash", u32, u64, write_calls, 4096);  /* thread -> SSL* it is writing */
BPF_TABLE("lru_hash", u32, struct read_call_t, read_calls, 4096);  /* thread -> read in flight */
BPF_HASH(statuses, struct status_key_t, u64, 4096);
BPF_HASH(ttfb_us, struct hist_key_t, u64, 2048);
BPF_HASH(peer_ttfb, struct peer_key_t, struct ttfb_sum_t, 4096);

static __always_inline struct ssl_key_t ssl_key(u64 ssl, u32 tgid) {
    struct ssl_key_t k = {};
    k.ssl = ssl;
    k.tgid = tgid;
    return k;
}

/* SSL_write and SSL_write_ex entry: only the SSL* matters (the request's bytes are not read). */
int ssl_write_enter(struct pt_regs *ctx) {
    if (!is_armed())
        return 0;
    u64 id = bpf_get_current_pid_tgid();
    if (!in_scope(bpf_get_current_cgroup_id(), id >> 32, 0, 0))
        return 0;
    u32 tid = id;
    u64 ssl = PT_REGS_PARM1(ctx);
    write_calls.update(&tid, &ssl);
    return 0;
}

/* Inside SSL_write, the thread's socket write names the connection's descriptor. Learned on
 * every write, not once: a freed SSL*'s address can come back for a new connection. */
static __always_inline int learn_fd(u32 fd) {
    if (!is_armed())
        return 0;
    u64 id = bpf_get_current_pid_tgid();
    u32 tid = id;
    u64 *ssl = write_calls.lookup(&tid);
    if (!ssl)
        return 0;
    struct ssl_key_t k = ssl_key(*ssl, id >> 32);
    struct conn_t zero = {};
    struct conn_t *c = conns.lookup_or_try_init(&k, &zero);
    if (!c) {
        stat_add(STAT_LOST);
        return 0;
    }
    c->fd = fd;
    c->fd_known = 1;
    return 0;
}

TRACEPOINT_PROBE(syscalls, sys_enter_write) {
    return learn_fd(args->fd);
}

TRACEPOINT_PROBE(syscalls, sys_enter_sendto) {
    return learn_fd(args->fd);
}

/* SSL_write returns the bytes written (> 0), SSL_write_ex returns 1: both > 0 on success. */
int ssl_write_return(struct pt_regs *ctx) {
    if (!is_armed())
        return 0;
    u64 id = bpf_get_current_pid_tgid();
    u32 tid = id;
    u64 *sslp = write_calls.lookup(&tid);
    if (!sslp)
        return 0;
    struct ssl_key_t k = ssl_key(*sslp, id >> 32);
    write_calls.delete(&tid);
    if ((int)PT_REGS_RC(ctx) <= 0)
        return 0;
    struct conn_t zero = {};
    struct conn_t *c = conns.lookup_or_try_init(&k, &zero);
    if (!c) {
        stat_add(STAT_LOST);
        return 0;
    }
    c->written_ns = bpf_ktime_get_ns();
    c->awaiting = 1;
    return 0;
}

/* A read is followed only when it can be a response's start: its connection, which exists only
 * for in-scope writers, awaits one. Body reads cost one lookup here and nothing at return. */
static __always_inline int read_enter(struct pt_regs *ctx, u64 readbytes) {
    if (!is_armed())
        return 0;
    u64 id = bpf_get_current_pid_tgid();
    struct ssl_key_t k = ssl_key(PT_REGS_PARM1(ctx), id >> 32);
    struct conn_t *c = conns.lookup(&k);
    if (!c || !c->awaiting)
        return 0;
    u32 tid = id;
    struct read_call_t call = {};
    call.ssl = k.ssl;
    call.buf = PT_REGS_PARM2(ctx);
    call.readbytes = readbytes;
    read_calls.update(&tid, &call);
    return 0;
}

int ssl_read_enter(struct pt_regs *ctx) {
    return read_enter(ctx, 0);
}

int ssl_read_ex_enter(struct pt_regs *ctx) {
    return read_enter(ctx, PT_REGS_PARM4(ctx));
}

/* "HTTP/1.x SSS" -> SSS, or 0 when the bytes are not an HTTP/1 status line. Fixed offsets. */
static __always_inline u32 parse_status(const char *h) {
    if (h[0] != 'H' || h[1] != 'T' || h[2] != 'T' || h[3] != 'P' || h[4] != '/' || h[5] != '1' ||
        h[6] != '.' || h[8] != ' ' || (h[12] != ' ' && h[12] != '\r'))
        return 0;
    if (h[9] < '1' || h[9] > '5' || h[10] < '0' || h[10] > '9' || h[11] < '0' || h[11] > '9')
        return 0;
    return (h[9] - '0') * 100 + (h[10] - '0') * 10 + (h[11] - '0');
}

int ssl_read_return(struct pt_regs *ctx) {
    if (!is_armed())
        return 0;
    u64 id = bpf_get_current_pid_tgid();
    u32 tid = id, tgid = id >> 32;
    struct read_call_t *cp = read_calls.lookup(&tid);
    if (!cp)
        return 0;
    struct read_call_t call = *cp;
    read_calls.delete(&tid);

    int rc = PT_REGS_RC(ctx);
    u64 n = 0;
    if (call.readbytes) { /* SSL_read_ex: 1 on success, the count in *readbytes */
        if (rc != 1)
            return 0;
        bpf_probe_read_user(&n, sizeof(n), (void *)call.readbytes);
    } else if (rc > 0) {
        n = rc;
    }
    if (n == 0) /* no data yet (WANT_READ on a non-blocking socket, or an error) */
        return 0;

    struct ssl_key_t k = ssl_key(call.ssl, tgid);
    struct conn_t *c = conns.lookup(&k);
    if (!c || !c->awaiting)
        return 0;
    c->awaiting = 0; /* the response has started: the reads that follow are its body */
    u64 ttfb = (bpf_ktime_get_ns() - c->written_ns) / 1000;
    u32 fd = c->fd;
    u8 fd_known = c->fd_known;

    /* 13 bytes, "HTTP/1.1 429 ", all inside what this read returned (n > 12). */
    char head[16] = {};
    if (n <= 12 || bpf_probe_read_user(head, 13, (void *)call.buf) != 0)
        return 0;
    u32 status = parse_status(head);
    if (!status)
        return 0;

    struct status_key_t sk = {};
    sk.cgid = bpf_get_current_cgroup_id();
    sk.status = status;
    if (fd_known) {
        struct fd_key_t fk = {};
        fk.tgid = tgid;
        fk.fd = fd;
        struct peer_t *p = fd_peers.lookup(&fk);
        if (p)
            sk.peer = *p;
    }
    /* else the peer stays all zeros (family 0): the decoder renders it "unknown" */
    u64 zero = 0;
    u64 *count_statuses = statuses.lookup_or_try_init(&sk, &zero);
    INCREMENT_OR_LOST(count_statuses);

    struct hist_key_t hk = {};
    hk.cgid = sk.cgid;
    hk.slot = bpf_log2l(ttfb);
    u64 *count_ttfb = ttfb_us.lookup_or_try_init(&hk, &zero);
    INCREMENT_OR_LOST(count_ttfb);

    struct peer_key_t pk = {};
    pk.cgid = sk.cgid;
    pk.peer = sk.peer;
    struct ttfb_sum_t none = {};
    struct ttfb_sum_t *sum = peer_ttfb.lookup_or_try_init(&pk, &none);
    if (sum) {
        __sync_fetch_and_add(&sum->sum_us, ttfb);
        __sync_fetch_and_add(&sum->count, 1);
    } else {
        stat_add(STAT_LOST);
    }
    stat_add(STAT_EVENTS);
    return 0;
}
