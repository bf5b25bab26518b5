/*
 * init.c: pid 1 once the action runs: the namespace's init.  It reaps every
 * orphan, forwards termination signals, and when the action's main process
 * ends (or the caller sends HM_SIG_END) kills whatever is left, reaps it
 * all, records the action's status and its rusage, and exits.
 *
 * Like every child-side file (see child.c), this one runs in the caller's
 * memory: raw system calls over buffers the caller formatted, no libc.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <signal.h>
#include <sys/resource.h>
#include <sys/wait.h>

#include "internal.h"
#include "rawsys.h"

static unsigned long sigbit(int sig)
{
    return 1UL << (sig - 1);
}

/* Every process of the sandbox but pid 1.  With a pid namespace,
 * kill(-1) from its init: the namespace's processes and no others, named
 * by no number.  Without one (group >= 0, Landlock-only, which needs Linux
 * 6.12 and so has pidfd process-group signals), the action's process
 * group through the action's pidfd: seccomp keeps every process of the
 * action in it. */
static void signal_sandbox(long group, int sig)
{
    if (group >= 0)
        HM_SYS4(SYS_pidfd_send_signal, group, sig, 0, HM_PIDFD_SIGNAL_PROCESS_GROUP);
    else
        HM_SYS2(SYS_kill, -1, sig);
}

/* pid 1 from the action's start to its own end: the namespace's init.
 * caller is the caller's pid (as pid 1 saw its parent), group the action's
 * pidfd without namespaces (-1 with them). */
__attribute__((noreturn)) void hm__init_run(struct hm_proc *proc, long action, long group,
                                            long caller, int no_ns, int profile)
{
    /* From now on block only what init takes synchronously.  Other signals
     * sent from inside the namespace are then dropped, as for any init
     * without handlers, instead of queueing against the user's limit. */

    /* init: every signal stays blocked and is taken synchronously. */
    unsigned long wanted = sigbit(SIGCHLD) | sigbit(SIGTERM) | sigbit(SIGINT) | sigbit(SIGHUP) |
                           sigbit(SIGQUIT) | sigbit(SIGUSR1) | sigbit(SIGUSR2) | sigbit(HM_SIG_END);
    HM_SYS4(SYS_rt_sigprocmask, SIG_SETMASK, &wanted, 0, HM_SIGSET_SIZE);
    int status = 0, st;
    int main_done = 0, ending = 0;
    /* No child left, not even a zombie, as the main process was reaped. */
    int emptied = 0;
    siginfo_t info;
    while (!main_done && !ending) {
        long sig = HM_SYS4(SYS_rt_sigtimedwait, &wanted, &info, 0, HM_SIGSET_SIZE);
        if (sig == SIGCHLD) {
            for (;;) {
                long pid = HM_SYS4(SYS_wait4, -1, &st, WNOHANG | __WALL, 0);
                if (pid <= 0) {
                    emptied = pid == -ECHILD && main_done;
                    break;
                }
                if (pid == action) {
                    status = st;
                    main_done = 1;
                    hm__stamp(proc, profile, HM_STAMP_EXITED);
                }
            }
        } else if (sig == HM_SIG_END) {
            /* Only the caller may end the sandbox this way: a sender
             * outside the namespace shows as pid 0. */
            ending = no_ns ? info.si_pid == caller : info.si_pid == 0;
        } else if (sig > 0) {
            /* kill(-1) from init reaches every process of the namespace
             * but init itself; without one, the action's process group
             * (seccomp keeps every process in it). */
            signal_sandbox(group, sig);
        }
    }
    /* The main process is done, or the caller ends the sandbox: nothing
     * may outlive it.  Reaping everything here, rather than dying, lets the
     * caller's reap of pid 1 (hm_reap) account for every process.
     *
     * In a pid namespace every process but init descends from init (an
     * orphan is adopted by it), so when init has no child at all, as after
     * most actions, nobody is left to kill: the kill, which walks every
     * process of the system to find the namespace's, is skipped.  Without
     * a pid namespace an orphan is adopted outside, so the kill always
     * goes; and init's exit ends whatever a pid namespace still holds. */
    if (!(emptied && group < 0)) {
        signal_sandbox(group, SIGKILL);
        long pid;
        while ((pid = HM_SYS4(SYS_wait4, -1, &st, __WALL, 0)) != -ECHILD) {
            /* An orphan adopted after the kill above is in the group too. */
            if (no_ns)
                signal_sandbox(group, SIGKILL);
            if (pid == action && !main_done) {
                status = st;
                main_done = 1;
            }
        }
    }
    proc->status = status;
    proc->main_exited = main_done;
    struct rusage ru;
    if (HM_SYS2(SYS_getrusage, RUSAGE_CHILDREN, &ru) == 0) {
        proc->ru_utime_us = (long long)ru.ru_utime.tv_sec * 1000000 + ru.ru_utime.tv_usec;
        proc->ru_stime_us = (long long)ru.ru_stime.tv_sec * 1000000 + ru.ru_stime.tv_usec;
        proc->ru_inblock = ru.ru_inblock;
        proc->ru_oublock = ru.ru_oublock;
        proc->ru_valid = 1;
    }
    hm__stamp(proc, profile, HM_STAMP_DONE);
    hm__exit(0);
}
