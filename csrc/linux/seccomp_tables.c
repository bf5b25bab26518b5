/*
 * seccomp_tables.c: what the seccomp filter knows about system calls, for
 * the program builder (seccomp.c) and the listener (notify.c): the calls
 * denied outright and why, the calls that write a path and where their
 * arguments are, the calls that take a mode, the socket families an action
 * may open, the names the audit log shows, and the listener's answer to a
 * notification (the filter's own tests applied again).  Every number comes
 * from the headers of the architecture this file is compiled for.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <linux/netlink.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>

#include "internal.h"
#include "kernel_compat.h"

#define DENY(n) {#n, __NR_##n}

/* Denied outright with EPERM. */
const struct hm_denied hm__denied[] = {
    /* The filesystem layout is the sandbox's: no mounts, no new roots. */
    DENY(mount), DENY(umount2), DENY(pivot_root),
#ifdef __NR_open_tree
    DENY(open_tree), DENY(move_mount), DENY(fsopen), DENY(fsconfig), DENY(fsmount), DENY(fspick),
#endif
    DENY(open_tree_attr),
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

const int hm__n_denied = (int)(sizeof hm__denied / sizeof hm__denied[0]);

/* Calls that write a path, and where their arguments are: the path and
 * its directory descriptor (-1: none, the call takes no dirfd), and for
 * rename the source too.  flags_arg >= 0: only with a write flag there. */
#define W(n, dfd, path, sdfd, spath, fl) {__NR_##n, dfd, path, sdfd, spath, fl}
const struct hm_write_call hm__writes[] = {
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
};
const int hm__n_writes = (int)(sizeof hm__writes / sizeof hm__writes[0]);

const struct hm_write_call *hm__write_call(int nr)
{
    for (int i = 0; i < hm__n_writes; i++)
        if (hm__writes[i].nr == nr)
            return &hm__writes[i];
    return 0;
}

/* Names of every call the filter can report, for the audit log. */
static const struct hm_denied OTHER_NAMES[] = {
    DENY(clone), DENY(clone3), DENY(execve), DENY(execveat), DENY(ioctl), DENY(fchmod),
    DENY(fchmodat), DENY(fchmodat2), DENY(socket), DENY(socketpair), DENY(setsid),
    DENY(setpgid), DENY(setxattr), DENY(lsetxattr), DENY(fsetxattr), DENY(setxattrat),
#ifdef __NR_fork
    DENY(fork), DENY(vfork), DENY(chmod), DENY(open), DENY(creat), DENY(mkdir), DENY(mknod),
    DENY(unlink), DENY(rmdir), DENY(rename), DENY(link), DENY(symlink),
#endif
    DENY(openat), DENY(mkdirat), DENY(mknodat), DENY(unlinkat), DENY(renameat), DENY(linkat),
    DENY(symlinkat), DENY(truncate), DENY(shmget), DENY(shmat), DENY(shmctl), DENY(msgget),
    DENY(msgsnd), DENY(msgrcv), DENY(msgctl), DENY(semget), DENY(semop), DENY(semctl),
    DENY(semtimedop), DENY(mq_open), DENY(mq_unlink), DENY(mq_timedsend), DENY(mq_timedreceive),
    DENY(mq_notify), DENY(mq_getsetattr), DENY(prlimit64), DENY(sched_setaffinity),
    DENY(sched_setscheduler), DENY(sched_setparam), DENY(sched_setattr), DENY(setpriority),
    DENY(ioprio_set), DENY(fchown), DENY(fchownat), DENY(utimensat), DENY(removexattr),
    DENY(lremovexattr), DENY(fremovexattr), DENY(removexattrat),
#ifdef __NR_chown
    DENY(chown), DENY(lchown), DENY(utime), DENY(utimes), DENY(futimesat),
#endif
#ifdef __NR_renameat2
    DENY(renameat2),
#endif
#ifdef __NR_openat2
    DENY(openat2),
#endif
};

const char *hm_syscall_name(int nr)
{
    for (int i = 0; i < hm__n_denied; i++)
        if (hm__denied[i].nr == nr)
            return hm__denied[i].name;
    for (unsigned long i = 0; i < sizeof OTHER_NAMES / sizeof OTHER_NAMES[0]; i++)
        if (OTHER_NAMES[i].nr == nr)
            return OTHER_NAMES[i].name;
    return 0;
}

const struct hm_mode_call hm__mode_calls[] = {
#ifdef __NR_open
    {__NR_open, 2, 1}, {__NR_creat, 1, -1}, {__NR_mknod, 1, -1}, {__NR_chmod, 1, -1},
#endif
    {__NR_openat, 3, 2}, {__NR_mknodat, 2, -1}, {__NR_fchmod, 1, -1}, {__NR_fchmodat, 2, -1},
    {__NR_fchmodat2, 2, -1},
};
const int hm__n_mode_calls = (int)(sizeof hm__mode_calls / sizeof hm__mode_calls[0]);

/* The filter reads the low 32 bits of an argument: the kernel reads the
 * mode, flags, family and protocol as 32-bit values too, so what the
 * filter saw is what the kernel uses. */
static int sets_id(const struct hm_mode_call *m, const unsigned long long *args)
{
    if (m->flags_arg >= 0 && !((unsigned int)args[m->flags_arg] & HM_CREATE_FLAGS))
        return 0;
    return ((unsigned int)args[m->mode_arg] & HM_SETID) != 0;
}

/* Socket families an action may open: those its network namespace
 * contains.  The rest reach past it (AF_VSOCK shares the host's port
 * space; AF_PACKET, AF_BLUETOOTH, AF_ALG and the others are host devices
 * or kernel interfaces no build needs) and answer EAFNOSUPPORT, as for a
 * family the kernel lacks.  Of netlink, only NETLINK_ROUTE, which
 * getifaddrs() and if_nameindex() use: NETLINK_KOBJECT_UEVENT would deliver
 * the host's device events (the pool's network namespaces belong to the
 * initial user namespace, whose events they receive), and the others
 * (audit, generic families, sock_diag...) are kernel interfaces no build
 * needs. */
const unsigned int hm__families[] = {AF_UNIX, AF_INET, AF_INET6};
const int hm__n_families = (int)(sizeof hm__families / sizeof hm__families[0]);

static int socket_allowed(unsigned int family, unsigned int protocol)
{
    for (int i = 0; i < hm__n_families; i++)
        if (family == hm__families[i])
            return 1;
    return family == AF_NETLINK && protocol == NETLINK_ROUTE;
}

/* The metadata calls (see struct hm_meta_call). */
#define M(n, kind, dfd, path, fl, nofollow, a1, a2) {__NR_##n, kind, dfd, path, fl, nofollow, a1, a2}
const struct hm_meta_call hm__meta_calls[] = {
#ifdef __NR_chmod
    M(chmod, HM_META_CHMOD, -1, 0, -1, 0, 1, 0),
    M(chown, HM_META_CHOWN, -1, 0, -1, 0, 1, 2),
    M(lchown, HM_META_CHOWN, -1, 0, -1, 1, 1, 2),
    M(utime, HM_META_TIMES, -1, 0, -1, 0, 1, HM_TIMES_UTIMBUF),
    M(utimes, HM_META_TIMES, -1, 0, -1, 0, 1, HM_TIMES_TIMEVAL),
    M(futimesat, HM_META_TIMES, 0, 1, -1, 0, 2, HM_TIMES_TIMEVAL),
#endif
    M(fchmod, HM_META_CHMOD, 0, -1, -1, 0, 1, 0),
    M(fchmodat, HM_META_CHMOD, 0, 1, -1, 0, 2, 0),
    M(fchmodat2, HM_META_CHMOD, 0, 1, 3, 0, 2, 0),
    M(fchown, HM_META_CHOWN, 0, -1, -1, 0, 1, 2),
    M(fchownat, HM_META_CHOWN, 0, 1, 4, 0, 2, 3),
    M(utimensat, HM_META_TIMES, 0, 1, 3, 0, 2, HM_TIMES_TIMESPEC),
};
const int hm__n_meta_calls = (int)(sizeof hm__meta_calls / sizeof hm__meta_calls[0]);

const struct hm_meta_call *hm__meta_call(int nr)
{
    for (int i = 0; i < hm__n_meta_calls; i++)
        if (hm__meta_calls[i].nr == nr)
            return &hm__meta_calls[i];
    return 0;
}

const int hm__xattr_removals[] = {__NR_removexattr, __NR_lremovexattr, __NR_fremovexattr,
                                  __NR_removexattrat};
const int hm__n_xattr_removals =
    (int)(sizeof hm__xattr_removals / sizeof hm__xattr_removals[0]);

/* Extended attributes are set by name, which the filter cannot read (it
 * is behind a pointer, and a listener reading it could be raced by another
 * thread of the action).  One name, security.capability, would give a file
 * in an output capabilities on the host; so the whole family is refused,
 * with the errno of a filesystem without extended attributes, which cp -a,
 * tar and rsync take as a reason to carry on without them. */
static int is_setxattr(int nr)
{
    for (int i = 0; i < hm__n_xattr_removals; i++)
        if (nr == hm__xattr_removals[i])
            return 1; /* only sent where Landlock is the filesystem layer */
    return nr == __NR_setxattr || nr == __NR_lsetxattr || nr == __NR_fsetxattr ||
           nr == __NR_setxattrat;
}

int hm__notice_errno(int nr, const unsigned long long *args)
{
    /* The filter sends refusals and path writes with one return value:
     * this applies its tests again to the kernel's copy of the arguments
     * (which the action cannot change), so that a refused creation is
     * never let through as a write. */
    if (nr == __NR_socket || nr == __NR_socketpair) {
        /* Under deny_sockets every socket() comes here: a contained
         * family is refused with EPERM, as before. */
        return socket_allowed((unsigned int)args[0], (unsigned int)args[2]) ? EPERM
                                                                             : EAFNOSUPPORT;
    }
    if (is_setxattr(nr))
        return EOPNOTSUPP;
    for (int i = 0; i < hm__n_mode_calls; i++)
        if (hm__mode_calls[i].nr == nr && sets_id(&hm__mode_calls[i], args))
            return EPERM;
    /* A metadata call comes only where the listener performs it. */
    return hm__write_call(nr) || hm__meta_call(nr) ? 0 : EPERM;
}

/* The denied calls of this architecture, for tests and documentation:
 * fills up to max names and numbers, returns how many there are. */
int hm_seccomp_denied(const char **names, int *nrs, int max)
{
    for (int i = 0; i < hm__n_denied && i < max; i++) {
        names[i] = hm__denied[i].name;
        nrs[i] = hm__denied[i].nr;
    }
    return hm__n_denied;
}
