/* dns: name resolution latency and failures per workload and host name, as the application
 * sees them (libc's resolver: /etc/hosts, DNS, retries and search domains included).
 *
 * Attach: a uprobe and a uretprobe on getaddrinfo in each libc the target maps (found from
 * /proc/PID/maps at load time; a container's own libc is reached through /proc/PID/root).
 * Entry keeps (start time, cgroup, node name pointer, result pointer) per thread; the return
 * reads the name from user memory (first 63 bytes) and, on success, the first MAX_ANSWERS
 * entries of the returned addrinfo list.
 * Aggregates: lookups, failures and address-literal calls by cgroup; a log2 histogram of
 * latency in microseconds by cgroup; lookups, failures and latency sum by (cgroup, host);
 * failures by (cgroup, EAI_* code); lookups that returned an address by (cgroup, address, host).
 * getaddrinfo(NULL, service) resolves no name and is ignored; a numeric address ("10.0.0.1",
 * "::1") resolves without DNS and is counted only as a literal call.
 * Rate: one event per getaddrinfo call in scope; a workload resolving names uncached makes tens
 * to hundreds a second. Each call costs two uprobe traps plus up to 2 + 2*MAX_ANSWERS user reads
 * (measured: about 1.3 us of BPF per call). Calls out of scope in a probed libc still trap and
 * run the entry handler up to in_scope().
 */
#include "common.h"

#define HOST_LEN 64
#define MAX_ANSWERS 4

#define COUNT_LOOKUPS 0
#define COUNT_FAILURES 1
#define COUNT_LITERALS 2

struct call_t {
    u64 ts;
    u64 cgid;
    u64 node;  /* const char *node */
    u64 res;   /* struct addrinfo **res */
};

struct count_key_t {
    u64 cgid;
    u32 kind;
    u32 pad;
};

struct host_key_t {
    u64 cgid;
    char host[HOST_LEN];
};

struct host_val_t {
    u64 lookups;
    u64 failures;
    u64 latency_us;  /* sum: the decoder divides by lookups for a mean */
};

struct error_key_t {
    u64 cgid;
    s32 err;
    u32 pad;
};

struct answer_key_t {
    u64 cgid;
    u8 addr[16];  /* IPv4 in the first 4 bytes */
    u16 family;
    u16 pad[3];
    char host[HOST_LEN];
};

/* struct addrinfo as x86_64 glibc and musl lay it out (user memory, read with probe_read_user). */
struct user_addrinfo {
    s32 ai_flags;
    s32 ai_family;
    s32 ai_socktype;
    s32 ai_protocol;
    u32 ai_addrlen;
    u32 pad;
    u64 ai_addr;
    u64 ai_canonname;
    u64 ai_next;
};

/* The first 24 bytes of a sockaddr_in / sockaddr_in6: the v4 address is at offset 4, the v6
 * address at offset 8. */
struct user_sockaddr {
    u16 family;
    u16 port;
    u32 v4_or_flowinfo;
    u8 v6[16];
};

/* LRU: a thread that dies inside getaddrinfo (or a return the kernel did not report) must not
 * fill the map. Host names and answers are unbounded sets: LRU keeps the recent ones; the
 * per-cgroup counters and histogram live in plain hashes so they never lose counts. */
BPF_TABLE("lru_hash", u64, struct call_t, calls, 10240);
BPF_HASH(counts, struct count_key_t, u64, 2048);
BPF_HASH(latency_us, struct hist_key_t, u64, 2048);
BPF_HASH(errors, struct error_key_t, u64, 1024);
BPF_TABLE("lru_hash", struct host_key_t, struct host_val_t, hosts, 4096);
BPF_TABLE("lru_hash", struct answer_key_t, u64, answers, 4096);

/* A name made of digits and dots (what inet_aton accepts) or holding a ':' is an address. */
static __always_inline int is_literal(const char *h) {
    int numeric = 1;
#pragma unroll
    for (int i = 0; i < HOST_LEN; i++) {
        char ch = h[i];
        if (ch == 0)
            break;
        if (ch == ':')
            return 1;
        if (!((ch >= '0' && ch <= '9') || ch == '.'))
            numeric = 0;
    }
    return numeric && h[0] != 0;
}

int on_getaddrinfo(struct pt_regs *ctx) {
    if (!is_armed())
        return 0;
    u64 node = PT_REGS_PARM1(ctx);
    if (!node)
        return 0;
    u64 id = bpf_get_current_pid_tgid();
    u64 cgid = bpf_get_current_cgroup_id();
    if (!in_scope(cgid, id >> 32, 0, 0))
        return 0;
    struct call_t c = {};
    c.ts = bpf_ktime_get_ns();
    c.cgid = cgid;
    c.node = node;
    c.res = PT_REGS_PARM4(ctx);
    calls.update(&id, &c);
    return 0;
}

