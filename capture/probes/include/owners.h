/* Which workload owns a TCP socket, learned in process context.
 *
 * Retransmits, resets and most state changes fire in softirq or timer context, where the
 * current task is whoever happened to run. The owner is recorded when the owner itself is
 * current: in connect() (CLOSE -> SYN_SENT) and in recvmsg() (tcp_rcv_space_adjust, which
 * covers accepted server sockets too). Later events look the socket address up here.
 */
#include "common.h"

struct owner_t {
    u64 cgid;
    u32 tgid;
    u32 pad;
};

BPF_TABLE("lru_hash", u64, struct owner_t, owners, 65536);

static __always_inline void learn_owner(u64 sk) {
    struct owner_t o = {};
    o.cgid = bpf_get_current_cgroup_id();
    o.tgid = bpf_get_current_pid_tgid() >> 32;
    owners.update(&sk, &o);
}

/* The event's workload: its socket's owner, when known. Returns 1 when the event is in scope
 * and sets *cgid (0 for an unknown owner, which only a port filter can bring into scope);
 * an out-of-scope event on a socket of unknown owner is counted as unattributed. */
static __always_inline int owner_in_scope(u64 sk, u16 lport, u16 rport, u64 *cgid) {
    struct owner_t *o = sk ? owners.lookup(&sk) : 0;
    *cgid = o ? o->cgid : 0;
    if (in_scope(*cgid, o ? o->tgid : 0, lport, rport))
        return 1;
    if (!o)
        stat_add(STAT_UNATTRIBUTED);
    return 0;
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
    if (!is_armed())
        return 0;
    u64 sk = (u64)args->skaddr;
    if (!owners.lookup(&sk))
        learn_owner(sk);
    return 0;
}
