/*
 * child.c: what runs inside the sandbox before the action's execve: pid 1's
 * entry, which calls the setup stages in their fixed order, and the report
 * channel every stage fails through.
 *
 * Two processes run this code, both sharing the caller's memory:
 *   pid 1     created by hm_spawn() with the namespace flags (CLONE_VM, no
 *             CLONE_VFORK).  It builds the sandbox, starts the action, then
 *             stays as the namespace's init (init.c).
 *   action    cloned by pid 1 with CLONE_VM|CLONE_VFORK.  It lowers its own
 *             privileges and execs the command (action.c).
 *
 * The stages, in order (each file says why its steps come where they do):
 *   pid 1     signal handlers reset, descriptors moved (here); parent-death
 *             signal; ids and maps (creds.c); a time namespace (here);
 *             mounts, pivot_root, the op list, the old root detached, the
 *             root read-only (mounts.c); hostname (here), loopback (net.c);
 *             the proxy's socket (net.c); the action cloned.
 *   action    parent-death signal, session, working directory, rlimits;
 *             no_new_privs and capabilities (creds.c); Landlock
 *             (landlock.c); seccomp, last so that it cannot block a setup
 *             step; execve (action.c).
 *
 * For a caller that is root on the host, the root filesystem is built once
 * per spec by a third (hm__mntns_main in mounts.c, cloned by
 * hm_mntns_create) into a mount namespace the caller keeps; pid 1 then
 * joins it and unshares a copy instead of building the root itself.
 *
 * Because the memory (and the calling thread's TLS) is shared with a running
 * Python interpreter, these files follow the rules of a vfork child: raw
 * system calls over buffers the caller formatted (rawsys.h), no malloc, no
 * stdio, no errno, no locks, no writes to memory the caller reads except
 * struct hm_proc's status fields.  Failures go back as one struct hm_error
 * on the close-on-exec report pipe, then the process exits.
 */
#define _GNU_SOURCE
#include <errno.h> /* constants only: errno itself is never touched */
#include <fcntl.h>
#include <poll.h>
#include <sched.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>

#include "internal.h"
#include "rawsys.h"

unsigned long hm__strlen(const char *s)
{
    unsigned long n = 0;
    while (s[n])
        n++;
    return n;
}

/* A stage stamp into hm_proc (plan.profile only): pid 1 may write its own
 * fields of hm_proc, which the caller reads after reaping it. */
void hm__stamp(struct hm_proc *proc, int on, int which)
{
    if (!on)
        return;
    struct timespec ts;
    HM_SYS2(SYS_clock_gettime, CLOCK_MONOTONIC, &ts);
    proc->stamps[which] =
        (unsigned long long)ts.tv_sec * 1000000000ULL + (unsigned long long)ts.tv_nsec;
}

__attribute__((noreturn)) void hm__exit(int code)
{
    for (;;)
        HM_SYS1(SYS_exit, code);
}

/* Send one error record and end this process.  err is -errno. */
__attribute__((noreturn)) void hm__fail(int fd, int stage, int op_index, long err)
{
    struct hm_error rec;
    rec.stage = stage;
    rec.op_index = op_index;
    rec.err = (int)-err;
    HM_SYS3(SYS_write, fd, &rec, sizeof rec);
    hm__exit(127);
}

int hm__failed(struct hm_fail *f, int stage, int op_index, long err)
{
    f->stage = stage;
    f->op_index = op_index;
    f->err = err;
    return -1;
}

/* Hand a descriptor to the caller over the report channel (a SOCK_SEQPACKET
 * pair): one record tagged `tag` (HM_MSG_*) with the descriptor attached. */
long hm__send_fd(int tag, long fd)
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

long hm__write_file(const char *path, const char *text)
{
    long fd = HM_SYS4(SYS_openat, AT_FDCWD, path, O_WRONLY | O_CLOEXEC, 0);
    if (fd < 0)
        return fd;
    long n = HM_SYS3(SYS_write, fd, text, hm__strlen(text));
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
            hm__fail(report_fd, HM_STAGE_FDS, i, r);
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
            hm__fail(tmp[3] >= 0 ? tmp[3] : report_fd, HM_STAGE_FDS, i, r);
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
        hm__fail(HM_FD_REPORT, HM_STAGE_FDS, -1, r);
    }
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
        r = hm__write_file("/proc/self/timens_offsets", p->timens_offsets);
    if (r < 0)
        hm__fail(HM_FD_REPORT, HM_STAGE_TIMENS, -1, r);
}

