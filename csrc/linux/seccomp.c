/*
 * seccomp.c: the default seccomp-BPF program, built for the architecture
 * this file is compiled for (so every number comes from that
 * architecture's headers), without libseccomp.
 *
 * Denied calls answer EPERM (clone3 and openat2 answer ENOSYS, so libcs
 * fall back to clone and openat, whose arguments the filter can read); the
 * action is not killed.  Each entry says why it is denied: it breaks
 * isolation or reproducibility and no build needs it.  Everything else is
 * allowed, ptrace included (sanitizers and debuggers use it; the pid
 * namespace bounds what it can reach).  Some calls are refused by their
 * arguments: namespace flags, set-id modes, socket families, terminal
 * ioctls; a refused socket family answers EAFNOSUPPORT, as for a family the
 * kernel lacks, and a refused set*xattr EOPNOTSUPP, as on a filesystem
 * without extended attributes.
 *
 * With a listener (opts->notify), a refusal goes to the caller as a
 * SECCOMP_RET_USER_NOTIF, which records it and answers its errno
 * (hm__notice_errno, seccomp_tables.c); calls that write a path (open for writing,
 * mkdir, unlink, rename...) are shown to it too and then continue, the
 * mounts deciding, so that writes the mounts refuse are recorded with their
 * path.  Where Landlock is the filesystem layer (opts->emulate_metadata),
 * the chmod, chown and utimes families go to it too, and it performs them
 * itself beneath the writable roots (notify.c).
 *
 * The tables it reads (which calls, which arguments) are seccomp_tables.c's;
 * this file turns them into the program.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <linux/audit.h>
#include <linux/filter.h>
#include <linux/ioprio.h>
#include <linux/netlink.h>
#include <linux/seccomp.h>
#include <sched.h>
#include <stddef.h>
#include <stdlib.h>
#include <sys/ioctl.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>

#include "internal.h"
#include "kernel_compat.h"

#if defined(__x86_64__)
#define HM_AUDIT_ARCH AUDIT_ARCH_X86_64
#elif defined(__aarch64__)
#define HM_AUDIT_ARCH AUDIT_ARCH_AARCH64
#else
#error "hermetic: seccomp is built for x86_64 and aarch64 only"
#endif

/* Namespace flags refused in clone(). */
#define HM_NS_FLAGS \
    (CLONE_NEWNS | CLONE_NEWUTS | CLONE_NEWIPC | CLONE_NEWUSER | CLONE_NEWPID | CLONE_NEWNET | \
     CLONE_NEWCGROUP)

/* The socket type's bits in socket()'s and socketpair()'s type argument
 * (the kernel's SOCK_TYPE_MASK; the flags are or'ed above them). */
_Static_assert(SOCK_STREAM == 1 && SOCK_SEQPACKET == 5, "R_PAIR's bit tests");
#define HM_SOCK_TYPE_MASK 0xf

#define ARG_LO(i) (offsetof(struct seccomp_data, args) + 8 * (i))
#define ARG_HI(i) (ARG_LO(i) + 4)

struct hm_prog {
    struct sock_filter *f;
    int n;
    int max;
    int bad_jump; /* a conditional jump too long for its 8-bit offset */
};

static void put(struct hm_prog *p, unsigned int code, unsigned int k, unsigned int jt,
                unsigned int jf)
{
    if (jt > 255 || jf > 255)
        p->bad_jump = 1;
    if (p->n < p->max) {
        p->f[p->n].code = (unsigned short)code;
        p->f[p->n].jt = (unsigned char)jt;
        p->f[p->n].jf = (unsigned char)jf;
        p->f[p->n].k = k;
    }
    p->n++;
}

#define EMIT(c_, k_, t_, f_) put(p, (c_), (unsigned int)(k_), (t_), (f_))
#define RET_ERRNO(e) EMIT(BPF_RET | BPF_K, SECCOMP_RET_ERRNO | (e), 0, 0)
#define RET_ALLOW EMIT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW, 0, 0)
#define RET_NOTIFY EMIT(BPF_RET | BPF_K, SECCOMP_RET_USER_NOTIF, 0, 0)
/* A refusal: through the listener when there is one (recorded there, then
 * answered e), else e straight away. */
#define RET_REFUSE(e) \
    EMIT(BPF_RET | BPF_K, opts->notify ? SECCOMP_RET_USER_NOTIF : SECCOMP_RET_ERRNO | (e), 0, 0)
