/*
 * seccomp.c: the default seccomp-BPF program, built for the architecture
 * this file is compiled for (so every number comes from that
 * architecture's headers), without libseccomp.
 *
 * Denied calls answer EPERM (clone3 answers ENOSYS, so libcs fall back to
 * clone, whose flags the filter can read); the action is not killed.  Each
 * entry says why it is denied: it breaks isolation or reproducibility and no
 * build needs it.  Everything else is allowed, ptrace included (sanitizers
 * and debuggers use it; the pid namespace bounds what it can reach).
 *
 * With a listener (opts->notify), a denial goes to the caller as a
 * SECCOMP_RET_USER_NOTIF, which records it and answers EPERM (notify.c);
 * calls that write a path (open for writing, mkdir, unlink, rename...) are
 * shown to it too and then continue, the mounts deciding, so that writes
 * the mounts refuse are recorded with their path.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <linux/audit.h>
#include <linux/filter.h>
#include <linux/seccomp.h>
#include <sched.h>
#include <stddef.h>
#include <stdlib.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <sys/syscall.h>

#include "internal.h"

#if defined(__x86_64__)
#define HM_AUDIT_ARCH AUDIT_ARCH_X86_64
#elif defined(__aarch64__)
#define HM_AUDIT_ARCH AUDIT_ARCH_AARCH64
#else
#error "hermetic: seccomp is built for x86_64 and aarch64 only"
#endif

struct hm_denied {
    const char *name;
    int nr;
};

#define DENY(n) {#n, __NR_##n}

/* Denied outright with EPERM. */
static const struct hm_denied DENIED[] = {
    /* The filesystem layout is the sandbox's: no mounts, no new roots. */
    DENY(mount), DENY(umount2), DENY(pivot_root),
#ifdef __NR_open_tree
    DENY(open_tree), DENY(move_mount), DENY(fsopen), DENY(fsconfig), DENY(fsmount), DENY(fspick),
#endif
#ifdef __NR_mount_setattr
    DENY(mount_setattr),
#endif
    /* No new namespaces (clone's namespace flags are checked below). */
    DENY(unshare), DENY(setns),
    /* The kernel keyring is not namespaced: keys would leak between actions. */
    DENY(keyctl), DENY(add_key), DENY(request_key),
    /* Kernel programs, performance counters: host state and side channels. */
    DENY(bpf), DENY(perf_event_open),
    /* A classic primitive for exploiting kernel races. */
    DENY(userfaultfd),
    /* Administration of the host: kernels, modules, power, swap, accounting,
     * quotas, the clock (time would also break reproducibility). */
    DENY(kexec_load),
#ifdef __NR_kexec_file_load
    DENY(kexec_file_load),
#endif
    DENY(init_module), DENY(finit_module), DENY(delete_module), DENY(reboot), DENY(swapon),
    DENY(swapoff), DENY(acct), DENY(quotactl),
#ifdef __NR_quotactl_fd
    DENY(quotactl_fd),
#endif
    DENY(settimeofday), DENY(clock_settime), DENY(clock_adjtime), DENY(adjtimex),
    /* The kernel log: host information. */
    DENY(syslog),
    /* io_uring performs calls (socket, openat...) without passing through
     * this filter; a large attack surface besides. */
#ifdef __NR_io_uring_setup
    DENY(io_uring_setup), DENY(io_uring_enter), DENY(io_uring_register),
#endif
    /* File handles bypass path lookup, so they bypass the mount layout. */
    DENY(name_to_handle_at), DENY(open_by_handle_at),
    /* The sandbox's names are fixed, for reproducibility. */
    DENY(sethostname), DENY(setdomainname),
    /* Obsolete or hardware-level calls no build needs. */
    DENY(vhangup),
#ifdef __NR_lookup_dcookie
    DENY(lookup_dcookie),
#endif
#ifdef __NR_iopl
    DENY(iopl), DENY(ioperm),
#endif
#ifdef __NR_uselib
    DENY(uselib),
#endif
};

#define NDENIED ((int)(sizeof DENIED / sizeof DENIED[0]))

/* Namespace flags refused in clone(). */
#define HM_NS_FLAGS \
    (CLONE_NEWNS | CLONE_NEWUTS | CLONE_NEWIPC | CLONE_NEWUSER | CLONE_NEWPID | CLONE_NEWNET | \
     CLONE_NEWCGROUP)

/* open() flags that mean a write. */
#define HM_WRITE_FLAGS (O_WRONLY | O_RDWR | O_CREAT | O_TRUNC)

#define ARG_LO(i) (offsetof(struct seccomp_data, args) + 8 * (i))
#define ARG_HI(i) (ARG_LO(i) + 4)

