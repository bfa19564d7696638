/* tcp_reset: TCP resets sent and received, per owning workload and per peer.
 *
 * Attach: tracepoints tcp:tcp_send_reset and tcp:tcp_receive_reset, plus the owner-learning
 * tracepoints of owners.h. A reset sent for no socket at all (a SYN to a closed port) has no
 * owner and counts only when the scope names the port.
 * tcp_send_reset's fields changed across kernels: newer ones carry socket addresses
 * (saddr[28]/daddr[28]) instead of ports; SEND_RESET_SOCKADDR is defined by the loader
 * from the running kernel's tracepoint format.
 * Rate: resets are rare on a healthy node; one event per reset.
 */
#include "owners.h"

#ifdef NEED_SK_RST_REASON
/* The tracepoint's struct names this enum (Linux 6.10+); older headers do not define it. Only
 * its size matters here: the field is not read. */
enum sk_rst_reason { SK_RST_REASON_NOT_SPECIFIED };
#endif

struct reset_key_t {
    u64 cgid;
    struct peer_t peer;
    u32 sent; /* 1 sent by the workload, 0 received */
    u32 pad;
};

BPF_HASH(resets, struct reset_key_t, u64, 4096);

TRACEPOINT_PROBE(tcp, tcp_send_reset) {
    if (!is_armed())
        return 0;
    struct reset_key_t key = {};
    u16 lport, rport;
#ifdef SEND_RESET_SOCKADDR
    /* struct sockaddr_in / sockaddr_in6: family (host order), port (network order), address */
    u16 family = args->daddr[0] | (args->daddr[1] << 8);
    rport = (args->daddr[2] << 8) | args->daddr[3];
    lport = (args->saddr[2] << 8) | args->saddr[3];
    key.peer.family = family;
    key.peer.port = rport;
    if (family == 2) {
        _Pragma("unroll") for (int i = 0; i < 4; i++)
            key.peer.addr[i] = args->daddr[4 + i];
    } else {
        _Pragma("unroll") for (int i = 0; i < 16; i++)
            key.peer.addr[i] = args->daddr[8 + i];
    }
#else
    lport = args->sport;
    rport = args->dport;
    FILL_PEER(key.peer, args);
#endif
    if (!owner_in_scope((u64)args->skaddr, lport, rport, &key.cgid))
        return 0;
    key.sent = 1;
    u64 zero = 0;
    u64 *count = resets.lookup_or_try_init(&key, &zero);
    INCREMENT_OR_LOST(count);
    stat_add(STAT_EVENTS);
    return 0;
}

TRACEPOINT_PROBE(tcp, tcp_receive_reset) {
    if (!is_armed())
        return 0;
    struct reset_key_t key = {};
    if (!owner_in_scope((u64)args->skaddr, args->sport, args->dport, &key.cgid))
        return 0;
    FILL_PEER(key.peer, args);
    u64 zero = 0;
    u64 *count = resets.lookup_or_try_init(&key, &zero);
    INCREMENT_OR_LOST(count);
    stat_add(STAT_EVENTS);
    return 0;
}