#define RET_DENY RET_REFUSE(EPERM)
#define LD_ARG(i) EMIT(BPF_LD | BPF_W | BPF_ABS, ARG_LO(i), 0, 0)

/* What the filter does with one syscall number. */
enum hm_rule_kind {
    R_DENY,        /* refused (and reported) */
    R_ENOSYS,      /* clone3: not a violation, libc falls back to clone */
    R_NOTIFY,      /* a path write, shown to the listener */
    R_WRITE_FLAGS, /* open/openat: shown when arg `arg` has a write flag */
    R_CLONE,       /* namespace flags refused; without allow_fork, processes too */
    R_IOCTL,       /* TIOCSTI / TIOCLINUX refused */
    R_MODE_BITS,   /* set-id bits in arg `arg` refused (only with a create flag
                      in arg `arg2` when arg2 >= 0); then `then` */
    R_SOCKET,      /* families outside hm__families refused, EAFNOSUPPORT */
    R_NOTSUP,      /* refused, EOPNOTSUPP */
    R_EXECVE,      /* only the action's own exec paths */
    R_PAIR,        /* socketpair: AF_UNIX stream or seqpacket only */
    R_SELF_PID,    /* refused unless arg `arg` (a pid) is 0, the caller itself */
    R_SELF_WHO     /* refused unless arg 0 (which) is `arg` (its "one process"
                      value) and arg 1 (who) is 0, the caller itself */
};

/* What an R_MODE_BITS block does with a call it does not refuse: the call
 * may also be a path write, shown to the listener. */
enum hm_then { T_ALLOW, T_NOTIFY, T_WRITE_FLAGS };

struct hm_rule {
    int nr;
    int kind;
    int arg;
    int arg2;
    int then;
};

#define HM_MAX_RULES 256

struct hm_rules {
    struct hm_rule r[HM_MAX_RULES];
    int n;
    int overflow;
};

/* The first rule for a number wins: callers add them by priority. */
static void add2(struct hm_rules *rs, int nr, int kind, int arg, int arg2, int then)
{
    for (int i = 0; i < rs->n; i++)
        if (rs->r[i].nr == nr)
            return;
    if (rs->n == HM_MAX_RULES) {
        rs->overflow = 1;
        return;
    }
    rs->r[rs->n++] = (struct hm_rule){nr, kind, arg, arg2, then};
}

static void add(struct hm_rules *rs, int nr, int kind, int arg)
{
    add2(rs, nr, kind, arg, -1, T_ALLOW);
}

/* Rules whose blocks are the same code share one. */
static int same_block(const struct hm_rule *a, const struct hm_rule *b)
{
    return a->kind == b->kind && a->arg == b->arg && a->arg2 == b->arg2 && a->then == b->then;
}

static int by_nr(const void *a, const void *b)
{
    return ((const struct hm_rule *)a)->nr - ((const struct hm_rule *)b)->nr;
}

