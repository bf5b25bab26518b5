/*
 * spawn.c: the caller's side of a sandbox: clone pid 1, wait for its setup
 * report, release the stacks after the caller reaped it.
 *
 * Called from Python through CFFI with the GIL released, possibly from
 * several threads at once: no globals, everything lives in the arguments.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include "internal.h"
#include "kernel_compat.h"

/* Two stacks with a guard page below each: pid 1 at the top, the action's
 * (used only until its execve) below.  The child code uses little stack. */
#define HM_STACK HM_ACTION_STACK
#define HM_GUARD 4096UL
#define HM_STACK_REGION (2 * (HM_STACK + HM_GUARD))

/* Longest wait for the setup report (the action's exec included). */
#define HM_SETUP_TIMEOUT_MS 120000

/* Every signal blocked, 32 and 33 included: glibc's sigfillset() and
 * pthread_sigmask() leave those two (its own) unblocked, and their
 * handlers must not run in a child that shares this thread's TLS. */
static void block_all(unsigned long *old)
{
    unsigned long all = ~0UL;
    syscall(SYS_rt_sigprocmask, SIG_SETMASK, &all, old, sizeof all);
}

static void restore_mask(const unsigned long *old)
{
    syscall(SYS_rt_sigprocmask, SIG_SETMASK, old, NULL, sizeof *old);
}

/* The stack region of a spawn that did not happen: ours is unmapped, a
 * borrowed one goes back to the caller untouched. */
static void drop_region(struct hm_proc *proc, char *region)
{
    if (!proc->stack_borrowed)
        hm_stack_free(region);
}

/* One record from the report channel, keeping a descriptor it carries in
 * *fd (else -1).  Returns the record's size, 0 at end of file, or -errno. */
static int read_record(int sock, struct hm_error *rec, int *fd)
{
    union {
        struct cmsghdr h;
        char space[CMSG_SPACE(sizeof(int))];
    } ctl;
    struct iovec iov = {rec, sizeof *rec};
    struct msghdr msg;
    memset(&msg, 0, sizeof msg);
    msg.msg_iov = &iov;
    msg.msg_iovlen = 1;
    msg.msg_control = &ctl;
    msg.msg_controllen = sizeof ctl;
    *fd = -1;
    ssize_t n;
    do
        n = recvmsg(sock, &msg, MSG_CMSG_CLOEXEC | MSG_DONTWAIT);
    while (n < 0 && errno == EINTR);
    if (n < 0)
        return -errno;
    for (struct cmsghdr *c = CMSG_FIRSTHDR(&msg); c; c = CMSG_NXTHDR(&msg, c))
        if (c->cmsg_level == SOL_SOCKET && c->cmsg_type == SCM_RIGHTS &&
            c->cmsg_len == CMSG_LEN(sizeof(int)))
            memcpy(fd, CMSG_DATA(c), sizeof(int));
    return (int)n;
}

/* Every child of ours is signalled and reaped through its pidfd, never by
 * its pid: once a child is reaped its number is free, and a kill or wait by
 * number (a retry, a second path) could reach whatever process took it.
 * The children are also cloned with no exit signal (a "clone child"), which
 * a waitpid(-1) without __WALL or __WCLONE elsewhere in the caller never
 * sees: no one else reaps them, so their pidfds stay good for waitid. */
static int signal_child(int pidfd, int sig)
{
    return syscall(SYS_pidfd_send_signal, pidfd, sig, NULL, 0) < 0 ? -errno : 0;
}

/* waitid(P_PIDFD) of a child (clone child or not: __WALL), with the rusage
 * the raw system call takes as its fifth argument: status and accounting
 * in one step.  0, or -errno (-EINTR included: the caller decides whether
 * to repeat). */
