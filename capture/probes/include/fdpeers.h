/* Which peer a process's socket descriptor talks to, learned at connect().
 *
 * Syscall tracepoints give a descriptor, not a socket; the peer is read from connect()'s own
 * arguments (the user's sockaddr) and kept per (process, fd) once connect() succeeds or is in
 * progress (non-blocking). close() forgets it. Probes that include this header must not define
 * their own handlers for sys_enter_connect, sys_exit_connect or sys_enter_close.
 *
 * A probe that defines FDPEERS_TCP_ONLY before including this header learns TCP connections
 * only: it calls fdpeers_saw_tcp() from its sock:inet_sock_set_state handler at CLOSE ->
 * SYN_SENT, which the kernel fires inside a TCP connect(), in the connecting thread. A UDP
 * socket's connect() (a resolver's, a metrics agent's) changes no TCP state and is not kept.
 */
#include "common.h"

struct fd_key_t {
    u32 tgid;
    u32 fd;
};

struct connect_call_t {
    u64 uaddr;
    u32 fd;
    u32 tcp;  /* set by fdpeers_saw_tcp() when the call started a TCP handshake */
};

BPF_TABLE("lru_hash", u32, struct connect_call_t, connect_calls, 4096);  /* thread -> connect() in flight */
BPF_TABLE("lru_hash", struct fd_key_t, struct peer_t, fd_peers, 16384);

static __always_inline struct fd_key_t fd_key(u32 fd) {
    struct fd_key_t k = {};
    k.tgid = bpf_get_current_pid_tgid() >> 32;
    k.fd = fd;
    return k;
}

TRACEPOINT_PROBE(syscalls, sys_enter_connect) {
    if (!is_armed())
        return 0;
    u32 tid = bpf_get_current_pid_tgid();
    struct connect_call_t c = {};
    c.uaddr = (u64)args->uservaddr;
    c.fd = args->fd;
    connect_calls.update(&tid, &c);
    return 0;
}

TRACEPOINT_PROBE(syscalls, sys_exit_connect) {
    u32 tid = bpf_get_current_pid_tgid();
    struct connect_call_t *c = connect_calls.lookup(&tid);
    if (!c)
        return 0;
    struct connect_call_t call = *c;
    connect_calls.delete(&tid);
    if (args->ret != 0 && args->ret != -115 /* -EINPROGRESS */)
        return 0;
#ifdef FDPEERS_TCP_ONLY
    if (!call.tcp)
        return 0;
#endif
    u16 family = 0, port = 0;
    bpf_probe_read_user(&family, sizeof(family), (void *)call.uaddr);
    bpf_probe_read_user(&port, sizeof(port), (void *)(call.uaddr + 2));
    struct peer_t peer = {};
    peer.family = family;
    peer.port = bpf_ntohs(port);
    if (family == 2 /* AF_INET: sin_addr at offset 4 */)
        bpf_probe_read_user(&peer.addr, 4, (void *)(call.uaddr + 4));
    else if (family == 10 /* AF_INET6: sin6_addr at offset 8 */)
        bpf_probe_read_user(&peer.addr, 16, (void *)(call.uaddr + 8));
    else
        return 0;
    struct fd_key_t k = fd_key(call.fd);
    fd_peers.update(&k, &peer);
    return 0;
}

/* From the includer's inet_sock_set_state handler, at CLOSE -> SYN_SENT: the thread's connect()
 * in flight is a TCP one. Returns its descriptor's key in *k; 0 when no connect() is in flight. */
static __always_inline int fdpeers_saw_tcp(struct fd_key_t *k) {
    u32 tid = bpf_get_current_pid_tgid();
    struct connect_call_t *c = connect_calls.lookup(&tid);
    if (!c)
        return 0;
    c->tcp = 1;
    *k = fd_key(c->fd);
    return 1;
}

TRACEPOINT_PROBE(syscalls, sys_enter_close) {
    if (!is_armed())
        return 0;
    struct fd_key_t k = fd_key(args->fd);
    fd_peers.delete(&k);
    return 0;
}