/* The code for one rule: every path ends in a return. */
static void emit_block(struct hm_prog *p, const struct hm_rule *r, const struct hm_filter_opts *opts)
{
    switch ((enum hm_rule_kind)r->kind) {
    case R_DENY:
        RET_DENY;
        return;
    case R_ENOSYS:
        RET_ERRNO(ENOSYS);
        return;
    case R_NOTIFY:
        RET_NOTIFY;
        return;
    case R_WRITE_FLAGS:
        LD_ARG(r->arg);
        EMIT(BPF_JMP | BPF_JSET | BPF_K, HM_WRITE_FLAGS, 0, 1);
        RET_NOTIFY;
        RET_ALLOW;
        return;
    case R_CLONE:
        LD_ARG(0);
        EMIT(BPF_JMP | BPF_JSET | BPF_K, HM_NS_FLAGS, 0, 1);
        RET_DENY;
        if (opts->deny_fork) {
            EMIT(BPF_JMP | BPF_JSET | BPF_K, CLONE_THREAD, 1, 0);
            RET_DENY;
        }
        RET_ALLOW;
        return;
    case R_IOCTL:
        LD_ARG(1);
        EMIT(BPF_JMP | BPF_JEQ | BPF_K, TIOCSTI, 1, 0);
        EMIT(BPF_JMP | BPF_JEQ | BPF_K, TIOCLINUX, 0, 1);
        RET_DENY;
        RET_ALLOW;
        return;
    case R_MODE_BITS:
        /* The mode first: a creation that a write audit would let
         * continue must be refused before it is shown as a write. */
        if (r->arg2 >= 0) {
            LD_ARG(r->arg2);
            EMIT(BPF_JMP | BPF_JSET | BPF_K, HM_CREATE_FLAGS, 0, 3);
        }
        LD_ARG(r->arg);
        EMIT(BPF_JMP | BPF_JSET | BPF_K, HM_SETID, 0, 1);
        RET_DENY;
        switch ((enum hm_then)r->then) {
        case T_ALLOW:
            RET_ALLOW;
            return;
        case T_NOTIFY:
            RET_NOTIFY;
            return;
        case T_WRITE_FLAGS:
            LD_ARG(r->arg2);
            EMIT(BPF_JMP | BPF_JSET | BPF_K, HM_WRITE_FLAGS, 0, 1);
            RET_NOTIFY;
            RET_ALLOW;
            return;
        }
        return;
    case R_SOCKET:
        /* hm__families allowed, AF_NETLINK with NETLINK_ROUTE too, the rest
         * refused.  Laid out: the family's tests, netlink's, the refusal
         * at hm__n_families + 4, the allow after it. */
        LD_ARG(0);
        for (int i = 0; i < hm__n_families; i++)
            EMIT(BPF_JMP | BPF_JEQ | BPF_K, hm__families[i], hm__n_families + 3 - i, 0);
        EMIT(BPF_JMP | BPF_JEQ | BPF_K, AF_NETLINK, 0, 2);
        LD_ARG(2);
        EMIT(BPF_JMP | BPF_JEQ | BPF_K, NETLINK_ROUTE, 1, 0);
        RET_REFUSE(EAFNOSUPPORT);
        RET_ALLOW;
        return;
    case R_NOTSUP:
        RET_REFUSE(EOPNOTSUPP);
        return;
    case R_PAIR:
        /* The type's low bits are the socket type (SOCK_CLOEXEC and
         * SOCK_NONBLOCK are or'ed above them).  A connected stream or
         * seqpacket pair cannot be pointed anywhere else (connect() answers
         * EISCONN, an address given to send is refused or ignored); a
         * datagram end can sendto() or connect() any pathname socket of
         * the host, and AF_UNIX's SOCK_RAW is a datagram socket too.
         * Other families go on to socket()'s family list (R_SOCKET's
         * block follows). */
        LD_ARG(0);
        EMIT(BPF_JMP | BPF_JEQ | BPF_K, AF_UNIX, 0, 5);
        LD_ARG(1);
        /* Of the type's four bits, 1 (SOCK_STREAM) and 5 (SOCK_SEQPACKET)
         * are the values with bit 0 set and bits 1 and 3 clear. */
        EMIT(BPF_JMP | BPF_JSET | BPF_K, HM_SOCK_TYPE_MASK & ~(unsigned int)(SOCK_STREAM | 4), 1,
             0);
        EMIT(BPF_JMP | BPF_JSET | BPF_K, SOCK_STREAM, 1, 0);
        RET_DENY;
        RET_ALLOW;
        {
            struct hm_rule sock = *r;
            sock.kind = R_SOCKET;
            emit_block(p, &sock, opts);
        }
        return;
    case R_SELF_PID:
        /* The kernel reads a pid_t: the low 32 bits are all it uses. */
        LD_ARG(r->arg);
        EMIT(BPF_JMP | BPF_JEQ | BPF_K, 0, 1, 0);
        RET_DENY;
        RET_ALLOW;
        return;
    case R_SELF_WHO:
        LD_ARG(0);
        EMIT(BPF_JMP | BPF_JEQ | BPF_K, (unsigned int)r->arg, 0, 2);
        LD_ARG(1);
        EMIT(BPF_JMP | BPF_JEQ | BPF_K, 0, 1, 0);
        RET_DENY;
        RET_ALLOW;
        return;
    case R_EXECVE:
        /* The action's own execve passes one of the plan's path pointers;
         * the exec'd program has a new address space, where nothing it
         * can read says what those were. */
        for (int i = 0; i < opts->n_exec_ptrs; i++) {
            unsigned long long ptr = opts->exec_ptrs[i];
            LD_ARG(0);
            EMIT(BPF_JMP | BPF_JEQ | BPF_K, (unsigned int)ptr, 0, 3);
            EMIT(BPF_LD | BPF_W | BPF_ABS, ARG_HI(0), 0, 0);
            EMIT(BPF_JMP | BPF_JEQ | BPF_K, (unsigned int)(ptr >> 32), 0, 1);
            RET_ALLOW;
        }
        RET_DENY;
        return;
    }
}