int hm_reap(int pidfd, struct hm_reaped *out)
{
    siginfo_t info;
    struct rusage ru;
    memset(&info, 0, sizeof info);
    memset(&ru, 0, sizeof ru);
    if (syscall(SYS_waitid, HM_P_PIDFD, pidfd, &info, WEXITED | __WALL, &ru) < 0)
        return -errno;
    /* The wait status waitpid() would have given. */
    int code = info.si_status;
    switch (info.si_code) {
    case CLD_EXITED:
        out->status = (code & 0xff) << 8;
        break;
    case CLD_DUMPED:
        out->status = (code & 0x7f) | 0x80;
        break;
    default: /* CLD_KILLED */
        out->status = code & 0x7f;
        break;
    }
    out->utime_us = (long long)ru.ru_utime.tv_sec * 1000000 + ru.ru_utime.tv_usec;
    out->stime_us = (long long)ru.ru_stime.tv_sec * 1000000 + ru.ru_stime.tv_usec;
    out->inblock = ru.ru_inblock;
    out->oublock = ru.ru_oublock;
    return 0;
}

/* Kill a child of ours and reap it, both through its pidfd. */
static void kill_and_reap(int pidfd)
{
    struct hm_reaped gone;
    (void)signal_child(pidfd, SIGKILL);
    while (hm_reap(pidfd, &gone) == -EINTR)
        ;
}

static void close_handed(struct hm_proc *proc)
{
    if (proc->notify_fd >= 0)
        close(proc->notify_fd);
    if (proc->proxy_fd >= 0)
        close(proc->proxy_fd);
    proc->notify_fd = proc->proxy_fd = -1;
}

/* Each notification stops the action until the caller answers: two
 * wakeups per call.  With this flag (Linux 6.6) the kernel wakes the other
 * side on the CPU that wakes it, as a direct hand-off, instead of wherever
 * the scheduler would put it: a round trip measured 37 us without, 11-12
 * us with.  Only a speed hint: an older kernel refuses it (EINVAL), and the
 * listener works as before. */
static void notify_sync_wakeups(int fd)
{
    (void)ioctl(fd, SECCOMP_IOCTL_NOTIF_SET_FLAGS, SECCOMP_USER_NOTIF_FD_SYNC_WAKE_UP);
}

/* One record comes: stage 0 when the action has exec'd (or HM_MSG_READY
 * from a standby), else where setup failed; the descriptor records before
 * it are kept in proc.  pid 1's pidfd is watched too, in case it dies
 * without a word (killed from outside); end-of-file cannot be relied on, as
 * a process forked meanwhile by another thread may hold the pipe.  Returns
 * the record's size or -errno. */
static int await_report(struct hm_proc *proc, int chan, struct hm_error *rec)
{
    int n = -EPROTO;
    struct pollfd fds[2] = {{chan, POLLIN, 0}, {proc->pidfd, POLLIN, 0}};
    /* Bounded: setup takes milliseconds; a sandbox stuck before its exec
     * (a bug, a filesystem that hangs) must not hang the caller. */
    int waited_ms = 0;
    for (;;) {
        int r = poll(fds, 2, 1000);
        if (r < 0 && errno == EINTR)
            continue;
        if (r == 0) {
            waited_ms += 1000;
            if (waited_ms >= HM_SETUP_TIMEOUT_MS) {
                n = -ETIMEDOUT;
                break;
            }
            continue;
        }
        if (r < 0) {
            n = -errno;
            break;
        }
        if (fds[0].revents || fds[1].revents) {
            /* The records, if any, are in the channel before pid 1 can
             * exit. */
            int fd;
            n = read_record(chan, rec, &fd);
            if (n == -EAGAIN)
                n = 0;
            if (n == (int)sizeof *rec && fd >= 0 && rec->stage == HM_MSG_NOTIFY_FD &&
                proc->notify_fd < 0) {
                proc->notify_fd = fd;
                notify_sync_wakeups(fd);
                continue;
            }
            if (n == (int)sizeof *rec && fd >= 0 && rec->stage == HM_MSG_PROXY_FD &&
                proc->proxy_fd < 0) {
                proc->proxy_fd = fd;
                continue;
            }
            if (fd >= 0) {
                close(fd);
                n = -EPROTO;
            }
            break;
        }
    }
    return n;
}

