/*
 * internal.h: the Linux core's shared declarations.  Not part of the API.
 *
 * What spawn.c hands to the child, and the child-side functions that one
 * stage's file calls in another's: child.c (pid 1's stages in order, the
 * report channel), mounts.c, creds.c, landlock.c, net.c, action.c and
 * init.c.  All of them run after clone in the caller's memory: raw system
 * calls only (see child.c).  Last, the seccomp tables (seccomp_tables.c)
 * the program builder (seccomp.c) and the listener (notify.c) share.
 */
#ifndef HERMETIC_LINUX_INTERNAL_H
#define HERMETIC_LINUX_INTERNAL_H

#include "../hermetic.h"

/* Every function declared here is hidden: a call from one of the core's
 * files to another is then a direct call, never one through the PLT (the
 * child must not enter the dynamic linker), and the names stay out of the
 * module's exported symbols. */
#pragma GCC visibility push(hidden)

/* Descriptor numbers the child moves its inherited descriptors to. */
#define HM_FD_REPORT 3  /* write end of the error pipe, close-on-exec */
#define HM_FD_PARENT 4  /* pidfd of the caller, or -1 */
#define HM_FD_CGROUP 5  /* the action's cgroup v2 directory, or closed */
#define HM_FD_MNTNS 6   /* the prepared mount namespace to copy, or closed */
#define HM_FD_FIRST_FREE 7

/* Size of the action's stack (spawn.c lays out the region). */
#define HM_ACTION_STACK 65536UL

struct hm_child_args {
    const struct hm_plan *plan;
    struct hm_proc *proc;  /* pid 1 writes the action's status here before it exits */
    int report_fd;         /* caller's descriptor numbers, moved by the child */
    int parent_pidfd;
    char *action_stack_top;
};

/* A network namespace with loopback up, for the pool (hm_netns_create). */
struct hm_netns_args {
    int fd;               /* out: /proc/self/ns/net opened by the child */
    int err;              /* out: 0 or -errno */
};

/* A prepared mount namespace (hm_mntns_create). */
struct hm_mntns_args {
    const struct hm_plan *plan; /* staging, oldroot and the op list */
    int fd;                     /* out: /proc/self/ns/mnt, or -1 */
    int stage;                  /* out: where it failed (HM_STAGE_*), op_index, -errno */
    int op_index;
    int err;
};

/* A call that writes a path, as the seccomp listener reads it: argument
 * indexes of the path and its directory descriptor (-1: none), of rename's
 * source, and of open's flags (-1: always a write). */
struct hm_write_call {
    int nr;
    int dirfd_arg;
    int path_arg;
    int src_dirfd_arg;
    int src_path_arg;
    int flags_arg;
};

const struct hm_write_call *hm__write_call(int nr);

/* seccomp_tables.c: the filter's tables. */
struct hm_denied {
    const char *name;
    int nr;
};

/* A call that takes a mode: the mode's argument and the flags' argument
 * (-1: the mode is always used). */
struct hm_mode_call {
    int nr;
    int mode_arg;
    int flags_arg;
};

extern const struct hm_denied hm__denied[]; /* denied outright with EPERM */
extern const int hm__n_denied;
extern const struct hm_write_call hm__writes[];
extern const int hm__n_writes;
extern const struct hm_mode_call hm__mode_calls[];
extern const int hm__n_mode_calls;
extern const unsigned int hm__families[]; /* socket families an action may open */
extern const int hm__n_families;

/* open() flags that mean a write. */
#define HM_WRITE_FLAGS (O_WRONLY | O_RDWR | O_CREAT | O_TRUNC)

/* Set-id bits: a root caller's sandbox runs as host uid 0, and a set-id
 * file left in an output would run with root's rights on the host (a later
 * write by root keeps the bits).  Refused wherever a call takes a mode
 * whose set-id bits the kernel would keep: the chmod family and the calls
 * that create a file.  mkdir is not one: the kernel drops both bits from
 * its mode. */
#define HM_SETID (S_ISUID | S_ISGID)

/* open() flags under which the mode is used: a file is created.  O_TMPFILE
 * is the kernel's __O_TMPFILE bit with O_DIRECTORY, which alone only asks
 * for a directory. */
