/*
 * action.c: the action's process, cloned by pid 1 with CLONE_VM|CLONE_VFORK:
 * its last steps (parent-death signal, session, working directory, umask,
 * rlimits, no_new_privs, capabilities, Landlock, seccomp), a standby's
 * wait for the caller's go (after them, or before them for a late standby,
 * which mounts the execution's own read-only paths first), and the execve.
 *
 * Like every child-side file (see child.c), this one runs in the caller's
 * memory: raw system calls over buffers the caller formatted, no libc.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <linux/filter.h>
#include <linux/seccomp.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/socket.h>

#include "internal.h"
#include "rawsys.h"

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
        hm__exit(127);
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

__attribute__((noreturn)) static void action_fail(struct hm_action_args *a, int stage,
                                                  int op_index, long err)
{
    a->failed = 1;
    hm__fail(HM_FD_REPORT, stage, op_index, err);
}

/* The action's process: lower privileges, exec.  Runs on its own stack,
 * pid 1 suspended until the execve succeeds or this process exits. */
int hm__action_main(void *arg)
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
    if (p->standby == HM_STANDBY_LATE) {
        /* Waits with every capability it was born with: what the go
         * brings (an execution's own read-only paths) is mounted here, in
         * the sandbox's namespace, before anything below resolves a path.
         * No code but this runs in the sandbox yet: pid 1 waits for this
         * process's exec. */
        r = await_go();
        if (r < 0)
            action_fail(a, HM_STAGE_FDS, -1, r);
        struct hm_fail f = {0, -1, 0};
        if (hm__run_ops(p->late_ops, p->n_late_ops, p->n_ops, &f) < 0)
            action_fail(a, f.stage, f.op_index, f.err);
    }
    /* Before the capabilities go, as always: a standby is only used for an
     * execution with this same working directory (a late one enters it
     * only now, after the execution's own mounts). */
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
    r = hm__no_new_privs();
    if (r < 0)
        action_fail(a, HM_STAGE_NO_NEW_PRIVS, -1, r);
    r = hm__drop_capabilities();
    if (r < 0)
        action_fail(a, HM_STAGE_CAPABILITIES, -1, r);
    if (p->landlock_abi > 0) {
        int rule = -1;
        r = hm__apply_landlock(p, &rule);
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
            r = hm__send_fd(HM_MSG_NOTIFY_FD, listener);
            HM_SYS1(SYS_close, listener);
            if (r < 0)
                action_fail(a, HM_STAGE_NOTIFY, -1, r);
        }
    }
    if (p->standby == HM_STANDBY_SET_UP) {
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