/* The returns every search leaf shares: one instruction each, right
 * after the search. */
enum hm_ret { HM_RET_ALLOW, HM_RET_DENY, HM_RET_ENOSYS, HM_RET_NOTIFY, HM_RET_NOTSUP, HM_RETS };

/* Numbers from `start` up to the next run's start, all going to one
 * place: a shared return, or (ret < 0) the argument checks of `rule`. */
struct hm_run {
    unsigned int start;
    int ret;
    int rule;
};

#define HM_MAX_RUNS (2 * HM_MAX_RULES + 1)

static int shared_ret(const struct hm_rule *r)
{
    switch ((enum hm_rule_kind)r->kind) {
    case R_DENY:
        return HM_RET_DENY;
    case R_ENOSYS:
        return HM_RET_ENOSYS;
    case R_NOTIFY:
        return HM_RET_NOTIFY;
    case R_NOTSUP:
        return HM_RET_NOTSUP;
    case R_WRITE_FLAGS:
    case R_CLONE:
    case R_IOCTL:
    case R_MODE_BITS:
    case R_SOCKET:
    case R_EXECVE:
    case R_PAIR:
    case R_SELF_PID:
    case R_SELF_WHO:
        return -1;
    }
    return -1;
}

static int push_run(struct hm_run *runs, int k, unsigned int start, int ret, int rule)
{
    if (k > 0 && runs[k - 1].ret == ret && (ret >= 0 || runs[k - 1].rule == rule))
        return k; /* the same target as the numbers just below: one run */
    runs[k] = (struct hm_run){start, ret, rule};
    return k + 1;
}

/* The number line cut into runs, from the rules sorted by number: numbers
 * without a rule are allowed, and neighbours with the same target merge
 * (mount, umount2, swapon, swapoff, reboot... are one run on x86_64).
 * rep[i]: the first rule whose block rule i shares. */
static int make_runs(const struct hm_rule *rules, int n, const int *rep, struct hm_run *runs)
{
    int k = 0;
    unsigned int next = 0; /* the first number not covered yet */
    for (int i = 0; i < n; i++) {
        unsigned int nr = (unsigned int)rules[i].nr;
        if (nr > next)
            k = push_run(runs, k, next, HM_RET_ALLOW, -1);
        k = push_run(runs, k, nr, shared_ret(&rules[i]), rep[i]);
        next = nr + 1;
    }
    return push_run(runs, k, next, HM_RET_ALLOW, -1);
}

struct hm_layout {
    const struct hm_run *runs;
    int ret_at[HM_RETS];          /* where each shared return is */
    int block_at[HM_MAX_RULES];   /* where each rule's argument checks are */
};

static int run_target(const struct hm_layout *l, int r)
{
    const struct hm_run *run = &l->runs[r];
    return run->ret >= 0 ? l->ret_at[run->ret] : l->block_at[run->rule];
}

/* A binary search over runs [lo, hi) on the number in the accumulator:
 * one conditional jump per boundary, laid out node, lower half, upper
 * half; a half of one run jumps straight to its target.  Short to
 * evaluate and, above all, to install: the kernel translates and compiles
 * every instruction, and emulates the program for each syscall number to
 * find those always allowed. */
static void emit_search(struct hm_prog *p, const struct hm_layout *l, int lo, int hi)
{
    int mid = lo + (hi - lo) / 2;
    int at = p->n;
    int jt = hi - mid == 1 ? run_target(l, mid) - (at + 1) : mid - lo - 1;
    int jf = mid - lo == 1 ? run_target(l, lo) - (at + 1) : 0;
    EMIT(BPF_JMP | BPF_JGE | BPF_K, l->runs[mid].start, jt, jf);
    if (mid - lo > 1)
        emit_search(p, l, lo, mid);
    if (hi - mid > 1)
        emit_search(p, l, mid, hi);
}

/* The search, the shared returns, then each argument-checking rule's
 * block (execve's last: with many candidate paths it is the long one,
 * and the others stay within a conditional jump's 8-bit reach). */