#define HM_CREATE_FLAGS (O_CREAT | (O_TMPFILE & ~O_DIRECTORY))

/* A call that changes a file's metadata (mode, owner, times), which
 * Landlock does not cover.  Where Landlock is the filesystem layer
 * (hm_filter_opts.emulate_metadata) the filter sends them to the listener,
 * which performs them itself on files beneath the writable roots only
 * (notify.c).  Argument indexes: the directory descriptor or the
 * descriptor acted on (-1: none, AT_FDCWD), the path (-1: none, the call
 * takes a descriptor), the flags (-1: none); a1 and a2 are the mode, the
 * owner and group, or the times. */
enum hm_meta_kind { HM_META_CHMOD, HM_META_CHOWN, HM_META_TIMES };
enum hm_times_format { HM_TIMES_NONE, HM_TIMES_TIMESPEC, HM_TIMES_TIMEVAL, HM_TIMES_UTIMBUF };
struct hm_meta_call {
    int nr;
    int kind;
    int dirfd_arg;
    int path_arg;
    int flags_arg;
    int nofollow; /* lchown: never follows a final symlink */
    int a1;
    int a2; /* chown: the group; times: an hm_times_format */
};

extern const struct hm_meta_call hm__meta_calls[];
extern const int hm__n_meta_calls;
const struct hm_meta_call *hm__meta_call(int nr);

/* The extended-attribute removals, refused (EOPNOTSUPP) with the settings
 * where Landlock is the filesystem layer. */
extern const int hm__xattr_removals[];
extern const int hm__n_xattr_removals;

#define HM_RESOLVE_NO_MAGICLINKS 0x02
#define HM_RESOLVE_BENEATH 0x08

/* What the listener answers a notification of call nr with these
 * arguments: 0 lets a path write continue (or has a metadata call
 * performed, notify.c), else the errno of the refusal
 * (the filter's own tests, applied again: seccomp_tables.c). */
int hm__notice_errno(int nr, const unsigned long long *args);

/* Entry points of the processes spawn.c clones. */
int hm__pid1_main(void *arg);
int hm__netns_main(void *arg);
int hm__mntns_main(void *arg);

/* ---- child side: everything below runs after clone ---- */

/* Where setup stopped: a stage, the op's index (HM_STAGE_OP) and -errno. */
struct hm_fail {
    int stage;
    int op_index;
    long err;
};

/* What pid 1 hands to the action's process; both live in pid 1's frame. */
struct hm_action_args {
    const struct hm_plan *plan;
    volatile int failed;  /* set by the action before it reports a failure */
};

/* child.c: the report channel and small helpers. */
unsigned long hm__strlen(const char *s);
void hm__stamp(struct hm_proc *proc, int on, int which);
__attribute__((noreturn)) void hm__exit(int code);
__attribute__((noreturn)) void hm__fail(int fd, int stage, int op_index, long err);
int hm__failed(struct hm_fail *f, int stage, int op_index, long err);
long hm__send_fd(int tag, long fd);
long hm__write_file(const char *path, const char *text);

/* mounts.c: the op executor and the root. */
long hm__open_nofollow(const char *path);
int hm__run_ops(const struct hm_op *ops, int n, int first, struct hm_fail *f);
int hm__build_root(const struct hm_plan *p, struct hm_proc *proc, struct hm_fail *f);
int hm__copy_root(const struct hm_plan *p, struct hm_proc *proc, struct hm_fail *f);

/* creds.c: ids, no_new_privs, capabilities. */
int hm__write_id_maps(const struct hm_plan *p, struct hm_fail *f);
long hm__no_new_privs(void);
long hm__drop_capabilities(void);

/* landlock.c */
long hm__apply_landlock(const struct hm_plan *p, int *failed_rule);

/* net.c */
long hm__loopback_up(void);
long hm__proxy_listen(int port);

/* action.c: the action's process, cloned by pid 1. */
int hm__action_main(void *arg);

/* init.c: pid 1 as the namespace's init, once the action runs. */
__attribute__((noreturn)) void hm__init_run(struct hm_proc *proc, long action, long group,
                                            long caller, int no_ns, int profile);

#pragma GCC visibility pop

#endif
