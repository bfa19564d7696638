/* tcp_connect: TCP connect latency and failures per owning workload and per peer.
 *
 * Attach: tracepoints syscalls:sys_enter_connect (when the application asked), and
 * sock:inet_sock_set_state for CLOSE -> SYN_SENT (inside connect(): the owner is current),
 * SYN_SENT -> ESTABLISHED (success, usually in softirq) and SYN_SENT -> CLOSE (refused,
 * reset or timed out).
 * Aggregates: a log2 histogram of connect latency in microseconds by cgroup; attempts,
 * successes and failures by (cgroup, peer). Rate: one event per connect attempt.
 */
#include "common.h"

struct pending_t {
    u64 ts;
    u64 cgid;
    u32 tgid;
    u32 pad;
};

struct conn_key_t {
    u64 cgid;
    struct peer_t peer;
    u32 outcome; /* 0 attempt, 1 established, 2 failed */
    u32 pad;
};

/* LRU: connect() calls that never reach SYN_SENT (UDP, errors) must not fill the map. */
BPF_TABLE("lru_hash", u32, u64, connect_start, 16384);  /* thread id -> sys_enter_connect time */
BPF_TABLE("lru_hash", u64, struct pending_t, pending, 16384);  /* socket -> connect in flight */
BPF_HASH(latency_us, struct hist_key_t, u64, 2048);
BPF_HASH(conns, struct conn_key_t, u64, 4096);

TRACEPOINT_PROBE(syscalls, sys_enter_connect) {
    if (!is_armed())
        return 0;
    u32 tid = bpf_get_current_pid_tgid();
    u64 ts = bpf_ktime_get_ns();
    connect_start.update(&tid, &ts);
    return 0;
}

TRACEPOINT_PROBE(sock, inet_sock_set_state) {
    if (!is_armed() || args->protocol != PROTO_TCP)
        return 0;
    u64 sk = (u64)args->skaddr;
    u64 now = bpf_ktime_get_ns();
    u64 zero = 0;

    if (args->newstate == 2 /* TCP_SYN_SENT */) {
        u64 pid_tgid = bpf_get_current_pid_tgid();
        u32 tid = pid_tgid, tgid = pid_tgid >> 32;
        u64 cgid = bpf_get_current_cgroup_id();
        u64 *start = connect_start.lookup(&tid);
        struct pending_t p = {};
        p.ts = start ? *start : now;
        if (start)
            connect_start.delete(&tid);
        if (!in_scope(cgid, tgid, args->sport, args->dport))
            return 0;
        p.cgid = cgid;
        p.tgid = tgid;
        pending.update(&sk, &p);
        struct conn_key_t key = {};
        key.cgid = cgid;
        FILL_PEER(key.peer, args);
        key.outcome = 0;
        u64 *count_conns = conns.lookup_or_try_init(&key, &zero);
        INCREMENT_OR_LOST(count_conns);
        stat_add(STAT_EVENTS);
        return 0;
    }
    if (args->oldstate != 2)
        return 0;
    struct pending_t *p = pending.lookup(&sk);
    if (!p)
        return 0;
    struct conn_key_t key = {};
    key.cgid = p->cgid;
    FILL_PEER(key.peer, args);
    if (args->newstate == 1 /* TCP_ESTABLISHED */) {
        key.outcome = 1;
        struct hist_key_t hk = {};
        hk.cgid = p->cgid;
        hk.slot = bpf_log2l((now - p->ts) / 1000);
        u64 *count_latency_us = latency_us.lookup_or_try_init(&hk, &zero);
        INCREMENT_OR_LOST(count_latency_us);
    } else {
        key.outcome = 2;
    }
    u64 *count_conns = conns.lookup_or_try_init(&key, &zero);
    INCREMENT_OR_LOST(count_conns);
    pending.delete(&sk);
    return 0;
}
