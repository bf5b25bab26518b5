/*
 * hermetic.h: the C core's only header.
 *
 * The text between the cdef markers is also what build_ffi.py gives to
 * ffi.cdef(), so it holds plain declarations only (no preprocessor logic);
 * the kernel constants after it reach cffi by name (see below).  Every
 * integer constant of this interface that Python needs is read from the
 * compiled module (lib.HM_...), never typed again in Python.
 *
 * Model: Python builds a complete plan (every path formatted, every array
 * allocated); hm_spawn() clones a child that executes the plan with raw
 * system calls and nothing else.  Functions return 0 or -errno.
 */
#ifndef HERMETIC_H
#define HERMETIC_H

/* cdef-begin */

/* Setup stages, in the order the child runs them.  A failure reports the
 * stage, the op index (for HM_STAGE_OP) and the errno. */
enum hm_stage {
    HM_STAGE_NONE = 0,
    HM_STAGE_FDS = 1,           /* moving stdio and the report pipe into place */
    HM_STAGE_PARENT = 2,        /* parent-death signal; the caller already died */
    HM_STAGE_SETGROUPS = 3,
    HM_STAGE_UID_MAP = 4,
    HM_STAGE_GID_MAP = 5,
    HM_STAGE_MOUNT_PRIVATE = 6, /* stop mount propagation to the host */
    HM_STAGE_ROOT_TMPFS = 7,
    HM_STAGE_PIVOT_ROOT = 8,
    HM_STAGE_OP = 9,            /* one entry of the op list: see op_index */
    HM_STAGE_DETACH_OLDROOT = 10,
    HM_STAGE_ROOT_READONLY = 11,
    HM_STAGE_HOSTNAME = 12,
    HM_STAGE_LOOPBACK = 13,
    HM_STAGE_SPAWN = 14,        /* pid 1 starting the action's process */
    HM_STAGE_SIGNALS = 15,
    HM_STAGE_SETSID = 16,
    HM_STAGE_CHDIR = 17,
    HM_STAGE_RLIMIT = 18,
    HM_STAGE_NO_NEW_PRIVS = 19,
    HM_STAGE_CAPABILITIES = 20,
    HM_STAGE_SECCOMP = 21,
    HM_STAGE_EXEC = 22,
    HM_STAGE_CLONE = 23,        /* the parent's clone() itself */
    HM_STAGE_NETNS = 24,        /* entering or leaving a pooled network namespace */
    HM_STAGE_NOTIFY = 25,       /* handing the seccomp listener to the caller */
    HM_STAGE_PROXY = 26,        /* the egress proxy's listening socket */
    HM_STAGE_LANDLOCK = 27,     /* a Landlock rule (op_index: which) or the ruleset */
    HM_STAGE_SUBREAPER = 28,    /* pid 1 without namespaces becoming a subreaper */
    HM_STAGE_TIMENS = 29,       /* a time namespace for the action (fresh clocks) */
    HM_STAGE_MNTNS = 30         /* joining the prepared mount namespace, or copying it */
};

/* Records on the report channel that carry a descriptor (SCM_RIGHTS)
 * rather than end setup: stage is one of these. */
#define HM_MSG_NOTIFY_FD 100
#define HM_MSG_PROXY_FD 101
/* A standby sandbox is set up and waits for hm_activate() (no descriptor). */
#define HM_MSG_READY 102
/* The caller's go to a standby action: stdin, stdout, stderr attached
 * (op_index: a bit per descriptor sent, in that order). */
#define HM_MSG_GO 103

/* Kinds of filesystem ops, executed in list order after pivot_root. */
enum hm_op_kind {
    HM_OP_MKDIR = 1,    /* dst, mode */
    HM_OP_MKFILE = 2,   /* empty file as a mount point: dst, mode */
    HM_OP_SYMLINK = 3,  /* src is the link's target text, dst the link */
    HM_OP_BIND = 4,     /* src (under the old root) onto dst; flags HM_BIND_* */
    HM_OP_TMPFS = 5,    /* dst, data = mount options, flags = MS_* */
    HM_OP_PROC = 6,     /* proc of the new pid namespace at dst */
    HM_OP_REMOUNT_RO = 7, /* dst read-only, keeping flags (MS_*) */
    HM_OP_MKNOD = 8,    /* a device node: dst, mode (type and bits), flags = device */
    HM_OP_GRAB = 9,     /* a detached copy of the mount tree at dst, kept in slot flags */
    HM_OP_PLACE = 10    /* the copy in slot flags attached at dst */
};

