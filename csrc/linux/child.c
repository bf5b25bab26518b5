/*
 * child.c: what runs inside the sandbox before the action's execve.
 *
 * Two processes run this code, both sharing the caller's memory:
 *   pid 1     created by hm_spawn() with the namespace flags (CLONE_VM, no
 *             CLONE_VFORK).  It builds the sandbox (ids, mounts, pivot_root,
 *             hostname, loopback), starts the action, then stays as the
 *             namespace's init: it reaps every orphan, forwards termination
 *             signals, and when the action's main process ends it kills
 *             whatever is left and exits.
 *   action    cloned by pid 1 with CLONE_VM|CLONE_VFORK.  It lowers its own
 *             privileges and execs the command.
 *
 * For a caller that is root on the host, the root filesystem is built once
 * per spec by a third (hm__mntns_main, cloned by hm_mntns_create) into a
 * mount namespace the caller keeps; pid 1 then joins it and unshares a
 * copy instead of building the root itself.
 *
 * Because the memory (and the calling thread's TLS) is shared with a running
 * Python interpreter, this file follows the rules of a vfork child: raw
 * system calls over buffers the caller formatted (rawsys.h), no malloc, no
 * stdio, no errno, no locks, no writes to memory the caller reads except
 * struct hm_proc's status fields.  Failures go back as one struct hm_error
 * on the close-on-exec report pipe, then the process exits.
 */
#define _GNU_SOURCE
#include <errno.h> /* constants only: errno itself is never touched */
#include <fcntl.h>
#include <linux/capability.h>
#include <linux/filter.h>
#include <linux/seccomp.h>
#include <net/if.h>
#include <poll.h>
#include <sched.h>
#include <signal.h>
#include <sys/ioctl.h>
#include <sys/mount.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <netinet/in.h>
#include <time.h>

#include "internal.h"
#include "rawsys.h"

static unsigned long sigbit(int sig)
{
    return 1UL << (sig - 1);
}

static unsigned long hm_strlen(const char *s)
{
    unsigned long n = 0;
    while (s[n])
        n++;
    return n;
}

/* A stage stamp into hm_proc (plan.profile only): pid 1 may write its own
 * fields of hm_proc, which the caller reads after reaping it. */
static void stamp(struct hm_proc *proc, int on, int which)
{
    if (!on)
        return;
    struct timespec ts;
    HM_SYS2(SYS_clock_gettime, CLOCK_MONOTONIC, &ts);
    proc->stamps[which] =
        (unsigned long long)ts.tv_sec * 1000000000ULL + (unsigned long long)ts.tv_nsec;
}

__attribute__((noreturn)) static void hm_exit(int code)
{
    for (;;)
        HM_SYS1(SYS_exit, code);
}

/* Send one error record and end this process.  err is -errno. */
__attribute__((noreturn)) static void fail(int fd, int stage, int op_index, long err)
{
    struct hm_error rec;
    rec.stage = stage;
    rec.op_index = op_index;
    rec.err = (int)-err;
    HM_SYS3(SYS_write, fd, &rec, sizeof rec);
    hm_exit(127);
}

/* Hand a descriptor to the caller over the report channel (a SOCK_SEQPACKET
 * pair): one record tagged `tag` (HM_MSG_*) with the descriptor attached. */
static long send_fd(int tag, long fd)
{
    struct hm_error rec = {tag, -1, 0};
    struct iovec iov = {&rec, sizeof rec};
    union {
        struct cmsghdr h;
        char space[CMSG_SPACE(sizeof(int))];
    } ctl;
    char *b = (char *)&ctl;
    for (unsigned long i = 0; i < sizeof ctl; i++)
        b[i] = 0;
    ctl.h.cmsg_len = CMSG_LEN(sizeof(int));
    ctl.h.cmsg_level = SOL_SOCKET;
    ctl.h.cmsg_type = SCM_RIGHTS;
    *(int *)CMSG_DATA(&ctl.h) = (int)fd;
    struct msghdr msg = {0, 0, &iov, 1, &ctl, sizeof ctl, 0};
    long r = HM_SYS3(SYS_sendmsg, HM_FD_REPORT, &msg, MSG_NOSIGNAL);
    return r < 0 ? r : 0;
}

/* The egress proxy's listening socket, made inside the sandbox's network
 * namespace so that only the sandbox can connect to it; the caller accepts
 * on it and makes the outbound connections from its own namespace.  No
 * proxy process runs in the sandbox. */