static void emit_rules(struct hm_prog *p, const struct hm_rule *rules, int n,
                       const struct hm_filter_opts *opts)
{
    static struct hm_layout zero;
    struct hm_run runs[HM_MAX_RUNS];
    struct hm_layout layout = zero;
    struct hm_layout *l = &layout;
    int rep[HM_MAX_RULES];
    for (int i = 0; i < n; i++) {
        rep[i] = i;
        for (int j = 0; j < i; j++)
            if (same_block(&rules[j], &rules[i])) {
                rep[i] = j;
                break;
            }
    }
    int k = make_runs(rules, n, rep, runs);
    l->runs = runs;
    int at = p->n + k - 1; /* k runs: k - 1 boundaries */
    for (int i = 0; i < HM_RETS; i++)
        l->ret_at[i] = at++;
    for (int pass = 0; pass < 2; pass++)
        for (int i = 0; i < n; i++) {
            if (shared_ret(&rules[i]) >= 0 || (rules[i].kind == R_EXECVE) != pass ||
                rep[i] != i)
                continue;
            struct hm_prog count = {0, 0, 0, 0};
            emit_block(&count, &rules[i], opts);
            l->block_at[i] = at;
            at += count.n;
        }
    if (k > 1)
        emit_search(p, l, 0, k);
    /* A single run (no rules) falls through to the first return: allow. */
    RET_ALLOW;
    RET_DENY;
    RET_ERRNO(ENOSYS);
    RET_NOTIFY;
    RET_REFUSE(EOPNOTSUPP);
    for (int pass = 0; pass < 2; pass++)
        for (int i = 0; i < n; i++)
            if (shared_ret(&rules[i]) < 0 && (rules[i].kind == R_EXECVE) == pass && rep[i] == i)
                emit_block(p, &rules[i], opts);
}

/* Write the program into out (at most max instructions); returns the count,
 * -ENOSPC, or -E2BIG.  opts may be NULL: the default deny list, EPERM. */
