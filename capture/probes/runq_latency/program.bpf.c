/* runq_latency: how long runnable threads wait for a CPU, per cgroup (log2 histogram, us).
 *
 * Attach: tracepoints sched:sched_wakeup and sched:sched_wakeup_new (a thread becomes
 * runnable), sched:sched_switch (a thread gets the CPU; a preempted thread goes back to the
 * run queue). Why the identity map: the woken thread is not the current one, and its cgroup
 * cannot be read without walking kernel structs (unsafe here, see docs/probes.md); so each thread's
 * cgroup and process are learned at sched_switch while it is the one switching out (then it IS
 * current). A thread that has not run since the probe loaded is not yet known and is skipped.
 * Rate: every context switch on the node (thousands to tens of thousands per second per CPU),
 * the costliest of the three probes; the histogram update happens only for threads in scope.
 */
#include "common.h"

struct ident_t {
    u64 cgid;
    u32 tgid;
    u32 pad;
};

BPF_TABLE("lru_hash", u32, struct ident_t, threads, 32768);  /* thread id -> owner */
/* LRU: a thread that exits while runnable never switches in to remove its entry. */
BPF_TABLE("lru_hash", u32, u64, enqueued, 32768);  /* thread id -> time it became runnable */
BPF_HASH(wait_us, struct hist_key_t, u64, 4096);

static __always_inline void enqueue(u32 tid) {
    if (tid == 0)
        return;
    struct ident_t *id = threads.lookup(&tid);
    if (!id)
        return;
    if (!in_scope(id->cgid, id->tgid, 0, 0))
        return;
    u64 ts = bpf_ktime_get_ns();
    if (enqueued.update(&tid, &ts) != 0)
        stat_add(STAT_LOST);
}

TRACEPOINT_PROBE(sched, sched_wakeup) {
    if (is_armed())
        enqueue(args->pid);
    return 0;
}

TRACEPOINT_PROBE(sched, sched_wakeup_new) {
    if (is_armed())
        enqueue(args->pid);
    return 0;
}

TRACEPOINT_PROBE(sched, sched_switch) {
    if (!is_armed())
        return 0;
    u32 prev = args->prev_pid, next = args->next_pid;
    if (prev != 0) {
        /* current is still prev here: learn its identity */
        struct ident_t id = {};
        id.cgid = bpf_get_current_cgroup_id();
        id.tgid = bpf_get_current_pid_tgid() >> 32;
        threads.update(&prev, &id);
        /* still runnable (preempted: state R, possibly with the preempt bit 0x100) */
        if ((args->prev_state & 0xff) == 0)
            enqueue(prev);
    }
    if (next == 0)
        return 0;
    u64 *ts = enqueued.lookup(&next);
    if (!ts)
        return 0;
    u64 delta_us = (bpf_ktime_get_ns() - *ts) / 1000;
    enqueued.delete(&next);
    struct ident_t *id = threads.lookup(&next);
    if (!id)
        return 0;
    struct hist_key_t key = {};
    key.cgid = id->cgid;
    key.slot = bpf_log2l(delta_us);
    u64 zero = 0;
    u64 *count_wait_us = wait_us.lookup_or_try_init(&key, &zero);
    INCREMENT_OR_LOST(count_wait_us);
    stat_add(STAT_EVENTS);
    return 0;
}