/* Copies of mount trees one op list can hold (HM_OP_GRAB slots). */
#define HM_MAX_GRABS 32

/* Sent to pid 1: kill every process of the sandbox, reap them all (so the
 * caller's reap of pid 1 accounts for them), record the action's status, exit.
 * The kernel's highest real-time signal, which libcs leave to programs. */
#define HM_SIG_END 64

/* HM_OP_BIND flags */
#define HM_BIND_RDONLY 1   /* read-only, recursively */
#define HM_BIND_DEVICES 2  /* keep device nodes usable (no nodev) */
#define HM_BIND_SYSTEM 4   /* source and target are the sandbox's own (/proc,
                              /dev, a directory the plan made on the private
                              /tmp, bound onto itself): no symlink can be
                              planted on the way, so the cheaper
                              bind-then-flag path is safe */

struct hm_op {
    int kind;
    int flags;
    unsigned int mode;
    const char *src;
    const char *dst;
    const char *data;
};

/* One Landlock rule: what may be done beneath path (a directory) or to it
 * (a file: file rights only). */
struct hm_landlock_rule {
    const char *path;
    unsigned long long access;
};

struct hm_rlimit {
    int resource;
    unsigned long long cur;
    unsigned long long max;
};

struct hm_plan {
    unsigned long long ns_flags;     /* CLONE_NEW* */
    int netns_fd;                    /* >= 0: join this network namespace instead of
                                        creating one (ns_flags has no CLONE_NEWNET) */
    int cgroup_fd;                   /* >= 0: a cgroup v2 directory pid 1 is born in
                                        (clone3 CLONE_INTO_CGROUP) */
    int mntns_fd;                    /* >= 0: a mount namespace made by hm_mntns_create;
                                        pid 1 joins it and unshares a private copy, ops
                                        are then only the per-action steps, and ns_flags
                                        has no CLONE_NEWNS */
    const char *uid_map;             /* text for /proc/self/uid_map */
    const char *gid_map;
    const char *staging;             /* host dir the new root is mounted on */
    const char *oldroot;             /* where the old root sits after pivot_root */
    const struct hm_op *ops;
    int n_ops;
    const char *hostname;            /* NULL: leave unchanged */
    const char *domainname;
    int loopback_up;
    const char *cwd;
    const char *const *exec_paths;   /* candidate executables, tried in order */
    int n_exec_paths;
    char *const *argv;
    char *const *envp;
    int stdin_fd;
    int stdout_fd;
    int stderr_fd;
    const struct hm_rlimit *rlimits;
    int n_rlimits;
    const void *seccomp_filter;      /* struct sock_filter[]; NULL: none */
    int seccomp_len;                 /* number of instructions */
    int seccomp_notify;              /* install with a listener and hand it to the
                                        caller (hm_proc.notify_fd) */
    int proxy_port;                  /* > 0: pid 1 listens on 127.0.0.1:port in the
                                        sandbox's network namespace and hands the
                                        socket to the caller (hm_proc.proxy_fd) */
    int no_namespaces;               /* Landlock-only: no namespaces, no mounts; pid 1
                                        is a subreaper and ends the action's process
                                        group instead of a pid namespace */
    int landlock_abi;                /* > 0: restrict the action with Landlock */
    unsigned long long landlock_fs;  /* filesystem rights the ruleset handles */
    unsigned long long landlock_net; /* network rights it handles (none granted) */
    unsigned long long landlock_scoped; /* IPC scopes (ABI >= 6) */
    const struct hm_landlock_rule *landlock_rules;
    int n_landlock_rules;
    const char *timens_offsets;      /* non-NULL: the action gets a time namespace with
                                        these /proc/self/timens_offsets lines */
    int profile;                     /* pid 1 stamps its stages into hm_proc.stamps */
    int standby;                     /* HM_STANDBY_*: the action reports
                                        HM_MSG_READY and waits for hm_activate(): its
                                        stdio arrive then, and only then are argv
                                        and exec_paths read (and, if late, cwd,
                                        late_ops and the steps after them) */
    const struct hm_op *late_ops;    /* HM_STANDBY_LATE: ops the action runs at its
                                        go, before its working directory; their
                                        failures report op_index n_ops + i */
    int n_late_ops;
};

