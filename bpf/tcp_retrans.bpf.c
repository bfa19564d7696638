/* tcp_retrans: TCP retransmits per owning workload and per peer.
 *
 * Attach: tracepoint tcp:tcp_retransmit_skb (the retransmit), sock:inet_sock_set_state and
 * tcp:tcp_rcv_space_adjust (both in process context: they teach us which workload owns a socket).
 * Why the owner map: a retransmit usually fires from the retransmit timer in softirq, where the
 * current task is whoever was running; so the socket's owner is learned when the owner itself
 * connects or reads, and retransmits are attributed by socket address.
 * Aggregates: retransmits by (owner cgroup, peer). Rate: retransmits are rare on a healthy node
 * (< 100/s); the owner map sees one update per connect and per read, a few thousand per second.
 */
#include "common.h"

struct owner_t {
    u64 cgid;
    u32 tgid;
    u32 pad;
};

struct retrans_key_t {
    u64 cgid;
    struct peer_t peer;
};

BPF_TABLE("lru_hash", u64, struct owner_t, owners, 65536);
BPF_HASH(retrans, struct retrans_key_t, u64, 4096);

static __always_inline void learn_owner(u64 sk) {
    struct owner_t o = {};
    o.cgid = bpf_get_current_cgroup_id();
    o.tgid = bpf_get_current_pid_tgid() >> 32;
    owners.update(&sk, &o);
}

TRACEPOINT_PROBE(sock, inet_sock_set_state) {
    if (!is_armed() || args->protocol != PROTO_TCP)
        return 0;
    u64 sk = (u64)args->skaddr;
    if (args->newstate == 2 /* TCP_SYN_SENT: inside connect(), the owner is current */)
        learn_owner(sk);
    else if (args->newstate == 7 /* TCP_CLOSE */)
        owners.delete(&sk);
    return 0;
}

TRACEPOINT_PROBE(tcp, tcp_rcv_space_adjust) {
    /* Called from recvmsg: process context, the reader owns the socket (servers included). */
    if (!is_armed())
        return 0;
    u64 sk = (u64)args->skaddr;
    if (!owners.lookup(&sk))
        learn_owner(sk);
    return 0;
}

TRACEPOINT_PROBE(tcp, tcp_retransmit_skb) {
    if (!is_armed())
        return 0;
    u64 sk = (u64)args->skaddr;
    struct owner_t *o = owners.lookup(&sk);
    u64 cgid = o ? o->cgid : 0;
    u32 tgid = o ? o->tgid : 0;
    if (!in_scope(cgid, tgid, args->sport, args->dport)) {
        if (!o)
            stat_add(STAT_UNATTRIBUTED);
        return 0;
    }
    struct retrans_key_t key = {};
    key.cgid = cgid;
    FILL_PEER(key.peer, args);
    u64 zero = 0;
    u64 *count_retrans = retrans.lookup_or_try_init(&key, &zero);
    INCREMENT_OR_LOST(count_retrans);
    stat_add(STAT_EVENTS);
    return 0;
}
