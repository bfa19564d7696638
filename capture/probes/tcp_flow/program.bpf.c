/* tcp_flow: bytes and smoothed RTT per owning workload and per peer.
 *
 * Attach: tracepoint tcp:tcp_probe, which the kernel fires at the top of tcp_rcv_established()
 * for every segment (data or pure ACK) a socket receives in ESTABLISHED, mostly in softirq;
 * sock:sock_recv_length (Linux 6.3+), which fires as recvmsg()/read() on a socket returns, in
 * the reader's own context; plus the owner-learning tracepoints of owners.h
 * (sock:inet_sock_set_state, tcp:tcp_rcv_space_adjust). Only tracepoint fields are read.
 *
 * Aggregates, keyed by (owner cgroup, peer), the peer being the remote end (the socket's
 * daddr/dport in tcp_probe):
 *  - acknowledged sent bytes: the increase of snd_una since the previous event on the same
 *    socket (u32 arithmetic, so the sequence-number wrap is handled). tcp_probe reports snd_una
 *    *before* the segment's own ACK is processed, so the progress an ACK brings is seen at the
 *    next segment the socket receives; the first sighting of a socket is a baseline and counts
 *    nothing. Segments received outside ESTABLISHED (after our own FIN) do not fire tcp_probe:
 *    an ACK that only arrives after the workload closed is not counted.
 *  - received bytes: what the workload read, the sum of sock_recv_length's positive returns on
 *    TCP sockets (MSG_PEEK excluded). Not tcp_probe's data_len: that field is a u16, and a
 *    receive-backlog skb coalesced from several segments can exceed 64 KiB, so data_len loses
 *    65536 per wrap (seen here on loopback: 803392 of 1000000 bytes). Kernels without
 *    sock_recv_length get the data_len sum instead (RX_FROM_DATA_LEN, set by the loader).
 *  - smoothed RTT: tcp_probe's srtt is tp->srtt_us >> 3, i.e. microseconds. It is sampled at
 *    most once per socket per 10 ms (RTT_SAMPLE_NS), into a log2 histogram per cgroup and a
 *    per-peer sum and count (the decoder reports a per-peer mean).
 * Per-socket state (socket address -> cookie, peer, last snd_una, last RTT sample) is an LRU.
 * The cookie tells a reused socket address from the socket that had it before. A socket whose
 * owner is not known yet (a server socket before its first read) gets its state recorded, so
 * that its first read already knows the peer.
 *
 * Rate: tcp_probe once per received segment (GRO merges data segments; pure ACKs count too),
 * tens of thousands per second on a busy node; sock_recv_length once per socket read, of any
 * socket type (non-TCP ones return after one field check).
 */
#include "owners.h"

#define RTT_SAMPLE_NS 10000000ULL /* at most one sRTT sample per socket per 10 ms */
#define MSG_PEEK_FLAG 2

struct sock_state_t {
    u64 cookie;
    u64 last_rtt_ns;
    struct peer_t peer;
    u32 snd_una;
    u16 lport;
    u16 pad;
};

struct flow_key_t {
    u64 cgid;
    struct peer_t peer;
};

struct flow_t {
    u64 rx_bytes;
    u64 acked_bytes;
    u64 rtt_sum_us;
    u64 rtt_samples;
};

/* LRU: a socket that closes leaves its entry behind (owners.h owns inet_sock_set_state). */
BPF_TABLE("lru_hash", u64, struct sock_state_t, sockets, 65536);
BPF_HASH(flows, struct flow_key_t, struct flow_t, 8192);
BPF_HASH(srtt_us, struct hist_key_t, u64, 2048);