/* Calls that write a path, and where their arguments are: the path and
 * its directory descriptor (-1: none, the call takes no dirfd), and for
 * rename the source too.  flags_arg >= 0: only with a write flag there. */
#define W(n, dfd, path, sdfd, spath, fl) {__NR_##n, dfd, path, sdfd, spath, fl}
static const struct hm_write_call WRITES[] = {
#ifdef __NR_open
    W(open, -1, 0, -1, -1, 1), W(creat, -1, 0, -1, -1, -1), W(mkdir, -1, 0, -1, -1, -1),
    W(mknod, -1, 0, -1, -1, -1), W(unlink, -1, 0, -1, -1, -1), W(rmdir, -1, 0, -1, -1, -1),
    W(rename, -1, 1, -1, 0, -1), W(link, -1, 1, -1, -1, -1), W(symlink, -1, 1, -1, -1, -1),
#endif
    W(openat, 0, 1, -1, -1, 2), W(mkdirat, 0, 1, -1, -1, -1), W(mknodat, 0, 1, -1, -1, -1),
    W(unlinkat, 0, 1, -1, -1, -1), W(renameat, 2, 3, 0, 1, -1), W(linkat, 2, 3, -1, -1, -1),
    W(symlinkat, 1, 2, -1, -1, -1), W(truncate, -1, 0, -1, -1, -1),
#ifdef __NR_renameat2
    W(renameat2, 2, 3, 0, 1, -1),
#endif
#ifdef __NR_openat2
    W(openat2, 0, 1, -1, -1, -1),
#endif
};
#define NWRITES ((int)(sizeof WRITES / sizeof WRITES[0]))

const struct hm_write_call *hm__write_call(int nr)
{
    for (int i = 0; i < NWRITES; i++)
        if (WRITES[i].nr == nr)
            return &WRITES[i];
    return 0;
}

/* Names of every call the filter can report, for the audit log. */
static const struct hm_denied OTHER_NAMES[] = {
    DENY(clone), DENY(clone3), DENY(execve), DENY(execveat), DENY(ioctl), DENY(fchmod),
    DENY(fchmodat), DENY(socket), DENY(setsid), DENY(setpgid),
#ifdef __NR_fork
    DENY(fork), DENY(vfork), DENY(chmod), DENY(open), DENY(creat), DENY(mkdir), DENY(mknod),
    DENY(unlink), DENY(rmdir), DENY(rename), DENY(link), DENY(symlink),
#endif
#ifdef __NR_fchmodat2
    DENY(fchmodat2),
#endif
    DENY(openat), DENY(mkdirat), DENY(mknodat), DENY(unlinkat), DENY(renameat), DENY(linkat),
    DENY(symlinkat), DENY(truncate), DENY(shmget), DENY(shmat), DENY(shmctl), DENY(msgget),
    DENY(msgsnd), DENY(msgrcv), DENY(msgctl), DENY(semget), DENY(semop), DENY(semctl),
    DENY(semtimedop), DENY(mq_open), DENY(mq_unlink), DENY(mq_timedsend), DENY(mq_timedreceive),
    DENY(mq_notify), DENY(mq_getsetattr),
#ifdef __NR_renameat2
    DENY(renameat2),
#endif
#ifdef __NR_openat2
    DENY(openat2),
#endif
};

const char *hm_syscall_name(int nr)
{
    for (int i = 0; i < NDENIED; i++)
        if (DENIED[i].nr == nr)
            return DENIED[i].name;
    for (unsigned long i = 0; i < sizeof OTHER_NAMES / sizeof OTHER_NAMES[0]; i++)
        if (OTHER_NAMES[i].nr == nr)
            return OTHER_NAMES[i].name;
    return 0;
}

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
/* A denial: through the listener when there is one (recorded there, then
 * answered EPERM), else EPERM straight away. */
#define RET_DENY \
    EMIT(BPF_RET | BPF_K, opts->notify ? SECCOMP_RET_USER_NOTIF : SECCOMP_RET_ERRNO | EPERM, 0, 0)
#define LD_ARG(i) EMIT(BPF_LD | BPF_W | BPF_ABS, ARG_LO(i), 0, 0)

/* What the filter does with one syscall number. */
enum hm_rule_kind {
    R_DENY,        /* refused (and reported) */
    R_ENOSYS,      /* clone3: not a violation, libc falls back to clone */
    R_NOTIFY,      /* a path write, shown to the listener */
    R_WRITE_FLAGS, /* open/openat: shown when arg `arg` has a write flag */
    R_CLONE,       /* namespace flags refused; without allow_fork, processes too */
    R_IOCTL,       /* TIOCSTI / TIOCLINUX refused */
    R_MODE_BITS,   /* setuid/setgid bits in arg `arg` refused */
    R_EXECVE       /* only the action's own exec paths */
};