/* After the report: 0 on success; else the error recorded, and the sandbox
 * ended, reaped and released. */
static int settle(struct hm_proc *proc, int n, const struct hm_error *rec, struct hm_error *error)
{
    if (n == (int)sizeof *rec && rec->stage == HM_STAGE_NONE)
        return 0;
    if (n == (int)sizeof *rec) {
        *error = *rec;
    } else {
        /* No record: pid 1 died during setup, or the pipe failed. */
        error->stage = HM_STAGE_NONE;
        error->op_index = -1;
        error->err = n < 0 ? -n : EPROTO;
    }
    close_handed(proc);
    /* Never leave a sandbox running unsupervised. */
    kill_and_reap(proc->pidfd);
    proc->pid = -1;
    hm_proc_release(proc);
    return -(error->err ? error->err : EPROTO);
}

/* What every spawn on one of those threads would otherwise open and close
 * again (-1: not kept, opened per spawn): the thread's own network
 * namespace, to come back to from a pooled one, and a pidfd of this
 * process for pid 1's check that its caller lives.  Only there: a
 * caller's thread may move between network namespaces, and a process
 * forked from it has another pid, while these threads never do either
 * (a forked child starts its own). */
static __thread int own_home_net = -1;
static __thread int own_self = -1;

/* Once on each thread of hermetic's own that spawns sandboxes (the keeper
 * of standbys, the cgroup v1 workers): empty the thread's capability
 * bounding set.  pid 1 and the action inherit it when no user namespace is
 * made (a new one starts with a full set), so the action's own drop finds
 * nothing left to drop.  The thread keeps its effective capabilities, which
 * is what setting up a sandbox needs; capabilities belong to a thread, so
 * the caller's threads keep their bounding set.  It also opens the
 * descriptors above for the thread's spawns.  0, or -errno (EPERM
 * without CAP_SETPCAP: then no action of this caller can exec with more
 * than the caller's threads could). */
int hm_spawner_thread_init(void)
{
    if (own_home_net < 0)
        own_home_net = open("/proc/thread-self/ns/net", O_RDONLY | O_CLOEXEC);
    if (own_self < 0)
        own_self = (int)syscall(SYS_pidfd_open, getpid(), 0);
    for (int cap = 0; cap < 64; cap++) {
        int r = prctl(PR_CAPBSET_READ, cap, 0, 0, 0);
        if (r < 0)
            return errno == EINVAL ? 0 : -errno;
        if (r == 1 && prctl(PR_CAPBSET_DROP, cap, 0, 0, 0) < 0)
            return -errno;
    }
    return 0;
}

/* Before such a thread ends: close what hm_spawner_thread_init kept. */
void hm_spawner_thread_fini(void)
{
    if (own_home_net >= 0)
        close(own_home_net);
    if (own_self >= 0)
        close(own_self);
    own_home_net = own_self = -1;
}

