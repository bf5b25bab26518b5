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
 */
#define _GNU_SOURCE
#include <errno.h>
#include <linux/audit.h>
#include <linux/filter.h>
#include <linux/seccomp.h>
#include <sched.h>
#include <stddef.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <sys/syscall.h>

#include "../hermetic.h"

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

#define ARG_LO(i) (offsetof(struct seccomp_data, args) + 8 * (i))

struct hm_prog {
    struct sock_filter *f;
    int n;
    int max;
};

static void put(struct hm_prog *p, unsigned int code, unsigned int k, unsigned int jt,
                unsigned int jf)
{
    if (p->n < p->max) {
        p->f[p->n].code = (unsigned short)code;
        p->f[p->n].jt = (unsigned char)jt;
        p->f[p->n].jf = (unsigned char)jf;
        p->f[p->n].k = k;
    }
    p->n++;
}

#define EMIT(c_, k_, t_, f_) put(&prog, (c_), (unsigned int)(k_), (t_), (f_))
#define RET_ERRNO(e) EMIT(BPF_RET | BPF_K, SECCOMP_RET_ERRNO | (e), 0, 0)
#define RET_ALLOW EMIT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW, 0, 0)

/* Write the program into out (at most max instructions); returns the count
 * or -ENOSPC. */
int hm_seccomp_build(void *out, int max)
{
    struct hm_prog prog = {out, 0, max};

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
    for (int i = 0; i < NDENIED; i++) {
        EMIT(BPF_JMP | BPF_JEQ | BPF_K, DENIED[i].nr, 0, 1);
        RET_ERRNO(EPERM);
    }
    /* clone3 passes its flags in memory the filter cannot read: ENOSYS makes
     * libcs use clone, whose flags it can. */
    EMIT(BPF_JMP | BPF_JEQ | BPF_K, __NR_clone3, 0, 1);
    RET_ERRNO(ENOSYS);
    /* clone with a namespace flag. */
    EMIT(BPF_JMP | BPF_JEQ | BPF_K, __NR_clone, 0, 4);
    EMIT(BPF_LD | BPF_W | BPF_ABS, ARG_LO(0), 0, 0);
    EMIT(BPF_JMP | BPF_JSET | BPF_K, HM_NS_FLAGS, 0, 1);
    RET_ERRNO(EPERM);
    RET_ALLOW;
    /* ioctl TIOCSTI / TIOCLINUX: typing into a terminal outside. */
    EMIT(BPF_JMP | BPF_JEQ | BPF_K, __NR_ioctl, 0, 5);
    EMIT(BPF_LD | BPF_W | BPF_ABS, ARG_LO(1), 0, 0);
    EMIT(BPF_JMP | BPF_JEQ | BPF_K, TIOCSTI, 1, 0);
    EMIT(BPF_JMP | BPF_JEQ | BPF_K, TIOCLINUX, 0, 1);
    RET_ERRNO(EPERM);
    RET_ALLOW;
    /* Setuid and setgid bits: a root caller's sandbox runs as host uid 0, and
     * a setuid-root file left in an output would run as root on the host. */
#ifdef __NR_chmod
    EMIT(BPF_JMP | BPF_JEQ | BPF_K, __NR_chmod, 1, 0);
#else
    EMIT(BPF_JMP | BPF_JA, 0, 0, 0);
#endif
    EMIT(BPF_JMP | BPF_JEQ | BPF_K, __NR_fchmod, 0, 4);
    EMIT(BPF_LD | BPF_W | BPF_ABS, ARG_LO(1), 0, 0);
    EMIT(BPF_JMP | BPF_JSET | BPF_K, S_ISUID | S_ISGID, 0, 1);
    RET_ERRNO(EPERM);
    RET_ALLOW;
    EMIT(BPF_JMP | BPF_JEQ | BPF_K, __NR_fchmodat, 0, 4);
    EMIT(BPF_LD | BPF_W | BPF_ABS, ARG_LO(2), 0, 0);
    EMIT(BPF_JMP | BPF_JSET | BPF_K, S_ISUID | S_ISGID, 0, 1);
    RET_ERRNO(EPERM);
    RET_ALLOW;
#ifdef __NR_fchmodat2
    EMIT(BPF_JMP | BPF_JEQ | BPF_K, __NR_fchmodat2, 0, 4);
    EMIT(BPF_LD | BPF_W | BPF_ABS, ARG_LO(2), 0, 0);
    EMIT(BPF_JMP | BPF_JSET | BPF_K, S_ISUID | S_ISGID, 0, 1);
    RET_ERRNO(EPERM);
    RET_ALLOW;
#endif
    RET_ALLOW;
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
