/* process_exec: programs started (execve) per workload, by executable path and command name.
 *
 * Attach: tracepoint sched:sched_process_exec. It fires in the process that exec'd, once the
 * new program is loaded: current is that process, so its cgroup id and tgid are its own, and
 * comm is already the new program's name. The path is the tracepoint's __data_loc `filename`
 * (the name given to execve, e.g. "/bin/true"; for a script, the script's path), cut at
 * FILENAME_LEN bytes.
 * Aggregates: exec counts by (cgroup, filename, comm). Rate: one event per exec; a few to a few
 * hundred per second on a busy node (shell-heavy jobs and crash loops are the high end).
 */
#include "common.h"

#define FILENAME_LEN 128

struct exec_key_t {
    u64 cgid;
    char comm[16];
    char filename[FILENAME_LEN];
};

BPF_HASH(execs, struct exec_key_t, u64, 4096);

TRACEPOINT_PROBE(sched, sched_process_exec) {
    if (!is_armed())
        return 0;
    u64 cgid = bpf_get_current_cgroup_id();
    u32 tgid = bpf_get_current_pid_tgid() >> 32;
    if (!in_scope(cgid, tgid, 0, 0))
        return 0;
    struct exec_key_t key = {};
    key.cgid = cgid;
    bpf_get_current_comm(&key.comm, sizeof(key.comm));
    /* __data_loc: the low 16 bits are the string's offset from the start of the record */
    u32 loc = args->data_loc_filename;
    bpf_probe_read_kernel_str(&key.filename, sizeof(key.filename), (void *)args + (loc & 0xFFFF));
    u64 zero = 0;
    u64 *count = execs.lookup_or_try_init(&key, &zero);
    INCREMENT_OR_LOST(count);
    stat_add(STAT_EVENTS);
    return 0;
}