int hm_spawn(const struct hm_plan *plan, struct hm_proc *proc, struct hm_error *error)
{
    int e;
    memset(error, 0, sizeof *error);
    proc->pid = -1;
    proc->pidfd = -1;
    proc->status = 0;
    proc->main_exited = 0;
    proc->notify_fd = -1;
    proc->proxy_fd = -1;
    proc->channel_fd = -1;
    /* A stack the caller lends (reused across spawns saves the mapping
     * and, above all, the unmapping with its TLB shootdown), or our own. */
    char *region = proc->stack;
    proc->stack_borrowed = region != NULL;
    proc->stack = NULL;
    proc->stack_size = 0;
    if (!region) {
        region = hm_stack_new();
        if (!region)
            return -errno;
    }

    /* The report channel: datagrams, so that a record can carry a
     * descriptor (the seccomp listener, the proxy socket). */
    int pipefd[2];
    if (socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, pipefd) < 0) {
        e = errno;
        drop_region(proc, region);
        return -e;
    }
    /* Lets pid 1 tell whether the caller died before it armed
     * PR_SET_PDEATHSIG; absent on kernels without pidfds. */
    int self = own_self >= 0 ? own_self : (int)syscall(SYS_pidfd_open, getpid(), 0);

    struct hm_child_args args;
    args.plan = plan;
    args.proc = proc;
    args.report_fd = pipefd[1];
    args.parent_pidfd = self;
    args.action_stack_top = region + HM_GUARD + HM_STACK;

    /* Every signal blocked across clone: until pid 1 has reset the
     * inherited handlers, a signal would run the interpreter's handler in a
     * process that shares its memory. */
    /* A pooled network namespace is joined by this thread only (network
     * namespaces are per thread), just across the clone, so the child
     * inherits it; the caller's other threads never see it. */
    int home_net = -1;
    if (plan->netns_fd >= 0) {
        home_net = own_home_net >= 0 ? own_home_net
                                     : open("/proc/thread-self/ns/net", O_RDONLY | O_CLOEXEC);
        if (home_net < 0 || setns(plan->netns_fd, CLONE_NEWNET) < 0) {
            e = errno;
            if (home_net >= 0 && home_net != own_home_net)
                close(home_net);
            close(pipefd[0]);
            close(pipefd[1]);
            if (self >= 0 && self != own_self)
                close(self);
            drop_region(proc, region);
            error->stage = HM_STAGE_NETNS;
            error->op_index = -1;
            error->err = e;
            return -e;
        }
    }
    unsigned long old;
    block_all(&old);
    int pidfd = -1;
    /* No exit signal (see signal_child): pid 1 is ours alone to reap. */
    int flags = (int)plan->ns_flags | CLONE_VM | CLONE_PIDFD;
    pid_t pid = clone(hm__pid1_main, region + HM_STACK_REGION, flags, &args, &pidfd);
    e = errno;
    restore_mask(&old);
    int restore_err = 0;
    if (home_net >= 0) {
        /* Cannot fail short of the kernel refusing a namespace this thread
         * was in a moment ago; if it ever does, the caller must know. */
        if (setns(home_net, CLONE_NEWNET) < 0)
            restore_err = errno;
        if (home_net != own_home_net)
            close(home_net);
    }

    close(pipefd[1]);
    if (self >= 0 && self != own_self)
        close(self);
    if (pid < 0) {
        close(pipefd[0]);
        drop_region(proc, region);
        error->stage = HM_STAGE_CLONE;
        error->op_index = -1;
        error->err = e;
        return -e;
    }
    proc->pid = pid;
    proc->pidfd = pidfd;
    proc->stack = region;
    proc->stack_size = HM_STACK_REGION;
    if (restore_err) {
        /* The sandbox runs, but this thread is in the wrong network
         * namespace: end the sandbox and report. */
        close(pipefd[0]);
        kill_and_reap(pidfd);
        proc->pid = -1;
        hm_proc_release(proc);
        error->stage = HM_STAGE_NETNS;
        error->op_index = -1;
        error->err = restore_err;
        return -restore_err;
    }

    struct hm_error rec;
    int n = await_report(proc, pipefd[0], &rec);
    if (plan->standby && n == (int)sizeof rec && rec.stage == HM_MSG_READY) {
        /* Set up and waiting: hm_activate() sends the go on this channel. */
        proc->channel_fd = pipefd[0];
        return 0;
    }
    close(pipefd[0]);
    return settle(proc, n, &rec, error);
}

/* Start a standby sandbox's action (see hm_plan.standby): its stdio go
 * over the report channel, then the same report as hm_spawn() waits for.
 * argv and exec_paths of the plan it was spawned with (and a late one's
 * late_ops) must be filled in before; its working directory is the one it
 * was spawned with.  0 once the action has exec'd; else -errno, error
 * filled in and the sandbox ended and released. */