/* Where a standby action waits for its go (hm_plan.standby). */
enum hm_standby {
    HM_STANDBY_NONE = 0,
    HM_STANDBY_SET_UP = 1, /* after seccomp: the go only starts the exec */
    HM_STANDBY_LATE = 2    /* before its working directory, while it may still
                              mount: the go brings late_ops (an execution's own
                              read-only paths), then every step after them */
};

/* Stage stamps (CLOCK_MONOTONIC, ns) pid 1 records when plan.profile is set. */
enum hm_stamp {
    HM_STAMP_START = 0,     /* pid 1 running */
    HM_STAMP_IDS = 1,       /* id maps written */
    HM_STAMP_OPS = 2,       /* root built: pivot_root and the op list done */
    HM_STAMP_SEALED = 3,    /* old root gone, root read-only, names, loopback */
    HM_STAMP_EXEC = 4,      /* the action has exec'd */
    HM_STAMP_EXITED = 5,    /* the action's main process has been reaped */
    HM_STAMP_DONE = 6,      /* everything reaped: pid 1 exits */
    HM_STAMPS = 8
};

/* What the seccomp program holds beyond the default deny list. */
struct hm_filter_opts {
    int notify;                      /* denials go to the listener (SECCOMP_RET_USER_NOTIF),
                                        not straight back as EPERM */
    int audit_writes;                /* with notify: path-writing calls are shown to the
                                        listener too, then continue */
    int deny_fork;                   /* new processes (not threads) refused */
    int deny_exec;                   /* execve refused unless its path pointer is one of
                                        exec_ptrs (the action's own exec) */
    const unsigned long long *exec_ptrs;
    int n_exec_ptrs;
    int deny_sockets;                /* socket() refused (no network namespace to
                                        contain it) */
    int deny_sessions;               /* setsid/setpgid refused (the process group is
                                        how a sandbox without namespaces is ended),
                                        and acting on other processes by pid */
    int emulate_metadata;            /* chmod, chown and utimes families go to the
                                        listener, which performs them beneath the
                                        writable roots only (Landlock does not cover
                                        them); removexattr refused, EOPNOTSUPP */
};

/* One notification the listener took (hm_notify_serve). */
struct hm_notice {
    int pid;                         /* in the caller's pid namespace */
    int nr;                          /* syscall number */
    int kind;                        /* HM_NOTICE_* */
    unsigned long long args[6];
    char path[1024];                 /* HM_NOTICE_WRITE: the path written, absolute in the
                                        sandbox when it could be resolved */
    char path2[1024];                /* rename's source, else empty */
};
#define HM_NOTICE_DENIED 1           /* refused: answered its errno */
#define HM_NOTICE_WRITE 2            /* let through: the kernel's mounts decide; or a
                                        metadata call performed beneath a writable root */
#define HM_NOTICE_REFUSED 3          /* a metadata call on `path`, outside every
                                        writable root: answered EPERM */

/* A setup failure, sent once from the child over a close-on-exec pipe. */
struct hm_error {
    int stage;
    int op_index;
    int err;
};

/* One running sandbox.  pid 1 writes status and main_exited just before it
 * exits; the caller reads them after reaping pid. */