int on_getaddrinfo_return(struct pt_regs *ctx) {
    if (!is_armed())
        return 0;
    u64 id = bpf_get_current_pid_tgid();
    struct call_t *cp = calls.lookup(&id);
    if (!cp)
        return 0;
    struct call_t c = *cp;
    calls.delete(&id);
    u64 now = bpf_ktime_get_ns();
    int ret = (int)PT_REGS_RC(ctx);
    u64 zero = 0;

    struct host_key_t hk = {};
    hk.cgid = c.cgid;
    bpf_probe_read_user_str(&hk.host, sizeof(hk.host), (void *)c.node);
    stat_add(STAT_EVENTS);

    struct count_key_t ck = {};
    ck.cgid = c.cgid;
    if (is_literal(hk.host)) {
        ck.kind = COUNT_LITERALS;
        u64 *count_literals = counts.lookup_or_try_init(&ck, &zero);
        INCREMENT_OR_LOST(count_literals);
        return 0;
    }

    u64 us = (now - c.ts) / 1000;
    ck.kind = COUNT_LOOKUPS;
    u64 *count_lookups = counts.lookup_or_try_init(&ck, &zero);
    INCREMENT_OR_LOST(count_lookups);
    struct hist_key_t hkey = {};
    hkey.cgid = c.cgid;
    hkey.slot = bpf_log2l(us);
    u64 *count_latency = latency_us.lookup_or_try_init(&hkey, &zero);
    INCREMENT_OR_LOST(count_latency);

    struct host_val_t hzero = {};
    struct host_val_t *hv = hosts.lookup_or_try_init(&hk, &hzero);
    if (hv) {
        __sync_fetch_and_add(&hv->lookups, 1);
        __sync_fetch_and_add(&hv->latency_us, us);
        if (ret != 0)
            __sync_fetch_and_add(&hv->failures, 1);
    } else {
        stat_add(STAT_LOST);
    }

    if (ret != 0) {
        ck.kind = COUNT_FAILURES;
        u64 *count_failures = counts.lookup_or_try_init(&ck, &zero);
        INCREMENT_OR_LOST(count_failures);
        struct error_key_t ek = {};
        ek.cgid = c.cgid;
        ek.err = ret;
        u64 *count_errors = errors.lookup_or_try_init(&ek, &zero);
        INCREMENT_OR_LOST(count_errors);
        return 0;
    }

    /* Success: *res is the head of the list. Read the first MAX_ANSWERS entries, then count
     * each distinct address once (without a socktype hint glibc repeats every address for TCP,
     * UDP and raw). Two passes, so each loop is simple enough for clang to unroll. */
    u64 ai = 0;
    if (!c.res || bpf_probe_read_user(&ai, sizeof(ai), (void *)c.res))
        return 0;
    u16 fam[MAX_ANSWERS] = {};
    u64 lo[MAX_ANSWERS] = {};
    u64 hi[MAX_ANSWERS] = {};
#pragma unroll
    for (int i = 0; i < MAX_ANSWERS; i++) {
        struct user_addrinfo info = {};
        struct user_sockaddr sa = {};
        if (!ai || bpf_probe_read_user(&info, sizeof(info), (void *)ai)) {
            ai = 0;
            continue;
        }
        ai = info.ai_next;
        if (!info.ai_addr || bpf_probe_read_user(&sa, sizeof(sa), (void *)info.ai_addr))
            continue;
        if (sa.family == 2 /* AF_INET */) {
            fam[i] = 2;
            lo[i] = sa.v4_or_flowinfo;
        } else if (sa.family == 10 /* AF_INET6 */) {
            fam[i] = 10;
            __builtin_memcpy(&lo[i], sa.v6, 8);
            __builtin_memcpy(&hi[i], sa.v6 + 8, 8);
        }
    }
    struct answer_key_t ak = {};
    ak.cgid = c.cgid;
    __builtin_memcpy(ak.host, hk.host, HOST_LEN);
#pragma unroll
    for (int i = 0; i < MAX_ANSWERS; i++) {
        if (!fam[i])
            continue;
        /* Written out for MAX_ANSWERS == 4. */
        if ((i > 0 && fam[0] == fam[i] && lo[0] == lo[i] && hi[0] == hi[i]) ||
            (i > 1 && fam[1] == fam[i] && lo[1] == lo[i] && hi[1] == hi[i]) ||
            (i > 2 && fam[2] == fam[i] && lo[2] == lo[i] && hi[2] == hi[i]))
            continue;
        ak.family = fam[i];
        __builtin_memcpy(ak.addr, &lo[i], 8);
        __builtin_memcpy(ak.addr + 8, &hi[i], 8);
        u64 *count_answers = answers.lookup_or_try_init(&ak, &zero);
        INCREMENT_OR_LOST(count_answers);
    }
    return 0;
}