int hm_seccomp_build(void *out, int max, const struct hm_filter_opts *opts)
{
    static const struct hm_filter_opts none = {0};
    struct hm_prog prog = {out, 0, max, 0};
    struct hm_prog *p = &prog;
    if (!opts)
        opts = &none;

    /* The rules, by priority (the first for a number wins).  On the stack:
     * callers may build programs from several threads at once. */
    struct hm_rules rs_local;
    struct hm_rules *rs = &rs_local;
    rs->n = 0;
    rs->overflow = 0;
    for (int i = 0; i < hm__n_denied; i++)
        add(rs, hm__denied[i].nr, R_DENY, 0);
    add(rs, __NR_clone3, R_ENOSYS, 0);
    /* openat2 carries its mode behind a pointer the filter cannot read:
     * ENOSYS, and libcs fall back to openat, whose mode it reads. */
    add(rs, __NR_openat2, R_ENOSYS, 0);
    add(rs, __NR_clone, R_CLONE, 0);
    if (opts->deny_fork) {
#ifdef __NR_fork
        add(rs, __NR_fork, R_DENY, 0);
        add(rs, __NR_vfork, R_DENY, 0);
#endif
    }
    if (opts->deny_exec) {
        add(rs, __NR_execveat, R_DENY, 0);
        add(rs, __NR_execve, R_EXECVE, 0);
    }
    if (opts->deny_sockets) {
        /* Without a network namespace nothing else contains a socket
         * (Landlock does not cover UDP or connecting to a Unix socket);
         * socketpair() still works for the pairs that stay a pair. */
        add(rs, __NR_socket, R_DENY, 0);
        add(rs, __NR_socketpair, R_PAIR, 0);
    }
    add(rs, __NR_socket, R_SOCKET, 0);
    add(rs, __NR_socketpair, R_SOCKET, 0);
    add(rs, __NR_setxattr, R_NOTSUP, 0);
    add(rs, __NR_lsetxattr, R_NOTSUP, 0);
    add(rs, __NR_fsetxattr, R_NOTSUP, 0);
    add(rs, __NR_setxattrat, R_NOTSUP, 0);
    if (opts->deny_sessions) {
        /* Without a pid namespace the sandbox is ended by its process
         * group: no process may leave it.  Without an IPC namespace the
         * host's System V objects and POSIX message queues (which Landlock
         * does not cover) are refused too. */
        static const int no_ns[] = {
            __NR_setsid, __NR_setpgid, __NR_shmget, __NR_shmat, __NR_shmctl, __NR_msgget,
            __NR_msgsnd, __NR_msgrcv, __NR_msgctl, __NR_semget, __NR_semop, __NR_semctl,
            __NR_semtimedop, __NR_mq_open, __NR_mq_unlink, __NR_mq_timedsend,
            __NR_mq_timedreceive, __NR_mq_notify, __NR_mq_getsetattr,
        };
        for (unsigned long i = 0; i < sizeof no_ns / sizeof no_ns[0]; i++)
            add(rs, no_ns[i], R_DENY, 0);
        /* The host's processes share the pid space, and Landlock scopes
         * only signals and ptrace: these calls reach any process of the
         * same uid (the caller's limits and scheduling included: an
         * RLIMIT_FSIZE of 0 stops its audit log) with no ptrace check.
         * Each is allowed on the action itself (pid 0, what nice, ulimit,
         * taskset, chrt and ionice pass), refused on any other target:
         * another thread's tid too, which the filter cannot tell from a
         * host pid. */
        static const int by_pid[] = {
            __NR_prlimit64, __NR_sched_setaffinity, __NR_sched_setscheduler,
            __NR_sched_setparam, __NR_sched_setattr,
        };
        for (unsigned long i = 0; i < sizeof by_pid / sizeof by_pid[0]; i++)
            add(rs, by_pid[i], R_SELF_PID, 0);
        /* setpriority and ioprio_set also name a process group or a
         * whole uid: only "this process" is allowed. */
        add(rs, __NR_setpriority, R_SELF_WHO, PRIO_PROCESS);
        add(rs, __NR_ioprio_set, R_SELF_WHO, IOPRIO_WHO_PROCESS);
    }
    if (opts->emulate_metadata) {
        /* Landlock does not cover a file's mode, owner or times: the
         * action could change them on any file its uid owns, inputs and
         * undeclared ones alike (through a read-only descriptor too).  The
         * listener performs these calls itself, on files beneath the
         * writable roots only (notify.c); a path checked here and then used
         * by the kernel could be swapped in between.  The chmod family
         * keeps its set-id test first.  Without a listener, refused. */
        for (int i = 0; i < hm__n_meta_calls; i++) {
            const struct hm_meta_call *m = &hm__meta_calls[i];
            if (!opts->notify)
                add(rs, m->nr, R_DENY, 0);
            else if (m->kind == HM_META_CHMOD)
                add2(rs, m->nr, R_MODE_BITS, m->a1, -1, T_NOTIFY);
            else
                add(rs, m->nr, R_NOTIFY, 0);
        }
        /* Removals, as the settings: refused (no build sets one). */
        for (int i = 0; i < hm__n_xattr_removals; i++)
            add(rs, hm__xattr_removals[i], R_NOTSUP, 0);
    }
    /* ioctl TIOCSTI / TIOCLINUX: typing into a terminal outside. */
    add(rs, __NR_ioctl, R_IOCTL, 0);
    /* Set-id bits in a mode (see HM_SETID).  Before the write audit's
     * rules: a call that is both keeps one block, which checks the mode
     * first and then shows the write. */
    for (int i = 0; i < hm__n_mode_calls; i++) {
        const struct hm_mode_call *m = &hm__mode_calls[i];
        const struct hm_write_call *w =
            opts->notify && opts->audit_writes ? hm__write_call(m->nr) : 0;
        int then = !w ? T_ALLOW : w->flags_arg < 0 ? T_NOTIFY : T_WRITE_FLAGS;
        if (w && w->flags_arg >= 0 && w->flags_arg != m->flags_arg)
            return -EINVAL; /* the two tables disagree on the flags */
        add2(rs, m->nr, R_MODE_BITS, m->mode_arg, m->flags_arg, then);
    }
    if (opts->notify && opts->audit_writes) {
        for (int i = 0; i < hm__n_writes; i++) {
            const struct hm_write_call *w = &hm__writes[i];
            add(rs, w->nr, w->flags_arg < 0 ? R_NOTIFY : R_WRITE_FLAGS, w->flags_arg);
        }
    }
    if (rs->overflow)
        return -E2BIG;
    qsort(rs->r, (size_t)rs->n, sizeof rs->r[0], by_nr);

    /* Another architecture's calls (x86_64's 32-bit entry) would have other
     * numbers: refuse them all. */
    EMIT(BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, arch), 0, 0);
    EMIT(BPF_JMP | BPF_JEQ | BPF_K, HM_AUDIT_ARCH, 1, 0);
    RET_ERRNO(EPERM);
    EMIT(BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, nr), 0, 0);
#if defined(__x86_64__)
    /* x32 calls share the architecture tag: tell them by their number. */
    EMIT(BPF_JMP | BPF_JGE | BPF_K, 0x40000000, 0, 1);
    RET_ERRNO(EPERM);
#endif
    emit_rules(p, rs->r, rs->n, opts);
    if (prog.bad_jump)
        return -E2BIG;
    return prog.n <= max ? prog.n : -ENOSPC;
}