struct hm_rule {
    int nr;
    int kind;
    int arg;
};

#define HM_MAX_RULES 256

struct hm_rules {
    struct hm_rule r[HM_MAX_RULES];
    int n;
    int overflow;
};

/* The first rule for a number wins: callers add them by priority. */
static void add(struct hm_rules *rs, int nr, int kind, int arg)
{
    for (int i = 0; i < rs->n; i++)
        if (rs->r[i].nr == nr)
            return;
    if (rs->n == HM_MAX_RULES) {
        rs->overflow = 1;
        return;
    }
    rs->r[rs->n++] = (struct hm_rule){nr, kind, arg};
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
        LD_ARG(r->arg);
        EMIT(BPF_JMP | BPF_JSET | BPF_K, S_ISUID | S_ISGID, 0, 1);
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
enum hm_ret { HM_RET_ALLOW, HM_RET_DENY, HM_RET_ENOSYS, HM_RET_NOTIFY, HM_RETS };

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
    case R_WRITE_FLAGS:
    case R_CLONE:
    case R_IOCTL:
    case R_MODE_BITS:
    case R_EXECVE:
        return -1;
    }
    return -1;
}

static int push_run(struct hm_run *runs, int k, unsigned int start, int ret, int rule)
{
    if (k > 0 && ret >= 0 && runs[k - 1].ret == ret)
        return k; /* the same return as the numbers just below: one run */
    runs[k] = (struct hm_run){start, ret, rule};
    return k + 1;
}

/* The number line cut into runs, from the rules sorted by number: numbers
 * without a rule are allowed, and neighbours with the same return merge
 * (mount, umount2, swapon, swapoff, reboot... are one run on x86_64). */
static int make_runs(const struct hm_rule *rules, int n, struct hm_run *runs)
{
    int k = 0;
    unsigned int next = 0; /* the first number not covered yet */
    for (int i = 0; i < n; i++) {
        unsigned int nr = (unsigned int)rules[i].nr;
        if (nr > next)
            k = push_run(runs, k, next, HM_RET_ALLOW, -1);
        k = push_run(runs, k, nr, shared_ret(&rules[i]), i);
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
    int k = make_runs(rules, n, runs);
    l->runs = runs;
    int at = p->n + k - 1; /* k runs: k - 1 boundaries */
    for (int i = 0; i < HM_RETS; i++)
        l->ret_at[i] = at++;
    for (int pass = 0; pass < 2; pass++)
        for (int i = 0; i < n; i++) {
            if (shared_ret(&rules[i]) >= 0 || (rules[i].kind == R_EXECVE) != pass)
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
    for (int pass = 0; pass < 2; pass++)
        for (int i = 0; i < n; i++)
            if (shared_ret(&rules[i]) < 0 && (rules[i].kind == R_EXECVE) == pass)
                emit_block(p, &rules[i], opts);
}

/* Write the program into out (at most max instructions); returns the count,
 * -ENOSPC, or -E2BIG.  opts may be NULL: the default deny list, EPERM. */
int hm_seccomp_build(void *out, int max, const struct hm_filter_opts *opts)
{
    static const struct hm_filter_opts none = {0, 0, 0, 0, 0, 0, 0, 0};
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
    for (int i = 0; i < NDENIED; i++)
        add(rs, DENIED[i].nr, R_DENY, 0);
    add(rs, __NR_clone3, R_ENOSYS, 0);
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
         * socketpair() still works. */
        add(rs, __NR_socket, R_DENY, 0);
    }
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
    }
    /* ioctl TIOCSTI / TIOCLINUX: typing into a terminal outside. */
    add(rs, __NR_ioctl, R_IOCTL, 0);
    /* Setuid and setgid bits: a root caller's sandbox runs as host uid 0, and
     * a setuid-root file left in an output would run as root on the host. */
#ifdef __NR_chmod
    add(rs, __NR_chmod, R_MODE_BITS, 1);
#endif
    add(rs, __NR_fchmod, R_MODE_BITS, 1);
    add(rs, __NR_fchmodat, R_MODE_BITS, 2);
#ifdef __NR_fchmodat2
    add(rs, __NR_fchmodat2, R_MODE_BITS, 2);
#endif
    if (opts->notify && opts->audit_writes) {
        for (int i = 0; i < NWRITES; i++) {
            const struct hm_write_call *w = &WRITES[i];
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

/* The denied calls of this architecture, for tests and documentation:
 * fills up to max names and numbers, returns how many there are. */
int hm_seccomp_denied(const char **names, int *nrs, int max)
{
    for (int i = 0; i < NDENIED && i < max; i++) {
        names[i] = DENIED[i].name;
        nrs[i] = DENIED[i].nr;
    }
    return NDENIED;
}