/* pid 1's setup of the namespaces: ids, time, mounts, root, names, loopback. */
static void build_sandbox(const struct hm_plan *p, struct hm_proc *proc)
{
    long r;
    /* The plan's modes exactly, not the caller's umask (pid 1 has its own
     * fs_struct: the caller's umask is untouched). */
    HM_SYS1(SYS_umask, 0);
    /* Ids first: until the maps exist, files cannot be created in the new
     * user namespace. */
    struct hm_fail f = {0, -1, 0};
    if (hm__write_id_maps(p, &f) < 0)
        hm__fail(HM_FD_REPORT, f.stage, f.op_index, f.err);
    hm__stamp(proc, p->profile, HM_STAMP_IDS);
    /* Before the mounts: /proc/self of the sandbox's own /proc is /proc/1,
     * which the op list masks. */
    enter_timens(p);
    if ((p->mntns_fd >= 0 ? hm__copy_root(p, proc, &f) : hm__build_root(p, proc, &f)) < 0)
        hm__fail(HM_FD_REPORT, f.stage, f.op_index, f.err);

    if (p->hostname) {
        r = HM_SYS2(SYS_sethostname, p->hostname, hm__strlen(p->hostname));
        if (r == 0 && p->domainname)
            r = HM_SYS2(SYS_setdomainname, p->domainname, hm__strlen(p->domainname));
        if (r < 0)
            hm__fail(HM_FD_REPORT, HM_STAGE_HOSTNAME, -1, r);
    }
    if (p->loopback_up) {
        r = hm__loopback_up();
        if (r < 0)
            hm__fail(HM_FD_REPORT, HM_STAGE_LOOPBACK, -1, r);
    }
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

    hm__stamp(proc, profile, HM_STAMP_START);

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
        hm__fail(HM_FD_REPORT, HM_STAGE_PARENT, -1, r);
    if (a->parent_pidfd >= 0) {
        struct pollfd pfd = {HM_FD_PARENT, POLLIN, 0};
        struct timespec zero = {0, 0};
        if (HM_SYS5(SYS_ppoll, &pfd, 1, &zero, 0, 0) > 0)
            hm__exit(127);
        HM_SYS1(SYS_close, HM_FD_PARENT);
    }

    /* Without namespaces (Landlock-only) there is nothing to build: pid 1
     * only adopts orphans, so that it can reap and end them. */
    int no_ns = p->no_namespaces;
    long caller = HM_SYS0(SYS_getppid);
    if (no_ns) {
        r = HM_SYS2(SYS_prctl, PR_SET_CHILD_SUBREAPER, 1);
        if (r < 0)
            hm__fail(HM_FD_REPORT, HM_STAGE_SUBREAPER, -1, r);
        enter_timens(p);
    } else {
        build_sandbox(p, proc);
    }
    hm__stamp(proc, profile, HM_STAMP_SEALED);
    if (p->proxy_port > 0) {
        r = hm__proxy_listen(p->proxy_port);
        if (r < 0)
            hm__fail(HM_FD_REPORT, HM_STAGE_PROXY, -1, r);
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
        action = hm_clone3_run(&ca, sizeof ca, hm__action_main, &aa);
        HM_SYS1(SYS_close, HM_FD_CGROUP);
    } else {
        action = hm_clone_run(CLONE_VM | CLONE_VFORK | SIGCHLD, action_stack, hm__action_main,
                              &aa);
    }
    if (action < 0)
        hm__fail(HM_FD_REPORT, HM_STAGE_SPAWN, -1, action);
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
            hm__fail(HM_FD_REPORT, HM_STAGE_SPAWN, -1, group);
    }
    /* The action has exec'd, or has reported its failure.  An explicit
     * success record (stage 0), not the pipe's end-of-file, tells the
     * caller: a process the caller forked meanwhile may hold a copy of the
     * pipe.  Nothing of *p or *a may be used after this. */
    hm__stamp(proc, profile, HM_STAMP_EXEC);
    if (!aa.failed) {
        struct hm_error ok = {HM_STAGE_NONE, -1, 0};
        HM_SYS3(SYS_write, HM_FD_REPORT, &ok, sizeof ok);
    }
    HM_SYS1(SYS_close, HM_FD_REPORT);
    hm__init_run(proc, action, group, caller, no_ns, profile);
}
