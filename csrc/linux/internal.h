/* internal.h: what spawn.c hands to the child (child.c).  Not part of the API. */
#ifndef HERMETIC_LINUX_INTERNAL_H
#define HERMETIC_LINUX_INTERNAL_H

#include "../hermetic.h"

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

/* What the listener answers a notification of call nr with these
 * arguments: 0 lets a path write continue, else the errno of the refusal
 * (the filter's own tests, applied again: seccomp.c). */
int hm__notice_errno(int nr, const unsigned long long *args);

int hm__pid1_main(void *arg);
int hm__netns_main(void *arg);
int hm__mntns_main(void *arg);

#endif
