/*
 * sandbox.c: start an action under an SBPL profile (see hermetic_macos.h).
 *
 * fork, then in the child: a new session, the std descriptors, every other
 * descriptor closed, the working directory, rlimits, the profile applied
 * with sandbox_init_with_parameters() (a private but stable entry point of
 * libsystem_sandbox, the one Nix uses), exec.  A setup failure travels
 * back on a close-on-exec pipe; the error string the sandbox allocates is
 * copied into that message and freed.
 */
#define _DARWIN_C_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <unistd.h>

#include "hermetic_macos.h"

/* libsystem_sandbox, undeclared in the SDK. */
int sandbox_init_with_parameters(const char *profile, uint64_t flags,
                                 const char *const parameters[], char **errorbuf);
void sandbox_free_error(char *errorbuf);

/* One message: a step name, errno, and (for the profile) the sandbox's text. */
static void report(int fd, const char *step, int err, const char *detail)
{
    char msg[1024];
    int n = snprintf(msg, sizeof msg, "%s: %s%s%s", step, strerror(err), detail ? ": " : "",
                     detail ? detail : "");
    if (n > 0)
        (void)!write(fd, msg, (size_t)n < sizeof msg ? (size_t)n : sizeof msg - 1);
}

static void child(int fd, const char *const *exec_paths, int n_exec_paths, char *const *argv,
                  char *const *envp, const char *cwd, const char *profile,
                  const char *const *params, const int std[3],
                  const struct hm_mac_rlimit *rlimits, int n_rlimits)
{
    /* Default dispositions, nothing blocked, as a fresh process has. */
    for (int sig = 1; sig < NSIG; sig++)
        if (sig != SIGKILL && sig != SIGSTOP)
            signal(sig, SIG_DFL);
    sigset_t none;
    sigemptyset(&none);
    sigprocmask(SIG_SETMASK, &none, NULL);
    if (setsid() < 0) {
        report(fd, "setsid", errno, NULL);
        _exit(127);
    }
    int moved[3];
    for (int i = 0; i < 3; i++) {
        moved[i] = fcntl(std[i], F_DUPFD_CLOEXEC, 10);
        if (moved[i] < 0) {
            report(fd, "descriptors", errno, NULL);
            _exit(127);
        }
    }
    for (int i = 0; i < 3; i++)
        if (dup2(moved[i], i) < 0) {
            report(fd, "descriptors", errno, NULL);
            _exit(127);
        }
    /* Everything else closes at exec; the report pipe is close-on-exec. */
    long top = sysconf(_SC_OPEN_MAX);
    for (long d = 3; d < (top > 0 && top < 65536 ? top : 65536); d++)
        if (d != fd)
            fcntl((int)d, F_SETFD, FD_CLOEXEC);
    if (chdir(cwd) < 0) {
        report(fd, "chdir", errno, cwd);
        _exit(127);
    }
    umask(022);
    for (int i = 0; i < n_rlimits; i++) {
        struct rlimit lim = {(rlim_t)rlimits[i].cur, (rlim_t)rlimits[i].max};
        if (setrlimit(rlimits[i].resource, &lim) < 0) {
            report(fd, "rlimit", errno, NULL);
            _exit(127);
        }
    }
    char *sandbox_error = NULL;
    if (sandbox_init_with_parameters(profile, 0, params, &sandbox_error) != 0) {
        report(fd, "sandbox_init", EPERM, sandbox_error ? sandbox_error : "profile refused");
        if (sandbox_error)
            sandbox_free_error(sandbox_error);
        _exit(127);
    }
    int err = ENOENT;
    for (int i = 0; i < n_exec_paths; i++) {
        execve(exec_paths[i], argv, envp);
        if (errno != ENOENT && errno != ENOTDIR)
            err = errno;
    }
    report(fd, "exec", err, argv[0]);
    _exit(127);
}

int hm_mac_spawn(const char *const *exec_paths, int n_exec_paths, char *const *argv,
                 char *const *envp, const char *cwd, const char *profile,
                 const char *const *params, int stdin_fd, int stdout_fd, int stderr_fd,
                 const struct hm_mac_rlimit *rlimits, int n_rlimits, char *err,
                 unsigned long err_size)
{
    int pipefd[2];
    err[0] = 0;
    if (pipe(pipefd) < 0 || fcntl(pipefd[0], F_SETFD, FD_CLOEXEC) < 0 ||
        fcntl(pipefd[1], F_SETFD, FD_CLOEXEC) < 0) {
        snprintf(err, err_size, "pipe: %s", strerror(errno));
        return -1;
    }
    const int std[3] = {stdin_fd, stdout_fd, stderr_fd};
    pid_t pid = fork();
    if (pid < 0) {
        snprintf(err, err_size, "fork: %s", strerror(errno));
        close(pipefd[0]);
        close(pipefd[1]);
        return -1;
    }
    if (pid == 0) {
        close(pipefd[0]);
        child(pipefd[1], exec_paths, n_exec_paths, argv, envp, cwd, profile, params, std,
              rlimits, n_rlimits);
    }
    close(pipefd[1]);
    ssize_t n;
    do
        n = read(pipefd[0], err, err_size - 1);
    while (n < 0 && errno == EINTR);
    close(pipefd[0]);
    if (n > 0) {
        err[n] = 0;
        int status;
        while (waitpid(pid, &status, 0) < 0 && errno == EINTR)
            ;
        return -1;
    }
    return pid;
}
