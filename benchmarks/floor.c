/*
 * floor.c: the least a sandbox's namespaces cost on this machine, for the
 * `true` group's floor rows (benchmarks/test_floor.py builds it with gcc
 * and calls floor_action() through ctypes).  Not part of hermetic.
 *
 * One call runs /bin/true once, the way a minimal sandbox would, with
 * nothing but the kernel's namespace work: no user namespace, no network
 * namespace, no seccomp, no Landlock, no cgroup, no descriptors or
 * capabilities dropped.  The process is cloned with CLONE_VM | CLONE_VFORK
 * like posix_spawn's, so the caller's size does not matter.
 *
 *   FLOOR_INIT         a new pid namespace whose pid 1 (an init, as
 *                      bubblewrap's and hermetic's) vforks the command,
 *                      waits for it and exits with its status
 *   FLOOR_INIT_MOUNTS  the same with new ipc, uts and mount namespaces,
 *                      the mount tree made private, /proc and a tmpfs /tmp
 *                      mounted
 *   FLOOR_AS_PID_1     those namespaces and mounts, the command itself as
 *                      pid 1 (no init: bubblewrap's --as-pid-1)
 *
 * Returns the command's exit status, or -errno when the clone failed.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <sched.h>
#include <signal.h>
#include <sys/mount.h>
#include <sys/wait.h>
#include <unistd.h>

enum { FLOOR_INIT = 1, FLOOR_INIT_MOUNTS = 2, FLOOR_AS_PID_1 = 3 };

extern char **environ;
static char *const argv_true[] = {"/bin/true", 0};
/* pid 1's stack: one call at a time, and the caller is suspended until
 * pid 1 execs or exits (CLONE_VFORK). */
static char stack[1 << 16] __attribute__((aligned(16)));

static int pid1(void *arg)
{
    int level = *(int *)arg;
    if (level >= FLOOR_INIT_MOUNTS) {
        if (mount(0, "/", 0, MS_REC | MS_PRIVATE, 0) < 0 ||
            mount("proc", "/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC, 0) < 0 ||
            mount("tmpfs", "/tmp", "tmpfs", MS_NOSUID | MS_NODEV, "size=1m") < 0)
            _exit(125);
    }
    if (level == FLOOR_AS_PID_1) {
        execve(argv_true[0], argv_true, environ);
        _exit(127);
    }
    pid_t child = vfork();
    if (child == 0) {
        execve(argv_true[0], argv_true, environ);
        _exit(127);
    }
    int status = 0;
    if (child < 0 || waitpid(child, &status, 0) < 0)
        _exit(126);
    _exit(WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status));
}

int floor_action(int level)
{
    int flags = CLONE_VM | CLONE_VFORK | CLONE_NEWPID | SIGCHLD;
    if (level >= FLOOR_INIT_MOUNTS)
        flags |= CLONE_NEWIPC | CLONE_NEWUTS | CLONE_NEWNS;
    pid_t pid = clone(pid1, stack + sizeof stack, flags, &level);
    if (pid < 0)
        return -errno;
    int status = 0;
    while (waitpid(pid, &status, 0) < 0)
        if (errno != EINTR)
            return -errno;
    return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
}