int hm_activate(struct hm_proc *proc, int stdin_fd, int stdout_fd, int stderr_fd,
                struct hm_error *error)
{
    memset(error, 0, sizeof *error);
    error->op_index = -1;
    int chan = proc->channel_fd;
    if (chan < 0 || proc->pid <= 0)
        return -EINVAL;
    proc->channel_fd = -1;
    int src[3] = {stdin_fd, stdout_fd, stderr_fd};
    int fds[3];
    int nfds = 0;
    struct hm_error go = {HM_MSG_GO, 0, 0};
    for (int i = 0; i < 3; i++)
        if (src[i] >= 0) {
            fds[nfds++] = src[i];
            go.op_index |= 1 << i;
        }
    union {
        struct cmsghdr h;
        char space[CMSG_SPACE(3 * sizeof(int))];
    } ctl;
    memset(&ctl, 0, sizeof ctl);
    struct iovec iov = {&go, sizeof go};
    struct msghdr msg;
    memset(&msg, 0, sizeof msg);
    msg.msg_iov = &iov;
    msg.msg_iovlen = 1;
    if (nfds > 0) {
        msg.msg_control = &ctl;
        msg.msg_controllen = CMSG_SPACE(nfds * sizeof(int));
        ctl.h.cmsg_len = CMSG_LEN(nfds * sizeof(int));
        ctl.h.cmsg_level = SOL_SOCKET;
        ctl.h.cmsg_type = SCM_RIGHTS;
        memcpy(CMSG_DATA(&ctl.h), fds, nfds * sizeof(int));
    }
    struct hm_error rec;
    int n;
    ssize_t sent;
    do
        sent = sendmsg(chan, &msg, MSG_NOSIGNAL);
    while (sent < 0 && errno == EINTR);
    if (sent < 0)
        n = -errno;
    else
        n = await_report(proc, chan, &rec);
    close(chan);
    return settle(proc, n, &rec, error);
}

/* Only after pid 1 has been reaped: its stack is still in use until then. */
void hm_proc_release(struct hm_proc *proc)
{
    close_handed(proc);
    if (proc->channel_fd >= 0) {
        close(proc->channel_fd);
        proc->channel_fd = -1;
    }
    if (proc->pidfd >= 0) {
        close(proc->pidfd);
        proc->pidfd = -1;
    }
    if (proc->stack) {
        if (!proc->stack_borrowed)
            munmap(proc->stack, proc->stack_size);
        proc->stack = NULL;
        proc->stack_size = 0;
    }
}

/* An action's stdin, stdout and stderr, made into fds[0..2] (each -1
 * until made): stdin /dev/null or an empty memfd the caller fills, stdout
 * and stderr memfds; all close-on-exec.  Made here rather than one by one
 * in Python: there a signal handler raising as a call returns would lose
 * its descriptor, here each lands in the caller's array, which its
 * cleanup closes whatever happened.  -errno, fds still to close, on
 * failure. */
int hm_capture_fds(int fds[3], int stdin_from_devnull)
{
    static const char *const names[3] = {"hermetic-stdin", "hermetic-stdout", "hermetic-stderr"};
    for (int i = 0; i < 3; i++) {
        int fd;
        if (i == 0 && stdin_from_devnull)
            fd = open("/dev/null", O_RDONLY | O_CLOEXEC);
        else
            fd = (int)syscall(SYS_memfd_create, names[i], MFD_CLOEXEC);
        if (fd < 0)
            return -errno;
        fds[i] = fd;
    }
    return 0;
}

/* Close each of fds[0..n-1] that is >= 0 and mark it -1: in one call, so
 * that no signal handler can run between two of them. */
void hm_close_fds(int *fds, int n)
{
    for (int i = 0; i < n; i++) {
        if (fds[i] >= 0) {
            close(fds[i]);
            fds[i] = -1;
        }
    }
}

