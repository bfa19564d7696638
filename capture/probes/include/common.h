/* Shared by every probe: the scope filter and the per-program statistics.
 *
 * A probe loads "disarmed": every handler returns at once until user space has filled the
 * filter maps and set filter_cfg.armed, so no event outside the scope is ever aggregated.
 * An armed program with no filter set counts everything, keyed by cgroup id (the agent's
 * always-on recorder uses it that way).
 *
 * Scope: an event is in scope when ANY of its identity keys is listed: the owner's cgroup id
 * (inode in the unified hierarchy, as bpf_get_current_cgroup_id() returns it), the owner's
 * process id (tgid), or either TCP port.
 */
#include <uapi/linux/ptrace.h>

#define PROTO_TCP 6

struct filter_cfg_t {
    u32 armed;
    u32 by_cgroup;
    u32 by_pid;
    u32 by_port;
};

BPF_ARRAY(filter_cfg, struct filter_cfg_t, 1);
BPF_HASH(filter_cgroups, u64, u8, 64);
BPF_HASH(filter_pids, u32, u8, 64);
BPF_HASH(filter_ports, u16, u8, 64);

/* stats[0]: events in scope, aggregated; stats[1]: lost (a map was full);
 * stats[2]: events whose owner was unknown (not attributable to a workload). */
BPF_ARRAY(stats, u64, 4);
#define STAT_EVENTS 0
#define STAT_LOST 1
#define STAT_UNATTRIBUTED 2

static __always_inline void stat_add(int idx) {
    u64 *v = stats.lookup(&idx);
    if (v)
        __sync_fetch_and_add(v, 1);
}

/* After map.lookup_or_try_init(): count one, or count a loss when the map was full. (bcc
 * rewrites map calls only when written out, so the lookup itself cannot live in a macro.) */
#define INCREMENT_OR_LOST(v)                \
    do {                                    \
        if (v)                              \
            __sync_fetch_and_add(v, 1);     \
        else                                \
            stat_add(STAT_LOST);            \
    } while (0)

static __always_inline int is_armed(void) {
    int zero = 0;
    struct filter_cfg_t *cfg = filter_cfg.lookup(&zero);
    return cfg && cfg->armed;
}

static __always_inline int in_scope(u64 cgid, u32 tgid, u16 lport, u16 rport) {
    int zero = 0;
    struct filter_cfg_t *cfg = filter_cfg.lookup(&zero);
    if (!cfg || !cfg->armed)
        return 0;
    if (!cfg->by_cgroup && !cfg->by_pid && !cfg->by_port)
        return 1;
    if (cfg->by_cgroup && cgid && filter_cgroups.lookup(&cgid))
        return 1;
    if (cfg->by_pid && tgid && filter_pids.lookup(&tgid))
        return 1;
    if (cfg->by_port && (filter_ports.lookup(&lport) || filter_ports.lookup(&rport)))
        return 1;
    return 0;
}


/* Key of a per-cgroup log2 histogram: bucket ``slot`` of bpf_log2l(value). */
struct hist_key_t {
    u64 cgid;
    u64 slot;
};


/* A TCP peer as the tracepoints describe it: family, address (v4 in the first 4 bytes), port. */
struct peer_t {
    u8 addr[16];
    u16 port;
    u16 family;
    u32 pad;
};

/* Copied field by field: the tracepoint context is read directly, and a memcpy from it could
 * be emitted as a call the verifier rejects. */
#define FILL_PEER(p, args_)                                                            \
    do {                                                                               \
        __builtin_memset(&(p), 0, sizeof(p));                                          \
        (p).family = (args_)->family;                                                  \
        (p).port = (args_)->dport;                                                     \
        if ((args_)->family == 2) {                                                    \
            _Pragma("unroll") for (int __i = 0; __i < 4; __i++)                        \
                (p).addr[__i] = (args_)->daddr[__i];                                   \
        } else {                                                                       \
            _Pragma("unroll") for (int __i = 0; __i < 16; __i++)                       \
                (p).addr[__i] = (args_)->daddr_v6[__i];                                \
        }                                                                              \
    } while (0)
