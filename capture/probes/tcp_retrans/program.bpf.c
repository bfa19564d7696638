/* tcp_retrans: TCP retransmits (data and SYN-ACK) per owning workload and per peer.
 *
 * Attach: tracepoints tcp:tcp_retransmit_skb and tcp:tcp_retransmit_synack (the retransmits),
 * plus the owner-learning tracepoints of owners.h (sock:inet_sock_set_state,
 * tcp:tcp_rcv_space_adjust).
 * Aggregates: retransmits by (owner cgroup, peer, kind). SYN-ACK retransmits belong to a
 * listener whose connection is not yet accepted, so they are scoped by port only.
 * Rate: retransmits are rare on a healthy node (< 100/s); the owner map sees one update per
 * connect and per first read of a socket.
 */
#include "owners.h"

struct retrans_key_t {
    u64 cgid;
    struct peer_t peer;
    u32 synack;
    u32 pad;
};

BPF_HASH(retrans, struct retrans_key_t, u64, 4096);

TRACEPOINT_PROBE(tcp, tcp_retransmit_skb) {
    if (!is_armed())
        return 0;
    struct retrans_key_t key = {};
    if (!owner_in_scope((u64)args->skaddr, args->sport, args->dport, &key.cgid))
        return 0;
    FILL_PEER(key.peer, args);
    u64 zero = 0;
    u64 *count = retrans.lookup_or_try_init(&key, &zero);
    INCREMENT_OR_LOST(count);
    stat_add(STAT_EVENTS);
    return 0;
}

TRACEPOINT_PROBE(tcp, tcp_retransmit_synack) {
    if (!is_armed() || !in_scope(0, 0, args->sport, args->dport))
        return 0;
    struct retrans_key_t key = {};
    FILL_PEER(key.peer, args);
    key.synack = 1;
    u64 zero = 0;
    u64 *count = retrans.lookup_or_try_init(&key, &zero);
    INCREMENT_OR_LOST(count);
    stat_add(STAT_EVENTS);
    return 0;
}
