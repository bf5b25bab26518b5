/*
 * kernel_compat.h: kernel definitions newer than some build hosts' headers
 * (Debian 12's are Linux 6.1's), each written here once.
 *
 * Two kinds:
 *   - fallbacks, `#ifndef NAME` / `#define NAME value`, one per block, for
 *     names the system headers define when they are recent enough.  Since
 *     Linux 5.1 a new system call has one number on every architecture but
 *     alpha (x86_64 and aarch64 included), so the numbers below are right
 *     for both; a kernel without the call answers ENOSYS.
 *   - HM_ copies of flags and structs whose headers cannot be included
 *     everywhere (<linux/mount.h> clashes with <sys/mount.h> in older
 *     libcs; <linux/landlock.h>, <linux/openat2.h> are missing from older
 *     headers; P_PIDFD is an enum member in glibc, not a macro).
 *
 * tests/test_linux_native.py compiles every fallback and every copy against
 * the kernel headers that define them, so a wrong value fails the suite.
 */
#ifndef HERMETIC_KERNEL_COMPAT_H
#define HERMETIC_KERNEL_COMPAT_H

#include <linux/seccomp.h>
#include <sys/ioctl.h>
#include <sys/syscall.h>
#if __has_include(<linux/landlock.h>)
#include <linux/landlock.h>
#endif

/* System call numbers (SYS_ for syscall() and the raw calls, __NR_ for the
 * seccomp tables). */
#ifndef SYS_pidfd_send_signal
#define SYS_pidfd_send_signal 424
#endif
#ifndef SYS_open_tree
#define SYS_open_tree 428
#endif
#ifndef SYS_move_mount
#define SYS_move_mount 429
#endif
#ifndef SYS_pidfd_open
#define SYS_pidfd_open 434
#endif
#ifndef SYS_clone3
#define SYS_clone3 435
#endif
#ifndef SYS_close_range
#define SYS_close_range 436
#endif
#ifndef SYS_openat2
#define SYS_openat2 437
#endif
#ifndef SYS_mount_setattr
#define SYS_mount_setattr 442
#endif
#ifndef SYS_landlock_create_ruleset
#define SYS_landlock_create_ruleset 444
#endif
#ifndef SYS_landlock_add_rule
#define SYS_landlock_add_rule 445
#endif
#ifndef SYS_landlock_restrict_self
#define SYS_landlock_restrict_self 446
#endif
#ifndef __NR_fchmodat2
#define __NR_fchmodat2 452
#endif
#ifndef __NR_setxattrat
#define __NR_setxattrat 463
#endif
#ifndef __NR_removexattrat
#define __NR_removexattrat 466
#endif
#ifndef __NR_open_tree_attr
#define __NR_open_tree_attr 467
#endif

/* <linux/seccomp.h> */
#ifndef SECCOMP_USER_NOTIF_FLAG_CONTINUE
#define SECCOMP_USER_NOTIF_FLAG_CONTINUE (1UL << 0)
#endif
/* Linux 6.6: the listener's wake-ups of the target stay on its CPU. */
#ifndef SECCOMP_IOCTL_NOTIF_SET_FLAGS
#define SECCOMP_IOCTL_NOTIF_SET_FLAGS _IOW('!', 4, unsigned long long)
#endif
#ifndef SECCOMP_USER_NOTIF_FD_SYNC_WAKE_UP
#define SECCOMP_USER_NOTIF_FD_SYNC_WAKE_UP (1UL)
#endif

/* <linux/landlock.h>: filesystem rights (ABI 1 unless noted), network
 * rights (ABI 4) and scopes (ABI 6), as the ruleset takes them. */