TRACEPOINT_PROBE(tcp, tcp_probe) {
    if (!is_armed())
        return 0;
    u64 sk = (u64)args->skaddr;
    struct flow_key_t key = {};
    int in = owner_in_scope(sk, args->sport, args->dport, &key.cgid);
    if (!in && key.cgid)
        return 0; /* a known owner outside the scope */

    /* The remote end, from the sockaddr_in / sockaddr_in6 in daddr: family at 0, port
     * (network order) at 2, then the IPv4 address at 4 or the IPv6 address at 8. */
    key.peer.family = args->family;
    key.peer.port = args->dport;
    if (args->family == 2) {
        _Pragma("unroll") for (int i = 0; i < 4; i++)
            key.peer.addr[i] = args->daddr[4 + i];
    } else {
        _Pragma("unroll") for (int i = 0; i < 16; i++)
            key.peer.addr[i] = args->daddr[8 + i];
    }

    u64 cookie = args->sock_cookie;
    u32 una = args->snd_una;
    u32 srtt = args->srtt;
    u64 now = bpf_ktime_get_ns();
    u64 acked = 0;
    int sample = 0;
    /* tcp_probe runs under the socket's lock: events of one socket never race here. */
    struct sock_state_t *st = sockets.lookup(&sk);
    if (st && st->cookie == cookie) {
        if (!in)
            return 0; /* owner still unknown: the next in-scope event counts the progress */
        u32 delta = una - st->snd_una; /* modulo 2^32: a wrap is still forward progress */
        if (delta < 0x80000000U)        /* snd_una never moves back: anything else is not progress */
            acked = delta;
        st->snd_una = una;
        if (now - st->last_rtt_ns >= RTT_SAMPLE_NS) {
            st->last_rtt_ns = now;
            sample = 1;
        }
    } else {
        /* First sighting (or a new socket at a reused address): a baseline, nothing counted. */
        struct sock_state_t fresh = {};
        fresh.cookie = cookie;
        fresh.peer = key.peer;
        fresh.snd_una = una;
        fresh.lport = args->sport;
        if (in) {
            fresh.last_rtt_ns = now;
            sample = 1;
        }
        sockets.update(&sk, &fresh);
        if (!in)
            return 0;
    }
    if (srtt == 0) /* no RTT measured on this socket yet */
        sample = 0;
    stat_add(STAT_EVENTS);

    u64 rx = 0;
#ifdef RX_FROM_DATA_LEN
    rx = args->data_len;
#endif
    if (!rx && !acked && !sample)
        return 0; /* a segment that moved nothing we count */
    struct flow_t empty = {};
    struct flow_t *f = flows.lookup_or_try_init(&key, &empty);
    if (!f) {
        stat_add(STAT_LOST);
        return 0;
    }
    if (rx)
        __sync_fetch_and_add(&f->rx_bytes, rx);
    if (acked)
        __sync_fetch_and_add(&f->acked_bytes, acked);
    if (sample) {
        __sync_fetch_and_add(&f->rtt_sum_us, srtt);
        __sync_fetch_and_add(&f->rtt_samples, 1);
        struct hist_key_t hk = {};
        hk.cgid = key.cgid;
        hk.slot = bpf_log2l(srtt);
        u64 zero = 0;
        u64 *count = srtt_us.lookup_or_try_init(&hk, &zero);
        INCREMENT_OR_LOST(count);
    }
    return 0;
}

#ifndef RX_FROM_DATA_LEN
TRACEPOINT_PROBE(sock, sock_recv_length) {
    if (!is_armed() || args->protocol != PROTO_TCP || args->ret <= 0 || (args->flags & MSG_PEEK_FLAG))
        return 0;
    if (args->family != 2 && args->family != 10)
        return 0;
    /* Process context: the reader is current, and is the socket's owner. */
    u64 pid_tgid = bpf_get_current_pid_tgid();
    struct flow_key_t key = {};
    key.cgid = bpf_get_current_cgroup_id();
    u64 sk = (u64)args->sk;
    struct sock_state_t *st = sockets.lookup(&sk);
    u16 lport = 0;
    if (st) {
        key.peer = st->peer;
        lport = st->lport;
    } /* else: the peer is unknown (no segment seen since load): counted, peer left empty */
    if (!in_scope(key.cgid, pid_tgid >> 32, lport, key.peer.port))
        return 0;
    stat_add(STAT_EVENTS);
    struct flow_t empty = {};
    struct flow_t *f = flows.lookup_or_try_init(&key, &empty);
    if (!f) {
        stat_add(STAT_LOST);
        return 0;
    }
    __sync_fetch_and_add(&f->rx_bytes, (u64)args->ret);
    return 0;
}
#endif