/* [guard][action stack][guard][pid 1 stack]; NULL with errno on failure. */
void *hm_stack_new(void)
{
    char *region = mmap(NULL, HM_STACK_REGION, PROT_READ | PROT_WRITE,
                        MAP_PRIVATE | MAP_ANONYMOUS | MAP_STACK, -1, 0);
    if (region == MAP_FAILED)
        return NULL;
    if (mprotect(region, HM_GUARD, PROT_NONE) < 0 ||
        mprotect(region + HM_GUARD + HM_STACK, HM_GUARD, PROT_NONE) < 0) {
        int e = errno;
        munmap(region, HM_STACK_REGION);
        errno = e;
        return NULL;
    }
    return region;
}

void hm_stack_free(void *stack)
{
    if (stack)
        munmap(stack, HM_STACK_REGION);
}

static int probe_child(void *arg)
{
    (void)arg;
    return 0;
}

/* Runs fn(arg) in a child cloned with `flags` | CLONE_VM | CLONE_VFORK on
 * a stack of its own, and reaps it: CLONE_VFORK keeps the stack alive
 * until the child has exited.  0, or -errno with *at_clone set when clone
 * itself failed (not the stack). */
static int run_vforked(int (*fn)(void *), void *arg, int flags, int *at_clone)
{
    *at_clone = 0;
    char *region = mmap(NULL, HM_STACK, PROT_READ | PROT_WRITE,
                        MAP_PRIVATE | MAP_ANONYMOUS | MAP_STACK, -1, 0);
    if (region == MAP_FAILED)
        return -errno;
    unsigned long old;
    block_all(&old);
    /* No exit signal, and reaped through its pidfd (see signal_child). */
    int pidfd = -1;
    pid_t pid = clone(fn, region + HM_STACK, flags | CLONE_VM | CLONE_VFORK | CLONE_PIDFD, arg,
                      &pidfd);
    int e = errno;
    restore_mask(&old);
    if (pid >= 0) {
        struct hm_reaped gone;
        while (hm_reap(pidfd, &gone) == -EINTR)
            ;
        close(pidfd);
    }
    munmap(region, HM_STACK);
    if (pid < 0) {
        *at_clone = 1;
        return -e;
    }
    return 0;
}

/* Can this process create these namespaces?  0 or -errno. */
int hm_probe_clone(unsigned long long ns_flags)
{
    int at_clone;
    /* The child runs nothing but a return. */
    return run_vforked(probe_child, NULL, (int)ns_flags, &at_clone);
}

/* A new network namespace with loopback up, owned by the caller's user
 * namespace; returns a descriptor for it or -errno.  CLONE_FILES: the
 * descriptor lands in the caller's table. */
int hm_netns_create(void)
{
    struct hm_netns_args args = {-1, -EPROTO};
    int at_clone;
    int r = run_vforked(hm__netns_main, &args, CLONE_FILES | CLONE_NEWNET, &at_clone);
    if (r < 0)
        return r;
    return args.err < 0 ? args.err : args.fd;
}

/* A prepared mount namespace: plan->ops built into a new root (as pid 1
 * would, from the caller's view of the filesystem), held by the returned
 * descriptor.  Returns the descriptor or -errno, with error filled in. */
int hm_mntns_create(const struct hm_plan *plan, struct hm_error *error)
{
    memset(error, 0, sizeof *error);
    error->op_index = -1;
    struct hm_mntns_args args = {plan, -1, HM_STAGE_MNTNS, -1, -EPROTO};
    int at_clone;
    int r = run_vforked(hm__mntns_main, &args, CLONE_FILES | CLONE_NEWNS, &at_clone);
    if (r < 0) {
        if (at_clone) {
            error->stage = HM_STAGE_CLONE;
            error->err = -r;
        }
        return r;
    }
    if (args.fd >= 0)
        return args.fd;
    error->stage = args.stage;
    error->op_index = args.op_index;
    error->err = -args.err;
    return args.err < 0 ? args.err : -EPROTO;
}
