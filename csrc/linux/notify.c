/*
 * notify.c: the caller's side of the seccomp listener.
 *
 * The action's filter (seccomp.c) sends denied calls, and calls that write
 * a path, to a listener the caller holds.  hm_notify_serve() takes what is
 * pending without blocking: a denied call is answered its errno (EPERM,
 * or EAFNOSUPPORT for a socket family, EOPNOTSUPP for set*xattr); a write is
 * let through (SECCOMP_USER_NOTIF_FLAG_CONTINUE), the sandbox's mounts
 * deciding, after its path was read from the action's memory; a metadata
 * call (chmod, chown, utimes: Landlock-only mode) is performed by the
 * listener itself on a file beneath the writable roots, or refused (see
 * below).  Each is returned as a struct hm_notice for the audit.
 *
 * The path is read while the caller is stopped in the call, and the
 * notification's id is checked afterwards, so a recycled pid is never
 * read; the action could still rewrite the string after it was read, which
 * only misleads its own audit record: enforcement is the kernel's (for a
 * metadata call, the listener acts on what it read, and only beneath a
 * writable root, whatever the string said).
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <linux/seccomp.h>
#include <poll.h>
#include <stdio.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
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

/* ---- metadata calls, performed by the listener ----
 *
 * Where Landlock is the filesystem layer, it does not cover a file's mode,
 * owner or times, and a path the listener checked and then let through
 * could be swapped (a symlink, a rename) before the kernel used it.  So the
 * listener performs these calls itself: it opens the target beneath one of
 * the writable roots with openat2(RESOLVE_BENEATH), which the kernel
 * enforces during the lookup itself, symlinks included, and acts through
 * that descriptor.  A target that does not resolve beneath a writable root
 * is refused (EPERM) and reported with its path. */

/* The writable root that `path` lies in, lexically: the longest of
 * `roots` (NUL-separated, an empty one ends them) that is path or one of
 * its parents.  Returns its length, 0 when none; *root points to it. */
static size_t root_of(const char *roots, const char *path, const char **root)
{
    size_t best = 0;
    for (const char *r = roots; r && *r; r += strlen(r) + 1) {
        size_t n = strlen(r);
        while (n > 1 && r[n - 1] == '/')
            n--;
        int within = strncmp(path, r, n) == 0 &&
                     (path[n] == 0 || path[n] == '/' || (n == 1 && r[0] == '/'));
        if (within && n > best) {
            best = n;
            *root = r;
        }
    }
    return best;
}

/* Collapse ".", ".." and repeated slashes of an absolute path in place.
 * Lexical, so it may name another file than the kernel's lookup through a
 * symlink followed by ".." would; the lookup that follows stays beneath
 * the root this names all the same. */
static void normalize(char *path)
{
    char *out = path; /* path[0] is '/' */
    const char *in = path;
    while (*in) {
        while (*in == '/')
            in++;
        const char *end = strchrnul(in, '/');
        size_t n = (size_t)(end - in);
        if (n == 0 || (n == 1 && in[0] == '.')) {
            /* nothing */
        } else if (n == 2 && in[0] == '.' && in[1] == '.') {
            while (out > path && *--out != '/')
                ;
        } else {
            *out++ = '/';
            memmove(out, in, n);
            out += n;
        }
        in = end;
    }
    if (out == path)
        *out++ = '/';
    *out = 0;
}

/* An O_PATH descriptor of `path` (absolute, in the caller's view) opened
 * beneath its writable root, or -errno: -EPERM when it lies in none, or
 * when the lookup would leave the root (EXDEV from openat2: "..", an
 * absolute symlink, a symlink out of it). */
static int open_beneath(const char *roots, const char *path, int nofollow)
{
    const char *root = 0;
    size_t n = root_of(roots, path, &root);
    if (!n)
        return -EPERM;
    char rootpath[1024];
    if (n >= sizeof rootpath)
        return -ENAMETOOLONG;
    memcpy(rootpath, root, n);
    rootpath[n] = 0;
    int rfd = open(rootpath, O_PATH | O_DIRECTORY | O_CLOEXEC);
    if (rfd < 0)
        return -errno;
    const char *rel = path + n;
    while (*rel == '/')
        rel++;
    struct hm_open_how how = {
        (unsigned long long)(O_PATH | O_CLOEXEC | (nofollow ? O_NOFOLLOW : 0)), 0,
        HM_RESOLVE_BENEATH | HM_RESOLVE_NO_MAGICLINKS};
    long fd = syscall(__NR_openat2, rfd, *rel ? rel : ".", &how, sizeof how);
    int err = fd < 0 ? errno : 0;
    close(rfd);
    if (fd < 0)
        return err == EXDEV || err == ELOOP ? -EPERM : -err;
    return (int)fd;
}

