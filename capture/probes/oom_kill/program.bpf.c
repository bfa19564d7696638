/* oom_kill: processes the OOM killer chose, per cgroup, with their name.
 *
 * Attach: tracepoints oom:mark_victim (the kernel chose a victim; it names the pid, but the
 * current task may be another one that was allocating) and sched:sched_process_exit (the victim
 * itself exits: now it is current, so its own cgroup and tgid are known without reading kernel
 * structs). A victim is counted when it exits.
 * Aggregates: OOM kills by (cgroup, comm). Rate: OOM kills are rare; process exits are a few
 * hundred per second on a busy node, each one map lookup.
 */
#include "common.h"

struct victim_key_t {
    u64 cgid;
    char comm[16];
};

BPF_TABLE("lru_hash", u32, u64, victims, 1024);  /* thread id -> time chosen */
BPF_HASH(kills, struct victim_key_t, u64, 1024);

TRACEPOINT_PROBE(oom, mark_victim) {
    if (!is_armed())
        return 0;
    u32 pid = args->pid;
    u64 ts = bpf_ktime_get_ns();
    victims.update(&pid, &ts);
    return 0;
}

TRACEPOINT_PROBE(sched, sched_process_exit) {
    if (!is_armed())
        return 0;
    u32 pid = args->pid;
    if (!victims.lookup(&pid))
        return 0;
    victims.delete(&pid);
    u64 cgid = bpf_get_current_cgroup_id();
    u32 tgid = bpf_get_current_pid_tgid() >> 32;
    if (!in_scope(cgid, tgid, 0, 0))
        return 0;
    struct victim_key_t key = {};
    key.cgid = cgid;
    bpf_get_current_comm(&key.comm, sizeof(key.comm));
    u64 zero = 0;
    u64 *count = kills.lookup_or_try_init(&key, &zero);
    INCREMENT_OR_LOST(count);
    stat_add(STAT_EVENTS);
    return 0;
}