struct hm_proc {
    int pid;
    int pidfd;
    int status;         /* wait status of the action's main process */
    int main_exited;    /* 1 when status is valid */
    void *stack;        /* in: a region from hm_stack_new() to use, or NULL */
    unsigned long stack_size;
    int stack_borrowed; /* the caller owns the stack: release leaves it mapped */
    int notify_fd;      /* the seccomp listener, or -1; closed by hm_proc_release */
    int proxy_fd;       /* the proxy's listening socket, or -1; closed by hm_proc_release */
    int channel_fd;     /* a standby's report channel, until hm_activate(); else -1 */
    unsigned long long stamps[8]; /* see enum hm_stamp; written only with plan.profile */
    /* getrusage(RUSAGE_CHILDREN) of pid 1 once everything is reaped (the
     * whole sandbox but pid 1 itself): the accounting when the caller
     * cannot reap pid 1 itself (a waitpid with __WALL elsewhere in the
     * caller took it first). */
    long long ru_utime_us;
    long long ru_stime_us;
    long long ru_inblock;
    long long ru_oublock;
    int ru_valid;
};

/* What hm_reap() took from a reaped process: its wait status and its
 * rusage (its own and that of the descendants it reaped). */
struct hm_reaped {
    int status;
    long long utime_us;
    long long stime_us;
    long long inblock;
    long long oublock;
};

/* A thread that clones sandboxes for the caller (see csrc/linux/worker.c). */
struct hm_worker {
    void *impl;
    int tid;            /* the thread's id, to place it in cgroups */
};

int hm_spawn(const struct hm_plan *plan, struct hm_proc *proc, struct hm_error *error);
int hm_activate(struct hm_proc *proc, int stdin_fd, int stdout_fd, int stderr_fd,
                struct hm_error *error);
int hm_worker_start(struct hm_worker *worker);
int hm_worker_spawn(struct hm_worker *worker, const struct hm_plan *plan, struct hm_proc *proc,
                    struct hm_error *error);
int hm_worker_join(struct hm_worker *worker, const int *fds, int n, int *failed);
void hm_worker_stop(struct hm_worker *worker);
int hm_spawner_thread_init(void);
void hm_spawner_thread_fini(void);
void hm_proc_release(struct hm_proc *proc);
int hm_reap(int pidfd, struct hm_reaped *out);
void *hm_stack_new(void);
int hm_capture_fds(int fds[3], int stdin_from_devnull);
void hm_close_fds(int *fds, int n);
void hm_stack_free(void *stack);
int hm_probe_clone(unsigned long long ns_flags);
int hm_netns_create(void);
int hm_mntns_create(const struct hm_plan *plan, struct hm_error *error);
int hm_seccomp_build(void *out, int max, const struct hm_filter_opts *opts);
int hm_notify_serve(int fd, struct hm_notice *out, int max, const char *roots);
int hm_notify_wait(int target, int listener, int timeout_ms, struct hm_notice *out, int max,
                   int *count, const char *roots);
const char *hm_syscall_name(int nr);
long hm_dir_snapshot(const char *path, char *out, unsigned long cap, unsigned long *need);
int hm_outputs_plain(const char *roots, int max_depth, long max_entries);
long hm_link_entries(int cache_fd, int dir_fd, const char *entries, const char *names,
                     const long long *sizes, long n, long *failed);
int hm_identity_same(const char *paths, const unsigned long long *expect, int n);
int hm_seccomp_denied(const char **names, int *nrs, int max);
int hm_probe_landlock_abi(void);
int hm_probe_clone3(void);
int hm_probe_mount_setattr(void);

/* cdef-end */

/*
 * Kernel constants Python reads from the compiled module (lib.HM_...), so
 * that no number is typed twice.  build_ffi.py declares every HM_ name
 * defined between the kernel markers to cffi as `#define NAME ...`, and cffi
 * takes the value from the compiler: from the system headers, or from
 * kernel_compat.h where they are too old.
 */
#include <linux/capability.h>
#include <linux/sched.h>
#include <sys/mount.h>

#include "linux/kernel_compat.h"