#ifndef LANDLOCK_ACCESS_FS_EXECUTE
#define LANDLOCK_ACCESS_FS_EXECUTE (1ULL << 0)
#endif
#ifndef LANDLOCK_ACCESS_FS_WRITE_FILE
#define LANDLOCK_ACCESS_FS_WRITE_FILE (1ULL << 1)
#endif
#ifndef LANDLOCK_ACCESS_FS_READ_FILE
#define LANDLOCK_ACCESS_FS_READ_FILE (1ULL << 2)
#endif
#ifndef LANDLOCK_ACCESS_FS_READ_DIR
#define LANDLOCK_ACCESS_FS_READ_DIR (1ULL << 3)
#endif
#ifndef LANDLOCK_ACCESS_FS_REMOVE_DIR
#define LANDLOCK_ACCESS_FS_REMOVE_DIR (1ULL << 4)
#endif
#ifndef LANDLOCK_ACCESS_FS_REMOVE_FILE
#define LANDLOCK_ACCESS_FS_REMOVE_FILE (1ULL << 5)
#endif
#ifndef LANDLOCK_ACCESS_FS_MAKE_CHAR
#define LANDLOCK_ACCESS_FS_MAKE_CHAR (1ULL << 6)
#endif
#ifndef LANDLOCK_ACCESS_FS_MAKE_DIR
#define LANDLOCK_ACCESS_FS_MAKE_DIR (1ULL << 7)
#endif
#ifndef LANDLOCK_ACCESS_FS_MAKE_REG
#define LANDLOCK_ACCESS_FS_MAKE_REG (1ULL << 8)
#endif
#ifndef LANDLOCK_ACCESS_FS_MAKE_SOCK
#define LANDLOCK_ACCESS_FS_MAKE_SOCK (1ULL << 9)
#endif
#ifndef LANDLOCK_ACCESS_FS_MAKE_FIFO
#define LANDLOCK_ACCESS_FS_MAKE_FIFO (1ULL << 10)
#endif
#ifndef LANDLOCK_ACCESS_FS_MAKE_BLOCK
#define LANDLOCK_ACCESS_FS_MAKE_BLOCK (1ULL << 11)
#endif
#ifndef LANDLOCK_ACCESS_FS_MAKE_SYM
#define LANDLOCK_ACCESS_FS_MAKE_SYM (1ULL << 12)
#endif
/* ABI 2 */
#ifndef LANDLOCK_ACCESS_FS_REFER
#define LANDLOCK_ACCESS_FS_REFER (1ULL << 13)
#endif
/* ABI 3 */
#ifndef LANDLOCK_ACCESS_FS_TRUNCATE
#define LANDLOCK_ACCESS_FS_TRUNCATE (1ULL << 14)
#endif
/* ABI 5 */
#ifndef LANDLOCK_ACCESS_FS_IOCTL_DEV
#define LANDLOCK_ACCESS_FS_IOCTL_DEV (1ULL << 15)
#endif
/* ABI 9 */
#ifndef LANDLOCK_ACCESS_FS_RESOLVE_UNIX
#define LANDLOCK_ACCESS_FS_RESOLVE_UNIX (1ULL << 16)
#endif
#ifndef LANDLOCK_ACCESS_NET_BIND_TCP
#define LANDLOCK_ACCESS_NET_BIND_TCP (1ULL << 0)
#endif
#ifndef LANDLOCK_ACCESS_NET_CONNECT_TCP
#define LANDLOCK_ACCESS_NET_CONNECT_TCP (1ULL << 1)
#endif
#ifndef LANDLOCK_SCOPE_ABSTRACT_UNIX_SOCKET
#define LANDLOCK_SCOPE_ABSTRACT_UNIX_SOCKET (1ULL << 0)
#endif
#ifndef LANDLOCK_SCOPE_SIGNAL
#define LANDLOCK_SCOPE_SIGNAL (1ULL << 1)
#endif

/* <linux/wait.h>: waitid(2) on a pidfd. */
#define HM_P_PIDFD 3

/* <linux/mount.h>: mount_setattr(2), open_tree(2), move_mount(2). */
struct hm_mount_attr {
    unsigned long long attr_set;
    unsigned long long attr_clr;
    unsigned long long propagation;
    unsigned long long userns_fd;
};
#define HM_MOUNT_ATTR_RDONLY 0x1ULL
#define HM_MOUNT_ATTR_NOSUID 0x2ULL
#define HM_MOUNT_ATTR_NODEV 0x4ULL
#define HM_AT_RECURSIVE 0x8000
#define HM_AT_EMPTY_PATH 0x1000
#define HM_OPEN_TREE_CLONE 1
#define HM_MOVE_MOUNT_F_EMPTY_PATH 0x4
#define HM_MOVE_MOUNT_T_EMPTY_PATH 0x40

/* <linux/openat2.h> */
struct hm_open_how {
    unsigned long long flags;
    unsigned long long mode;
    unsigned long long resolve;
};
#define HM_RESOLVE_NO_SYMLINKS 0x04

/* <linux/sched.h>: clone3's argument. */
struct hm_clone_args {
    unsigned long long flags;
    unsigned long long pidfd;
    unsigned long long child_tid;
    unsigned long long parent_tid;
    unsigned long long exit_signal;
    unsigned long long stack;
    unsigned long long stack_size;
    unsigned long long tls;
    unsigned long long set_tid;
    unsigned long long set_tid_size;
    unsigned long long cgroup;
};
#define HM_CLONE_INTO_CGROUP 0x200000000ULL
#define HM_CLONE_NEWTIME 0x80

/* The kernel's struct sigaction (not libc's) and its sigset size. */
struct hm_ksigaction {
    unsigned long handler;
    unsigned long flags;
    unsigned long restorer;
    unsigned long mask;
};
#define HM_SIGSET_SIZE 8

/* <linux/pidfd.h> (Linux 6.9): signal the pidfd's process group. */
#define HM_PIDFD_SIGNAL_PROCESS_GROUP 4UL

/* <linux/landlock.h> */
struct hm_ruleset_attr {
    unsigned long long handled_access_fs;
    unsigned long long handled_access_net;
    unsigned long long scoped;
};
struct hm_path_beneath {
    unsigned long long allowed_access;
    int parent_fd;
} __attribute__((packed));
#define HM_LANDLOCK_RULE_PATH_BENEATH 1

#endif