static long proxy_listen(int port)
{
    long s = HM_SYS3(SYS_socket, AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (s < 0)
        return s;
    int one = 1;
    struct sockaddr_in sa;
    char *b = (char *)&sa;
    for (unsigned long i = 0; i < sizeof sa; i++)
        b[i] = 0;
    sa.sin_family = AF_INET;
    sa.sin_port = (unsigned short)(((port & 0xff) << 8) | ((port >> 8) & 0xff));
    unsigned char *ip = (unsigned char *)&sa.sin_addr;
    ip[0] = 127;
    ip[3] = 1;
    long r = HM_SYS5(SYS_setsockopt, s, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    if (r == 0)
        r = HM_SYS3(SYS_bind, s, &sa, sizeof sa);
    if (r == 0)
        r = HM_SYS2(SYS_listen, s, 128);
    if (r == 0)
        r = send_fd(HM_MSG_PROXY_FD, s);
    HM_SYS1(SYS_close, s);
    return r;
}

static long write_file(const char *path, const char *text)
{
    long fd = HM_SYS4(SYS_openat, AT_FDCWD, path, O_WRONLY | O_CLOEXEC, 0);
    if (fd < 0)
        return fd;
    long n = HM_SYS3(SYS_write, fd, text, hm_strlen(text));
    HM_SYS1(SYS_close, fd);
    return n < 0 ? n : 0;
}

/* Every disposition back to SIG_DFL: the inherited ones are the
 * interpreter's, and its handlers must never run in a process that shares
 * its memory.  SIG_IGN is reset too, as subprocess does with
 * restore_signals (Python ignores SIGPIPE). */
static void reset_signal_handlers(void)
{
    struct hm_ksigaction dfl = {0, 0, 0, 0};
    for (int sig = 1; sig <= 64; sig++) {
        if (sig == SIGKILL || sig == SIGSTOP)
            continue;
        HM_SYS4(SYS_rt_sigaction, sig, &dfl, 0, HM_SIGSET_SIZE);
    }
}

/* Move the inherited descriptors to 0, 1, 2 (stdio), HM_FD_REPORT,
 * HM_FD_PARENT and HM_FD_CGROUP, and close everything else the caller had open: pid 1 was
 * cloned without CLONE_FILES, so this is a private copy of the caller's
 * table, including descriptors other threads opened without O_CLOEXEC. */
static void setup_fds(const struct hm_plan *p, int report_fd, int parent_pidfd)
{
    int src[HM_FD_FIRST_FREE] = {p->stdin_fd,  p->stdout_fd,   p->stderr_fd, report_fd,
                                 parent_pidfd, p->cgroup_fd, p->mntns_fd};
    int tmp[HM_FD_FIRST_FREE];
    /* First above every target, so no dup3 below overwrites a source. */
    for (int i = 0; i < HM_FD_FIRST_FREE; i++) {
        tmp[i] = -1;
        if (src[i] < 0)
            continue;
        long r = HM_SYS3(SYS_fcntl, src[i], F_DUPFD_CLOEXEC, HM_FD_FIRST_FREE + 4);
        if (r < 0)
            fail(report_fd, HM_STAGE_FDS, i, r);
        tmp[i] = (int)r;
    }
    for (int i = 0; i < HM_FD_FIRST_FREE; i++) {
        if (tmp[i] < 0) {
            HM_SYS1(SYS_close, i);
            continue;
        }
        /* stdio stays open across exec, the rest closes on exec */
        long r = HM_SYS3(SYS_dup3, tmp[i], i, i < 3 ? 0 : O_CLOEXEC);
        if (r < 0)
            fail(tmp[3] >= 0 ? tmp[3] : report_fd, HM_STAGE_FDS, i, r);
    }
    long r = HM_SYS3(SYS_close_range, HM_FD_FIRST_FREE, ~0U, 0);
    if (r == -ENOSYS) {
        struct rlimit lim;
        unsigned long top = 65536;
        if (HM_SYS4(SYS_prlimit64, 0, RLIMIT_NOFILE, 0, &lim) == 0 && lim.rlim_cur < top)
            top = lim.rlim_cur;
        for (unsigned long fd = HM_FD_FIRST_FREE; fd < top; fd++)
            HM_SYS1(SYS_close, fd);
    } else if (r < 0) {
        fail(HM_FD_REPORT, HM_STAGE_FDS, -1, r);
    }
}

/* Resolve a path without following any symlink: the plan was made from
 * canonical paths, so a symlink met now was planted since (by an earlier
 * action in its outputs, say) and must not redirect a mount. */
static long open_nofollow(const char *path)
{
    struct hm_open_how how = {O_PATH | O_CLOEXEC, 0, HM_RESOLVE_NO_SYMLINKS};
    return HM_SYS4(SYS_openat2, AT_FDCWD, path, &how, sizeof how);
}

/* A detached copy of the mount tree at path (recursive), the path
 * resolved without symlinks. */
static long clone_tree(const char *path)
{
    long at = open_nofollow(path);
    if (at < 0)
        return at;
    long tree = HM_SYS3(SYS_open_tree, at, "",
                        HM_OPEN_TREE_CLONE | O_CLOEXEC | HM_AT_RECURSIVE | HM_AT_EMPTY_PATH);
    HM_SYS1(SYS_close, at);
    return tree;
}

/* A detached tree attached at dst (resolved without symlinks). */
static long attach_tree(long tree, const char *dst)
{
    long at = open_nofollow(dst);
    if (at < 0)
        return at;
    long r = HM_SYS5(SYS_move_mount, tree, "", at, "",
                     HM_MOVE_MOUNT_F_EMPTY_PATH | HM_MOVE_MOUNT_T_EMPTY_PATH);
    HM_SYS1(SYS_close, at);
    return r;
}

/* A bind as a detached copy of the source tree: flagged (read-only,
 * nosuid, nodev, recursively) before it is attached, then moved onto the
 * target.  Each path is resolved once, without symlinks, and nothing is
 * visible at the target until the flags are on. */
static long bind_tree(const struct hm_op *op)
{
    struct hm_mount_attr attr = {HM_MOUNT_ATTR_NOSUID, 0, 0, 0};
    if (!(op->flags & HM_BIND_DEVICES))
        attr.attr_set |= HM_MOUNT_ATTR_NODEV;
    if (op->flags & HM_BIND_RDONLY)
        attr.attr_set |= HM_MOUNT_ATTR_RDONLY;
    if (op->flags & HM_BIND_SYSTEM) {
        long r = HM_SYS5(SYS_mount, op->src, op->dst, 0, MS_BIND | MS_REC, 0);
        if (r == 0)
            r = HM_SYS5(SYS_mount_setattr, AT_FDCWD, op->dst, HM_AT_RECURSIVE, &attr, sizeof attr);
        return r;
    }
    long tree = clone_tree(op->src);
    if (tree < 0)
        return tree;
    long r = HM_SYS5(SYS_mount_setattr, tree, "", HM_AT_EMPTY_PATH | HM_AT_RECURSIVE, &attr,
                     sizeof attr);
    if (r == 0)
        r = attach_tree(tree, op->dst);
    HM_SYS1(SYS_close, tree);
    return r;
}

/* A detached copy of the mount tree at dst (HM_OP_GRAB): taken from the
 * prepared namespace's copy before a fresh mount covers it. */
static long grab_tree(const struct hm_op *op, long *slots)
{
    if (op->flags < 0 || op->flags >= HM_MAX_GRABS)
        return -EINVAL;
    long tree = clone_tree(op->dst);
    if (tree < 0)
        return tree;
    slots[op->flags] = tree;
    return 0;
}

/* The copy in a slot attached at dst (HM_OP_PLACE); its flags are those of
 * the mount it was copied from. */
static long place_tree(const struct hm_op *op, long *slots)
{
    if (op->flags < 0 || op->flags >= HM_MAX_GRABS || slots[op->flags] < 0)
        return -EINVAL;
    long r = attach_tree(slots[op->flags], op->dst);
    HM_SYS1(SYS_close, slots[op->flags]);
    slots[op->flags] = -1;
    return r;
}

static long run_op(const struct hm_op *op, long *slots)
{
    long r;
    switch ((enum hm_op_kind)op->kind) {
    case HM_OP_MKDIR:
        r = HM_SYS3(SYS_mkdirat, AT_FDCWD, op->dst, op->mode);
        return r == -EEXIST ? 0 : r;
    case HM_OP_MKFILE:
        r = HM_SYS4(SYS_openat, AT_FDCWD, op->dst, O_WRONLY | O_CREAT | O_CLOEXEC | O_NOCTTY,
                    op->mode);
        if (r < 0)
            return r;
        HM_SYS1(SYS_close, r);
        return 0;
    case HM_OP_SYMLINK:
        return HM_SYS3(SYS_symlinkat, op->src, AT_FDCWD, op->dst);
    case HM_OP_BIND:
        return bind_tree(op);
    case HM_OP_TMPFS:
        return HM_SYS5(SYS_mount, "tmpfs", op->dst, "tmpfs", (unsigned long)op->flags, op->data);
    case HM_OP_PROC:
        return HM_SYS5(SYS_mount, "proc", op->dst, "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC, 0);
    case HM_OP_REMOUNT_RO:
        return HM_SYS5(SYS_mount, 0, op->dst, 0,
                       MS_REMOUNT | MS_BIND | MS_RDONLY | (unsigned long)op->flags, 0);
    case HM_OP_MKNOD:
        return HM_SYS4(SYS_mknodat, AT_FDCWD, op->dst, op->mode, (unsigned int)op->flags);
    case HM_OP_GRAB:
        return grab_tree(op, slots);
    case HM_OP_PLACE:
        return place_tree(op, slots);
    }
    return -EINVAL;
}

/* Where setup stopped: a stage, the op's index (HM_STAGE_OP) and -errno. */
struct hm_fail {
    int stage;
    int op_index;
    long err;
};

static int failed(struct hm_fail *f, int stage, int op_index, long err)
{
    f->stage = stage;
    f->op_index = op_index;
    f->err = err;
    return -1;
}

/* The op list in order; copies still held when one fails are dropped. */
static int run_ops(const struct hm_op *ops, int n, struct hm_fail *f)
{
    long slots[HM_MAX_GRABS];
    for (int i = 0; i < HM_MAX_GRABS; i++)
        slots[i] = -1;
    int rc = 0;
    for (int i = 0; i < n && rc == 0; i++) {
        long r = run_op(&ops[i], slots);
        if (r < 0)
            rc = failed(f, HM_STAGE_OP, i, r);
    }
    for (int i = 0; i < HM_MAX_GRABS; i++)
        if (slots[i] >= 0)
            HM_SYS1(SYS_close, slots[i]);
    return rc;
}

/* The sandbox's filesystem from the host's, in this process's new mount
 * namespace: private, a tmpfs root, pivot_root, the op list, the old root
 * detached, the root read-only. */
static int build_root(const struct hm_plan *p, struct hm_proc *proc, struct hm_fail *f)
{
    /* Private first, so nothing below propagates to the host. */
    long r = HM_SYS5(SYS_mount, 0, "/", 0, MS_REC | MS_PRIVATE, 0);
    if (r < 0)
        return failed(f, HM_STAGE_MOUNT_PRIVATE, -1, r);
    /* The new root is a tmpfs mounted on the staging directory, then made
     * the root with the host's root kept at oldroot until every bind has
     * taken its source from it.  pivot_root detaches the tmpfs from the
     * staging directory, so sources under it stay reachable. */
    r = HM_SYS5(SYS_mount, "tmpfs", p->staging, "tmpfs", MS_NOSUID | MS_NODEV, "mode=0755");
    if (r < 0)
        return failed(f, HM_STAGE_ROOT_TMPFS, -1, r);
    r = HM_SYS1(SYS_chdir, p->staging);
    if (r == 0)
        r = HM_SYS3(SYS_mkdirat, AT_FDCWD, p->oldroot + 1, 0700);
    if (r == 0)
        r = HM_SYS2(SYS_pivot_root, ".", p->oldroot + 1);
    if (r == 0)
        r = HM_SYS1(SYS_chdir, "/");
    if (r < 0)
        return failed(f, HM_STAGE_PIVOT_ROOT, -1, r);
    if (run_ops(p->ops, p->n_ops, f) < 0)
        return -1;
    if (proc)
        stamp(proc, p->profile, HM_STAMP_OPS);
    /* Only now is the host unreachable. */
    r = HM_SYS2(SYS_umount2, p->oldroot, MNT_DETACH);
    if (r == 0)
        r = HM_SYS3(SYS_unlinkat, AT_FDCWD, p->oldroot, AT_REMOVEDIR);
    if (r < 0)
        return failed(f, HM_STAGE_DETACH_OLDROOT, -1, r);
    /* Read-only last: the ops above create mount points in the root. */
    r = HM_SYS5(SYS_mount, 0, "/", 0, MS_REMOUNT | MS_BIND | MS_RDONLY | MS_NOSUID | MS_NODEV, 0);
    if (r < 0)
        return failed(f, HM_STAGE_ROOT_READONLY, -1, r);
    return 0;
}

/* The sandbox's filesystem as a private copy of a prepared mount namespace
 * (hm_mntns_create): joining it makes its root this process's root, the
 * copy keeps each action's mounts from the others', and the op list adds
 * what each action gets fresh (/proc, the private /tmp). */
static int copy_root(const struct hm_plan *p, struct hm_proc *proc, struct hm_fail *f)
{
    long r = HM_SYS2(SYS_setns, HM_FD_MNTNS, CLONE_NEWNS);
    if (r == 0)
        r = HM_SYS1(SYS_unshare, CLONE_NEWNS);
    HM_SYS1(SYS_close, HM_FD_MNTNS);
    if (r < 0)
        return failed(f, HM_STAGE_MNTNS, -1, r);
    if (run_ops(p->ops, p->n_ops, f) < 0)
        return -1;
    stamp(proc, p->profile, HM_STAMP_OPS);
    return 0;
}

static long loopback_up(void)
{
    long s = HM_SYS3(SYS_socket, AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    if (s < 0)
        return s;
    struct ifreq ifr;
    char *b = (char *)&ifr;
    for (unsigned long i = 0; i < sizeof ifr; i++)
        b[i] = 0;
    ifr.ifr_name[0] = 'l';
    ifr.ifr_name[1] = 'o';
    ifr.ifr_flags = IFF_UP | IFF_LOOPBACK | IFF_RUNNING;
    long r = HM_SYS3(SYS_ioctl, s, SIOCSIFFLAGS, &ifr);
    HM_SYS1(SYS_close, s);
    return r;
}

/* Landlock: the plan's rules, everything else the ruleset handles denied.
 * Needs no_new_privs (or CAP_SYS_ADMIN), so it comes after that. */
static long apply_landlock(const struct hm_plan *p, int *failed_rule)
{
    struct hm_ruleset_attr attr = {p->landlock_fs, p->landlock_net, p->landlock_scoped};
    /* The struct grew with the ABI: pass only what this kernel knows. */
    unsigned long size = p->landlock_abi >= 6 ? 24 : p->landlock_abi >= 4 ? 16 : 8;
    long ruleset = HM_SYS3(SYS_landlock_create_ruleset, &attr, size, 0);
    if (ruleset < 0)
        return ruleset;
    long r = 0;
    for (int i = 0; i < p->n_landlock_rules && r == 0; i++) {
        struct hm_path_beneath rule;
        rule.allowed_access = p->landlock_rules[i].access & p->landlock_fs;
        /* No symlinks, as for the binds: one planted in an output by an
         * earlier action must not redirect a rule. */
        long fd = open_nofollow(p->landlock_rules[i].path);
        if (fd < 0) {
            r = fd;
        } else {
            rule.parent_fd = (int)fd;
            r = HM_SYS4(SYS_landlock_add_rule, ruleset, HM_LANDLOCK_RULE_PATH_BENEATH, &rule, 0);
            HM_SYS1(SYS_close, fd);
        }
        if (r < 0)
            *failed_rule = i;
    }
    if (r == 0)
        r = HM_SYS2(SYS_landlock_restrict_self, ruleset, 0);
    HM_SYS1(SYS_close, ruleset);
    return r;
}

static long drop_capabilities(void)
{
    /* The bounding set first: dropping from it needs CAP_SETPCAP, which
     * the capset() below removes.  An empty bounding set also means that
     * exec of anything as uid 0 inside gains nothing.  Each drop commits
     * new credentials (about 2 us); a capability the set no longer holds
     * (one spawned by hermetic's own threads, see hm_spawner_thread_init)
     * costs only the read. */
    for (long cap = 0; cap < 64; cap++) {
        long r = HM_SYS2(SYS_prctl, PR_CAPBSET_READ, cap);
        if (r == -EINVAL)
            break;
        if (r == 1)
            r = HM_SYS2(SYS_prctl, PR_CAPBSET_DROP, cap);
        if (r < 0)
            return r;
    }
    long r = HM_SYS5(SYS_prctl, PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0);
    if (r < 0 && r != -EINVAL)
        return r;
    struct __user_cap_header_struct hdr = {_LINUX_CAPABILITY_VERSION_3, 0};
    struct __user_cap_data_struct data[2] = {{0, 0, 0}, {0, 0, 0}};
    return HM_SYS2(SYS_capset, &hdr, data);
}

/* A standby action: report ready, then wait for the caller's go (HM_MSG_GO)
 * and put the descriptors it carries at 0, 1 and 2.  The channel closing
 * first means the standby was dropped: exit quietly. */
static long await_go(void)
{
    struct hm_error ready = {HM_MSG_READY, -1, 0};
    long r = HM_SYS3(SYS_write, HM_FD_REPORT, &ready, sizeof ready);
    if (r < 0)
        return r;
    struct hm_error go;
    union {
        struct cmsghdr h;
        char space[CMSG_SPACE(3 * sizeof(int))];
    } ctl;
    char *b = (char *)&ctl;
    for (unsigned long i = 0; i < sizeof ctl; i++)
        b[i] = 0;
    struct iovec iov = {&go, sizeof go};
    struct msghdr msg = {0, 0, &iov, 1, &ctl, sizeof ctl, 0};
    do
        r = HM_SYS3(SYS_recvmsg, HM_FD_REPORT, &msg, MSG_CMSG_CLOEXEC);
    while (r == -EINTR);
    if (r == 0)
        hm_exit(127);
    if (r < 0)
        return r;
    int got[3] = {-1, -1, -1};
    int n = 0;
    struct cmsghdr *c = CMSG_FIRSTHDR(&msg);
    if (c && c->cmsg_level == SOL_SOCKET && c->cmsg_type == SCM_RIGHTS) {
        n = (int)((c->cmsg_len - CMSG_LEN(0)) / sizeof(int));
        if (n > 3)
            n = 3;
        const int *in = (const int *)CMSG_DATA(c);
        for (int i = 0; i < n; i++)
            got[i] = in[i];
    }
    if (r != (long)sizeof go || go.stage != HM_MSG_GO || (msg.msg_flags & MSG_CTRUNC))
        return -EPROTO;
    /* 0, 1 and 2 are closed here, so the three descriptors the caller
     * sends arrive there in order: only their close-on-exec flag goes.
     * Otherwise each is moved into place through a free number above 2
     * (not higher: RLIMIT_NOFILE is already the action's). */
    int tmp[3] = {-1, -1, -1};
    int k = 0;
    r = 0;
    for (int i = 0; i < 3 && r == 0; i++) {
        if (!(go.op_index & (1 << i)))
            continue;
        if (k >= n) {
            r = -EPROTO;
        } else if (got[k] == i) {
            long d = HM_SYS3(SYS_fcntl, i, F_SETFD, 0);
            if (d < 0)
                r = d;
            got[k++] = -1;
        } else {
            long d = HM_SYS3(SYS_fcntl, got[k++], F_DUPFD_CLOEXEC, 3);
            if (d < 0)
                r = d;
            else
                tmp[i] = (int)d;
        }
    }
    for (int i = 0; i < n; i++)
        if (got[i] >= 0)
            HM_SYS1(SYS_close, got[i]);
    for (int i = 0; i < 3; i++) {
        if (tmp[i] < 0)
            continue;
        if (r == 0) {
            long d = HM_SYS3(SYS_dup3, tmp[i], i, 0);
            r = d < 0 ? d : 0;
        }
        HM_SYS1(SYS_close, tmp[i]);
    }
    return r < 0 ? r : 0;
}

/* What pid 1 hands to the action's process; both live in pid 1's frame. */
struct hm_action_args {
    const struct hm_plan *plan;
    volatile int failed;  /* set by the action before it reports a failure */
};

__attribute__((noreturn)) static void action_fail(struct hm_action_args *a, int stage,
                                                  int op_index, long err)
{
    a->failed = 1;
    fail(HM_FD_REPORT, stage, op_index, err);
}

/* The action's process: lower privileges, exec.  Runs on its own stack,
 * pid 1 suspended until the execve succeeds or this process exits. */
static int action_main(void *arg)
{
    struct hm_action_args *a = arg;
    const struct hm_plan *p = a->plan;
    long r;

    /* Dies with pid 1, whatever ends it (without a pid namespace nothing
     * else would). */
    r = HM_SYS2(SYS_prctl, PR_SET_PDEATHSIG, SIGKILL);
    if (r < 0)
        action_fail(a, HM_STAGE_PARENT, -1, r);
    /* A new session: no controlling terminal to push input into (TIOCSTI). */
    r = HM_SYS0(SYS_setsid);
    if (r < 0)
        action_fail(a, HM_STAGE_SETSID, -1, r);
    /* Before the capabilities go, as always: a standby is only used for an
     * execution with this same working directory. */
    r = HM_SYS1(SYS_chdir, p->cwd);
    if (r < 0)
        action_fail(a, HM_STAGE_CHDIR, -1, r);
    /* A fixed umask: the caller's would decide the modes of the outputs. */
    HM_SYS1(SYS_umask, 022);
    for (int i = 0; i < p->n_rlimits; i++) {
        struct rlimit lim = {p->rlimits[i].cur, p->rlimits[i].max};
        r = HM_SYS4(SYS_prlimit64, 0, p->rlimits[i].resource, &lim, 0);
        if (r < 0)
            action_fail(a, HM_STAGE_RLIMIT, i, r);
    }
    /* no_new_privs before the capability drop is fine: it only stops exec
     * from granting privileges, and is required by an unprivileged seccomp. */
    r = HM_SYS5(SYS_prctl, PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0);
    if (r < 0)
        action_fail(a, HM_STAGE_NO_NEW_PRIVS, -1, r);
    r = drop_capabilities();
    if (r < 0)
        action_fail(a, HM_STAGE_CAPABILITIES, -1, r);
    if (p->landlock_abi > 0) {
        int rule = -1;
        r = apply_landlock(p, &rule);
        if (r < 0)
            action_fail(a, HM_STAGE_LANDLOCK, rule, r);
    }
    /* Descriptors were closed by pid 1; only the report pipe (close-on-exec)
     * is left beside stdio.  Seccomp is last so that it cannot block any
     * setup step. */
    if (p->seccomp_filter) {
        struct sock_fprog prog = {(unsigned short)p->seccomp_len,
                                  (struct sock_filter *)p->seccomp_filter};
        r = HM_SYS3(SYS_seccomp, SECCOMP_SET_MODE_FILTER,
                    p->seccomp_notify ? SECCOMP_FILTER_FLAG_NEW_LISTENER : 0, &prog);
        if (r < 0)
            action_fail(a, HM_STAGE_SECCOMP, -1, r);
        if (p->seccomp_notify) {
            /* The listener (close-on-exec) goes to the caller, who answers
             * every notification; none can come before the exec below. */
            long listener = r;
            r = send_fd(HM_MSG_NOTIFY_FD, listener);
            HM_SYS1(SYS_close, listener);
            if (r < 0)
                action_fail(a, HM_STAGE_NOTIFY, -1, r);
        }
    }
    if (p->standby) {
        /* Everything above is the spec's (and the working directory's);
         * what belongs to one execution (stdio, argv) comes with the go. */
        r = await_go();
        if (r < 0)
            action_fail(a, HM_STAGE_FDS, -1, r);
    }
    unsigned long none = 0;
    r = HM_SYS4(SYS_rt_sigprocmask, SIG_SETMASK, &none, 0, HM_SIGSET_SIZE);
    if (r < 0)
        action_fail(a, HM_STAGE_SIGNALS, -1, r);
    /* PATH search as execvp does it: skip missing candidates, remember a
     * permission error, stop at any other error. */
    long err = -ENOENT;
    int failed_at = -1;
    int seen_eacces = 0;
    for (int i = 0; i < p->n_exec_paths; i++) {
        r = HM_SYS3(SYS_execve, p->exec_paths[i], p->argv, p->envp);
        if (r == -EACCES) {
            seen_eacces = 1;
            failed_at = i;
            continue;
        }
        if (r == -ENOENT || r == -ENOTDIR)
            continue;
        err = r;
        failed_at = i;
        break;
    }
    if (err == -ENOENT && seen_eacces)
        err = -EACCES;
    action_fail(a, HM_STAGE_EXEC, failed_at, err);
}

/* A time namespace for the action (plan.timens_offsets): processes created
 * from now on (the action) enter it, so its offsets must be set before the
 * first is.  Written through the /proc pid 1 starts with (the caller's):
 * the sandbox's own hides /proc/1, which /proc/self is there. */
static void enter_timens(const struct hm_plan *p)
{
    if (!p->timens_offsets)
        return;
    long r = HM_SYS1(SYS_unshare, HM_CLONE_NEWTIME);
    if (r == 0)
        r = write_file("/proc/self/timens_offsets", p->timens_offsets);
    if (r < 0)
        fail(HM_FD_REPORT, HM_STAGE_TIMENS, -1, r);
}

/* pid 1's setup of the namespaces: ids, time, mounts, root, names, loopback. */
static void build_sandbox(const struct hm_plan *p, struct hm_proc *proc)
{
    long r;
    /* The plan's modes exactly, not the caller's umask (pid 1 has its own
     * fs_struct: the caller's umask is untouched). */
    HM_SYS1(SYS_umask, 0);
    /* Ids first: until the maps exist, files cannot be created in the new
     * user namespace.  setgroups must be denied before an unprivileged
     * gid_map write. */
    if (p->uid_map) {
        r = write_file("/proc/self/setgroups", "deny");
        if (r < 0 && r != -ENOENT)
            fail(HM_FD_REPORT, HM_STAGE_SETGROUPS, -1, r);
        r = write_file("/proc/self/uid_map", p->uid_map);
        if (r < 0)
            fail(HM_FD_REPORT, HM_STAGE_UID_MAP, -1, r);
        r = write_file("/proc/self/gid_map", p->gid_map);
        if (r < 0)
            fail(HM_FD_REPORT, HM_STAGE_GID_MAP, -1, r);
    }

    stamp(proc, p->profile, HM_STAMP_IDS);
    /* Before the mounts: /proc/self of the sandbox's own /proc is /proc/1,
     * which the op list masks. */
    enter_timens(p);
    struct hm_fail f = {0, -1, 0};
    if ((p->mntns_fd >= 0 ? copy_root(p, proc, &f) : build_root(p, proc, &f)) < 0)
        fail(HM_FD_REPORT, f.stage, f.op_index, f.err);

    if (p->hostname) {
        r = HM_SYS2(SYS_sethostname, p->hostname, hm_strlen(p->hostname));
        if (r == 0 && p->domainname)
            r = HM_SYS2(SYS_setdomainname, p->domainname, hm_strlen(p->domainname));
        if (r < 0)
            fail(HM_FD_REPORT, HM_STAGE_HOSTNAME, -1, r);
    }
    if (p->loopback_up) {
        r = loopback_up();
        if (r < 0)
            fail(HM_FD_REPORT, HM_STAGE_LOOPBACK, -1, r);
    }
}

/* Every process of the sandbox but pid 1.  With a pid namespace,
 * kill(-1) from its init: the namespace's processes and no others, named
 * by no number.  Without one (group >= 0, Landlock-only, which needs Linux
 * 6.12 and so has pidfd process-group signals), the action's process
 * group through the action's pidfd: seccomp keeps every process of the
 * action in it. */
static void signal_sandbox(long group, int sig)
{
    if (group >= 0)
        HM_SYS4(SYS_pidfd_send_signal, group, sig, 0, HM_PIDFD_SIGNAL_PROCESS_GROUP);
    else
        HM_SYS2(SYS_kill, -1, sig);
}

int hm__pid1_main(void *argp)
{
    const struct hm_child_args *a = argp;
    const struct hm_plan *p = a->plan;
    /* Copies: *a lives on the caller's stack, which is gone once the
     * caller sees the report pipe close. */
    struct hm_proc *proc = a->proc;
    char *action_stack = a->action_stack_top;
    int profile = p->profile;
    long r;

    stamp(proc, profile, HM_STAMP_START);

    reset_signal_handlers();
    setup_fds(p, a->report_fd, a->parent_pidfd);
    /* A name for ps inside the sandbox instead of the interpreter's. */
    HM_SYS2(SYS_prctl, PR_SET_NAME, "hermetic-init");

    /* Die with the caller.  The pidfd check closes the window in which the
     * caller died before the parent-death signal was armed. */
    /* Without namespaces killing pid 1 would not end the action: pid 1
     * gets the signal that makes it end the action's process group. */
    r = HM_SYS2(SYS_prctl, PR_SET_PDEATHSIG, p->no_namespaces ? HM_SIG_END : SIGKILL);
    if (r < 0)
        fail(HM_FD_REPORT, HM_STAGE_PARENT, -1, r);
    if (a->parent_pidfd >= 0) {
        struct pollfd pfd = {HM_FD_PARENT, POLLIN, 0};
        struct timespec zero = {0, 0};
        if (HM_SYS5(SYS_ppoll, &pfd, 1, &zero, 0, 0) > 0)
            hm_exit(127);
        HM_SYS1(SYS_close, HM_FD_PARENT);
    }

    /* Without namespaces (Landlock-only) there is nothing to build: pid 1
     * only adopts orphans, so that it can reap and end them. */
    int no_ns = p->no_namespaces;
    long caller = HM_SYS0(SYS_getppid);
    if (no_ns) {
        r = HM_SYS2(SYS_prctl, PR_SET_CHILD_SUBREAPER, 1);
        if (r < 0)
            fail(HM_FD_REPORT, HM_STAGE_SUBREAPER, -1, r);
        enter_timens(p);
    } else {
        build_sandbox(p, proc);
    }
    stamp(proc, profile, HM_STAMP_SEALED);
    if (p->proxy_port > 0) {
        r = proxy_listen(p->proxy_port);
        if (r < 0)
            fail(HM_FD_REPORT, HM_STAGE_PROXY, -1, r);
    }

    struct hm_action_args aa = {p, 0};
    long action;
    if (p->cgroup_fd >= 0) {
        /* The action is born in its cgroup v2 group; pid 1 stays outside.
         * pid 1 shares the caller's memory, and the OOM killer, weighing a
         * task by its address space, would pick it in the group and with
         * it kill every process sharing that memory: the caller. */
        struct hm_clone_args ca = {0};
        ca.flags = CLONE_VM | CLONE_VFORK | HM_CLONE_INTO_CGROUP;
        ca.exit_signal = SIGCHLD;
        ca.stack = (unsigned long long)(unsigned long)(action_stack - HM_ACTION_STACK);
        ca.stack_size = HM_ACTION_STACK;
        ca.cgroup = HM_FD_CGROUP;
        action = hm_clone3_run(&ca, sizeof ca, action_main, &aa);
        HM_SYS1(SYS_close, HM_FD_CGROUP);
    } else {
        action = hm_clone_run(CLONE_VM | CLONE_VFORK | SIGCHLD, action_stack, action_main, &aa);
    }
    if (action < 0)
        fail(HM_FD_REPORT, HM_STAGE_SPAWN, -1, action);
    /* Without a pid namespace the sandbox is the action's process group,
     * named by its pidfd rather than its number: once the last member is
     * reaped the number is free, and a kill(-number) after that (the
     * final sweep below) could end an unrelated group that took it.  Taken
     * before anything reaps the action (only this process does), so it is
     * the action's; if it cannot be had, the action dies with this
     * process (its parent-death signal). */
    long group = -1;
    if (no_ns) {
        group = HM_SYS2(SYS_pidfd_open, action, 0);
        if (group < 0)
            fail(HM_FD_REPORT, HM_STAGE_SPAWN, -1, group);
    }
    /* The action has exec'd, or has reported its failure.  An explicit
     * success record (stage 0), not the pipe's end-of-file, tells the
     * caller: a process the caller forked meanwhile may hold a copy of the
     * pipe.  Nothing of *p or *a may be used after this. */
    stamp(proc, profile, HM_STAMP_EXEC);
    if (!aa.failed) {
        struct hm_error ok = {HM_STAGE_NONE, -1, 0};
        HM_SYS3(SYS_write, HM_FD_REPORT, &ok, sizeof ok);
    }
    HM_SYS1(SYS_close, HM_FD_REPORT);
    /* From now on block only what init takes synchronously.  Other signals
     * sent from inside the namespace are then dropped, as for any init
     * without handlers, instead of queueing against the user's limit. */

    /* init: every signal stays blocked and is taken synchronously. */
    unsigned long wanted = sigbit(SIGCHLD) | sigbit(SIGTERM) | sigbit(SIGINT) | sigbit(SIGHUP) |
                           sigbit(SIGQUIT) | sigbit(SIGUSR1) | sigbit(SIGUSR2) | sigbit(HM_SIG_END);
    HM_SYS4(SYS_rt_sigprocmask, SIG_SETMASK, &wanted, 0, HM_SIGSET_SIZE);
    int status = 0, st;
    int main_done = 0, ending = 0;
    siginfo_t info;
    while (!main_done && !ending) {
        long sig = HM_SYS4(SYS_rt_sigtimedwait, &wanted, &info, 0, HM_SIGSET_SIZE);
        if (sig == SIGCHLD) {
            for (;;) {
                long pid = HM_SYS4(SYS_wait4, -1, &st, WNOHANG | __WALL, 0);
                if (pid <= 0)
                    break;
                if (pid == action) {
                    status = st;
                    main_done = 1;
                    stamp(proc, profile, HM_STAMP_EXITED);
                }
            }
        } else if (sig == HM_SIG_END) {
            /* Only the caller may end the sandbox this way: a sender
             * outside the namespace shows as pid 0. */
            ending = no_ns ? info.si_pid == caller : info.si_pid == 0;
        } else if (sig > 0) {
            /* kill(-1) from init reaches every process of the namespace
             * but init itself; without one, the action's process group
             * (seccomp keeps every process in it). */
            signal_sandbox(group, sig);
        }
    }
    /* The main process is done, or the caller ends the sandbox: nothing
     * may outlive it.  Reaping everything here, rather than dying, lets the
     * caller's reap of pid 1 (hm_reap) account for every process. */
    signal_sandbox(group, SIGKILL);
    long pid;
    while ((pid = HM_SYS4(SYS_wait4, -1, &st, __WALL, 0)) != -ECHILD) {
        /* An orphan adopted after the kill above is in the group too. */
        if (no_ns)
            signal_sandbox(group, SIGKILL);
        if (pid == action && !main_done) {
            status = st;
            main_done = 1;
        }
    }
    proc->status = status;
    proc->main_exited = main_done;
    struct rusage ru;
    if (HM_SYS2(SYS_getrusage, RUSAGE_CHILDREN, &ru) == 0) {
        proc->ru_utime_us = (long long)ru.ru_utime.tv_sec * 1000000 + ru.ru_utime.tv_usec;
        proc->ru_stime_us = (long long)ru.ru_stime.tv_sec * 1000000 + ru.ru_stime.tv_usec;
        proc->ru_inblock = ru.ru_inblock;
        proc->ru_oublock = ru.ru_oublock;
        proc->ru_valid = 1;
    }
    stamp(proc, profile, HM_STAMP_DONE);
    hm_exit(0);
}

/* Makes a prepared mount namespace (hm_mntns_create): the root built from
 * plan->ops, in a namespace of its own that a descriptor keeps.  Cloned
 * with CLONE_FILES, so the descriptor lands in the caller's table, and
 * CLONE_VFORK, so the caller waits. */
int hm__mntns_main(void *argp)
{
    struct hm_mntns_args *a = argp;
    struct hm_fail f = {0, -1, 0};
    /* The plan's modes exactly: this process has its own fs_struct. */
    HM_SYS1(SYS_umask, 0);
    long fd = HM_SYS4(SYS_openat, AT_FDCWD, "/proc/self/ns/mnt", O_RDONLY | O_CLOEXEC, 0);
    if (fd < 0) {
        failed(&f, HM_STAGE_MNTNS, -1, fd);
    } else if (build_root(a->plan, 0, &f) < 0) {
        HM_SYS1(SYS_close, fd);
        fd = -1;
    }
    a->fd = (int)fd;
    a->stage = f.stage;
    a->op_index = f.op_index;
    a->err = (int)f.err;
    return 0;
}

/* Makes a network namespace for the pool: loopback up, and a descriptor
 * for it.  Cloned with CLONE_FILES, so the descriptor lands in the caller's
 * table, and CLONE_VFORK, so the caller waits. */
int hm__netns_main(void *argp)
{
    struct hm_netns_args *a = argp;
    long r = loopback_up();
    if (r == 0)
        r = HM_SYS4(SYS_openat, AT_FDCWD, "/proc/self/ns/net", O_RDONLY | O_CLOEXEC, 0);
    a->fd = r >= 0 ? (int)r : -1;
    a->err = r >= 0 ? 0 : (int)r;
    return 0;
}