/* cdef-kernel-begin */
/* mount(2) flags: the op list's HM_OP_TMPFS and HM_OP_REMOUNT_RO flags. */
#define HM_MS_RDONLY MS_RDONLY
#define HM_MS_NOSUID MS_NOSUID
#define HM_MS_NODEV MS_NODEV
#define HM_MS_NOEXEC MS_NOEXEC
/* Namespaces: hm_plan.ns_flags and hm_probe_clone(). */
#define HM_CLONE_NEWNS CLONE_NEWNS
#define HM_CLONE_NEWCGROUP CLONE_NEWCGROUP
#define HM_CLONE_NEWUTS CLONE_NEWUTS
#define HM_CLONE_NEWIPC CLONE_NEWIPC
#define HM_CLONE_NEWUSER CLONE_NEWUSER
#define HM_CLONE_NEWPID CLONE_NEWPID
#define HM_CLONE_NEWNET CLONE_NEWNET
/* A capability the host probe names. */
#define HM_CAP_SETFCAP CAP_SETFCAP
/* Landlock: the rights and scopes of hm_plan.landlock_* and its rules. */
#define HM_LANDLOCK_ACCESS_FS_EXECUTE LANDLOCK_ACCESS_FS_EXECUTE
#define HM_LANDLOCK_ACCESS_FS_WRITE_FILE LANDLOCK_ACCESS_FS_WRITE_FILE
#define HM_LANDLOCK_ACCESS_FS_READ_FILE LANDLOCK_ACCESS_FS_READ_FILE
#define HM_LANDLOCK_ACCESS_FS_READ_DIR LANDLOCK_ACCESS_FS_READ_DIR
#define HM_LANDLOCK_ACCESS_FS_REMOVE_DIR LANDLOCK_ACCESS_FS_REMOVE_DIR
#define HM_LANDLOCK_ACCESS_FS_REMOVE_FILE LANDLOCK_ACCESS_FS_REMOVE_FILE
#define HM_LANDLOCK_ACCESS_FS_MAKE_CHAR LANDLOCK_ACCESS_FS_MAKE_CHAR
#define HM_LANDLOCK_ACCESS_FS_MAKE_DIR LANDLOCK_ACCESS_FS_MAKE_DIR
#define HM_LANDLOCK_ACCESS_FS_MAKE_REG LANDLOCK_ACCESS_FS_MAKE_REG
#define HM_LANDLOCK_ACCESS_FS_MAKE_SOCK LANDLOCK_ACCESS_FS_MAKE_SOCK
#define HM_LANDLOCK_ACCESS_FS_MAKE_FIFO LANDLOCK_ACCESS_FS_MAKE_FIFO
#define HM_LANDLOCK_ACCESS_FS_MAKE_BLOCK LANDLOCK_ACCESS_FS_MAKE_BLOCK
#define HM_LANDLOCK_ACCESS_FS_MAKE_SYM LANDLOCK_ACCESS_FS_MAKE_SYM
#define HM_LANDLOCK_ACCESS_FS_REFER LANDLOCK_ACCESS_FS_REFER
#define HM_LANDLOCK_ACCESS_FS_TRUNCATE LANDLOCK_ACCESS_FS_TRUNCATE
#define HM_LANDLOCK_ACCESS_FS_IOCTL_DEV LANDLOCK_ACCESS_FS_IOCTL_DEV
#define HM_LANDLOCK_ACCESS_FS_RESOLVE_UNIX LANDLOCK_ACCESS_FS_RESOLVE_UNIX
#define HM_LANDLOCK_ACCESS_NET_BIND_TCP LANDLOCK_ACCESS_NET_BIND_TCP
#define HM_LANDLOCK_ACCESS_NET_CONNECT_TCP LANDLOCK_ACCESS_NET_CONNECT_TCP
#define HM_LANDLOCK_SCOPE_ABSTRACT_UNIX_SOCKET LANDLOCK_SCOPE_ABSTRACT_UNIX_SOCKET
#define HM_LANDLOCK_SCOPE_SIGNAL LANDLOCK_SCOPE_SIGNAL
/* cdef-kernel-end */

#endif