/* The filesystem uid of the calling thread, from its status. */
static int fsuid_of(int pid, unsigned int *uid)
{
    char name[64], buf[4096];
    snprintf(name, sizeof name, "/proc/%d/status", pid);
    int fd = open(name, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return -errno;
    ssize_t n = read(fd, buf, sizeof buf - 1);
    close(fd);
    if (n <= 0)
        return -EIO;
    buf[n] = 0;
    const char *line = strstr(buf, "\nUid:");
    unsigned int r, e, s, f;
    if (!line || sscanf(line + 5, "%u %u %u %u", &r, &e, &s, &f) != 4)
        return -EIO;
    *uid = f;
    return 0;
}

/* The times a call passes, as utimensat's two timespecs (*now: NULL,
 * both "now"). */
static int read_times(int pid, const struct hm_meta_call *m, unsigned long long addr,
                      struct timespec ts[2], int *now)
{
    *now = addr == 0;
    if (*now)
        return 0;
    long long raw[4];
    size_t size = m->a2 == HM_TIMES_UTIMBUF ? 2 * sizeof(long long) : 4 * sizeof(long long);
    struct iovec local = {raw, size};
    struct iovec remote = {(void *)(unsigned long)addr, size};
    if (process_vm_readv(pid, &local, 1, &remote, 1, 0) != (ssize_t)size)
        return -EFAULT;
    switch ((enum hm_times_format)m->a2) {
    case HM_TIMES_TIMESPEC:
        ts[0] = (struct timespec){(time_t)raw[0], (long)raw[1]};
        ts[1] = (struct timespec){(time_t)raw[2], (long)raw[3]};
        return 0;
    case HM_TIMES_TIMEVAL:
        if (raw[1] < 0 || raw[1] >= 1000000 || raw[3] < 0 || raw[3] >= 1000000)
            return -EINVAL;
        ts[0] = (struct timespec){(time_t)raw[0], (long)(raw[1] * 1000)};
        ts[1] = (struct timespec){(time_t)raw[2], (long)(raw[3] * 1000)};
        return 0;
    case HM_TIMES_UTIMBUF:
        ts[0] = (struct timespec){(time_t)raw[0], 0};
        ts[1] = (struct timespec){(time_t)raw[1], 0};
        return 0;
    case HM_TIMES_NONE:
        break;
    }
    return -EINVAL;
}

/* Where a metadata call's target is, before anything is done: the
 * absolute path shown (ev->path) and an O_PATH descriptor beneath a
 * writable root (*tfd), or -errno (-EPERM: outside every writable root). */
static int meta_target(int pid, const struct hm_meta_call *m, const unsigned long long *args,
                       const char *roots, char *shown, size_t cap, int *tfd)
{
    *tfd = -1;
    shown[0] = 0;
    unsigned int flags = m->flags_arg >= 0 ? (unsigned int)args[m->flags_arg] : 0;
    int nofollow = m->nofollow || (flags & AT_SYMLINK_NOFOLLOW);
    char link[64];
    snprintf(link, sizeof link, "/proc/%d/root", pid);
    char base[1024];
    ssize_t n = readlink(link, base, sizeof base - 1);
    if (n != 1 || base[0] != '/')
        return -EPERM; /* a root of its own: paths would not be the caller's */
    int by_fd = m->path_arg < 0 || args[m->path_arg] == 0;
    if (!by_fd && (flags & AT_EMPTY_PATH)) {
        char name[2];
        by_fd = read_string(pid, args[m->path_arg], name, sizeof name) == 0 && name[0] == 0;
    }
    if (!by_fd) {
        read_path(pid, args, m->dirfd_arg, m->path_arg, shown, cap);
        if (strlen(shown) >= cap - 1)
            return -ENAMETOOLONG; /* perhaps cut short: another file's name */
        if (shown[0] != '/')
            return -EPERM;
        normalize(shown);
        int fd = open_beneath(roots, shown, nofollow);
        if (fd < 0)
            return fd;
        *tfd = fd;
        return 0;
    }
    /* A descriptor of the action's: the file it refers to must be the one
     * that its current name beneath a writable root opens (an input opened
     * read-only has no such name). */
    int dfd = m->dirfd_arg >= 0 ? (int)args[m->dirfd_arg] : AT_FDCWD;
    if (dfd == AT_FDCWD)
        snprintf(link, sizeof link, "/proc/%d/cwd", pid);
    else if (dfd >= 0)
        snprintf(link, sizeof link, "/proc/%d/fd/%d", pid, dfd);
    else
        return -EBADF;
    int fd = open(link, O_PATH | O_CLOEXEC);
    if (fd < 0)
        return errno == ENOENT ? -EBADF : -errno;
    char self[64];
    snprintf(self, sizeof self, "/proc/self/fd/%d", fd);
    n = readlink(self, shown, cap - 1);
    shown[n > 0 ? n : 0] = 0;
    struct stat held, named;
    /* A file without a name (unlinked, O_TMPFILE) has no place to check:
     * refused too. */
    int bfd = shown[0] == '/' ? open_beneath(roots, shown, 1) : -EPERM;
    int err = bfd == -ENOENT ? -EPERM : bfd < 0 ? bfd : 0;
    if (!err && (fstat(fd, &held) < 0 || fstat(bfd, &named) < 0))
        err = -errno;
    if (!err && (held.st_dev != named.st_dev || held.st_ino != named.st_ino))
        err = -EPERM;
    close(fd);
    if (err) {
        if (bfd >= 0)
            close(bfd);
        return err;
    }
    *tfd = bfd;
    return 0;
}

/* Perform the call on tfd as the kernel would for an owner without
 * privileges: 0 or -errno. */
static int meta_apply(int pid, const struct hm_meta_call *m, const unsigned long long *args,
                      int tfd, int *denied)
{
    struct stat st;
    unsigned int fsuid = 0;
    *denied = 0;
    if (fstat(tfd, &st) < 0)
        return -errno;
    int err = fsuid_of(pid, &fsuid);
    if (err)
        return err;
    switch ((enum hm_meta_kind)m->kind) {
    case HM_META_CHMOD: {
        if (st.st_uid != fsuid)
            return -EPERM;
        if (S_ISLNK(st.st_mode))
            return -EOPNOTSUPP;
        /* The filter refused set-id bits before the call came here. */
        unsigned int mode = (unsigned int)args[m->a1] & 07777 & ~(unsigned int)HM_SETID;
        char self[64];
        snprintf(self, sizeof self, "/proc/self/fd/%d", tfd);
        return chmod(self, mode) < 0 ? -errno : 0;
    }
    case HM_META_CHOWN: {
        /* Only a change of nothing: the action runs as the caller's uid,
         * its files are already its own, and giving a file away (or to a
         * group) is nothing a build needs; what cp -p and tar do as the
         * file's owner stays possible. */
        unsigned int uid = (unsigned int)args[m->a1], gid = (unsigned int)args[m->a2];
        if ((uid != (unsigned int)-1 && uid != st.st_uid) ||
            (gid != (unsigned int)-1 && gid != st.st_gid)) {
            *denied = 1;
            return -EPERM;
        }
        if (st.st_uid != fsuid)
            return -EPERM;
        return fchownat(tfd, "", uid, gid, AT_EMPTY_PATH) < 0 ? -errno : 0;
    }
    case HM_META_TIMES: {
        struct timespec ts[2];
        int now;
        err = read_times(pid, m, args[m->a1], ts, &now);
        if (err)
            return err;
        if (st.st_uid != fsuid)
            return -EPERM;
        return utimensat(tfd, "", now ? 0 : ts, AT_EMPTY_PATH) < 0 ? -errno : 0;
    }
    }
    return -EINVAL;
}

int hm_notify_serve(int fd, struct hm_notice *out, int max, const char *roots)
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
        const struct hm_meta_call *meta = refusal ? 0 : hm__meta_call(req.n.data.nr);
        const struct hm_write_call *w = refusal || meta ? 0 : hm__write_call(req.n.data.nr);
        ev->kind = w ? HM_NOTICE_WRITE : HM_NOTICE_DENIED;
        int tfd = -1;
        if (meta) {
            /* Resolved now, while the caller is stopped in the call: its
             * cwd and descriptors are the call's (the id is checked
             * below, before anything is done). */
            refusal = -meta_target(ev->pid, meta, ev->args, roots, ev->path, sizeof ev->path,
                                   &tfd);
            ev->kind = refusal == EPERM ? HM_NOTICE_REFUSED : HM_NOTICE_WRITE;
        }
        if (w) {
            read_path(ev->pid, ev->args, w->dirfd_arg, w->path_arg, ev->path, sizeof ev->path);
            if (w->src_path_arg >= 0)
                read_path(ev->pid, ev->args, w->src_dirfd_arg, w->src_path_arg, ev->path2,
                          sizeof ev->path2);
        }
        /* Only now is what was read known to be the caller's. */
        if (ioctl(fd, SECCOMP_IOCTL_NOTIF_ID_VALID, &req.n.id) < 0) {
            if (tfd >= 0)
                close(tfd);
            continue;
        }
        if (meta && tfd >= 0) {
            int denied;
            refusal = -meta_apply(ev->pid, meta, ev->args, tfd, &denied);
            close(tfd);
            if (denied)
                ev->kind = HM_NOTICE_DENIED;
        }
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
                   int *count, const char *roots)
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
            int n = hm_notify_serve(listener, out + *count, max - *count, roots);
            if (n < 0)
                return n;
            *count += n;
            if (*count >= max)
                return 2;
        }
    }
}
