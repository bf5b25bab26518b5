/*
 * notify.c: the caller's side of the seccomp listener.
 *
 * The action's filter (seccomp.c) sends denied calls, and calls that write
 * a path, to a listener the caller holds.  hm_notify_serve() takes what is
 * pending without blocking: a denied call is answered its errno (EPERM,
 * or EAFNOSUPPORT for a socket family, EOPNOTSUPP for set*xattr); a write is
 * let through (SECCOMP_USER_NOTIF_FLAG_CONTINUE), the sandbox's mounts
 * deciding, after its path was read from the action's memory.  Each is
 * returned as a struct hm_notice for the audit.
 *
 * The path is read while the caller is stopped in the call, and the
 * notification's id is checked afterwards, so a recycled pid is never
 * read; the action could still rewrite the string after it was read, which
 * only misleads its own audit record: enforcement is the kernel's.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <linux/seccomp.h>
#include <poll.h>
#include <stdio.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/syscall.h>
#include <sys/uio.h>
#include <time.h>
#include <unistd.h>

#include "internal.h"
#include "kernel_compat.h"

/* A NUL-terminated string from the target's memory, read page by page so
 * that a string ending just before an unmapped page is read whole. */
static int read_string(int pid, unsigned long long addr, char *out, size_t cap)
{
    size_t got = 0;
    while (got + 1 < cap) {
        size_t page_left = 4096 - ((addr + got) & 4095);
        size_t want = cap - 1 - got < page_left ? cap - 1 - got : page_left;
        struct iovec local = {out + got, want};
        struct iovec remote = {(void *)(unsigned long)(addr + got), want};
        ssize_t n = process_vm_readv(pid, &local, 1, &remote, 1, 0);
        if (n <= 0)
            break;
        void *nul = memchr(out + got, 0, (size_t)n);
        got += (size_t)n;
        if (nul)
            return 0;
    }
    out[got] = 0;
    return got ? 0 : -1;
}

/* The path a call names, absolute in the sandbox when it was relative:
 * joined to the target's cwd or directory descriptor, which the kernel
 * shows relative to the sandbox's root. */
static void read_path(int pid, const unsigned long long *args, int dirfd_arg, int path_arg,
                      char *out, size_t cap)
{
    char name[1024];
    out[0] = 0;
    if (read_string(pid, args[path_arg], name, sizeof name) < 0)
        return;
    if (name[0] == '/' || dirfd_arg == -2) {
        snprintf(out, cap, "%s", name);
        return;
    }
    char link[64], base[1024];
    int dirfd = dirfd_arg >= 0 ? (int)args[dirfd_arg] : AT_FDCWD;
    if (dirfd == AT_FDCWD)
        snprintf(link, sizeof link, "/proc/%d/cwd", pid);
    else
        snprintf(link, sizeof link, "/proc/%d/fd/%d", pid, dirfd);
    ssize_t n = readlink(link, base, sizeof base - 1);
    if (n <= 0) {
        snprintf(out, cap, "%s", name);
        return;
    }
    base[n] = 0;
    snprintf(out, cap, "%s%s%s", base, strcmp(base, "/") == 0 ? "" : "/", name);
}

int hm_notify_serve(int fd, struct hm_notice *out, int max)
{
    struct seccomp_notif_sizes sizes;
    if (syscall(SYS_seccomp, SECCOMP_GET_NOTIF_SIZES, 0, &sizes) < 0)
        return -errno;
    /* The kernel's structs may be larger than this file's headers know. */
    union {
        struct seccomp_notif n;
        char space[512];
    } req;
    union {
        struct seccomp_notif_resp r;
        char space[512];
    } resp;
    if (sizes.seccomp_notif > sizeof req || sizes.seccomp_notif_resp > sizeof resp)
        return -EOVERFLOW;
    int count = 0;
    while (count < max) {
        struct pollfd pfd = {fd, POLLIN, 0};
        if (poll(&pfd, 1, 0) <= 0 || !(pfd.revents & POLLIN))
            break;
        memset(&req, 0, sizeof req);
        if (ioctl(fd, SECCOMP_IOCTL_NOTIF_RECV, &req.n) < 0) {
            if (errno == EINTR || errno == ENOENT)
                continue; /* the caller of the call is gone */
            return count ? count : -errno;
        }
        struct hm_notice *ev = &out[count];
        ev->pid = (int)req.n.pid;
        ev->nr = req.n.data.nr;
        for (int i = 0; i < 6; i++)
            ev->args[i] = req.n.data.args[i];
        ev->path[0] = ev->path2[0] = 0;
        /* A creation with a set-id mode comes as a path write does: which
         * it is, the arguments say. */
        int refusal = hm__notice_errno(req.n.data.nr, ev->args);
        const struct hm_write_call *w = refusal ? 0 : hm__write_call(req.n.data.nr);
        ev->kind = w ? HM_NOTICE_WRITE : HM_NOTICE_DENIED;
        if (w) {
            read_path(ev->pid, ev->args, w->dirfd_arg, w->path_arg, ev->path, sizeof ev->path);
            if (w->src_path_arg >= 0)
                read_path(ev->pid, ev->args, w->src_dirfd_arg, w->src_path_arg, ev->path2,
                          sizeof ev->path2);
        }
        /* Only now is what was read known to be the caller's. */
        if (ioctl(fd, SECCOMP_IOCTL_NOTIF_ID_VALID, &req.n.id) < 0)
            continue;
        memset(&resp, 0, sizeof resp);
        resp.r.id = req.n.id;
        if (w)
            resp.r.flags = SECCOMP_USER_NOTIF_FLAG_CONTINUE;
        else
            resp.r.error = -refusal;
        if (ioctl(fd, SECCOMP_IOCTL_NOTIF_SEND, &resp.r) < 0 && errno != ENOENT)
            return count ? count : -errno;
        count++;
    }
    return count;
}

static long long now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (long long)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* Wait up to timeout_ms (-1: no limit) for `target` to become readable,
 * answering the listener's notifications meanwhile without returning to
 * the caller's interpreter for each (an action that writes many files
 * would otherwise pay a Python wakeup per write).  Returns 1 when target
 * is readable, 0 on timeout, 2 when `out` is full (the caller takes the
 * notices and calls again), or -errno.  *count is the notices written. */
int hm_notify_wait(int target, int listener, int timeout_ms, struct hm_notice *out, int max,
                   int *count)
{
    long long deadline = timeout_ms < 0 ? -1 : now_ms() + timeout_ms;
    *count = 0;
    for (;;) {
        int wait = -1;
        if (deadline >= 0) {
            long long left = deadline - now_ms();
            wait = left > 0 ? (int)left : 0;
        }
        struct pollfd fds[2] = {{target, POLLIN, 0}, {listener, POLLIN, 0}};
        int r = poll(fds, listener >= 0 ? 2 : 1, wait);
        if (r < 0) {
            if (errno == EINTR)
                return 0; /* let the caller see its signals */
            return -errno;
        }
        if (r == 0)
            return 0;
        if (fds[0].revents)
            return 1;
        if (listener >= 0 && fds[1].revents) {
            if (!(fds[1].revents & POLLIN)) {
                listener = -1; /* POLLHUP: no process uses the filter any more */
                continue;
            }
            int n = hm_notify_serve(listener, out + *count, max - *count);
            if (n < 0)
                return n;
            *count += n;
            if (*count >= max)
                return 2;
        }
    }
}
