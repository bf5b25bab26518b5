/*
 * hermetic_windows.h: the C interface of the Windows core (job.c).
 *
 * A job object per execution: the action is created suspended, put in the
 * job, then resumed, so nothing it starts escapes the job.  The job kills
 * everything when its last handle closes (KILL_ON_JOB_CLOSE), bounds
 * processes, memory and CPU time, and reports through an I/O completion
 * port, which also says when the last process has gone.
 *
 * Job objects isolate neither files nor the network: hermetic says so in
 * capabilities() and marks such results as not hermetic.
 */
#ifndef HERMETIC_WINDOWS_H
#define HERMETIC_WINDOWS_H

#include <wchar.h>

/* cdef-begin */

/* Limits of the job; 0 means none. */
struct hm_win_limits {
    unsigned long long memory_bytes;     /* JOB_OBJECT_LIMIT_JOB_MEMORY */
    unsigned long long cpu_time_100ns;   /* JOB_OBJECT_LIMIT_JOB_TIME (user time, all processes) */
    unsigned int max_processes;          /* JOB_OBJECT_LIMIT_ACTIVE_PROCESS */
};

/* One running execution: handles as opaque pointers. */
struct hm_win_proc {
    void *process;
    void *job;
    void *port;
    unsigned long pid;
    unsigned int breaches;   /* HM_WIN_BREACH_* seen by hm_win_wait */
};

#define HM_WIN_BREACH_MEMORY 1     /* JOB_OBJECT_MSG_JOB_MEMORY_LIMIT */
#define HM_WIN_BREACH_TIME 2       /* JOB_OBJECT_MSG_END_OF_JOB_TIME */
#define HM_WIN_BREACH_PROCESSES 4  /* JOB_OBJECT_MSG_ACTIVE_PROCESS_LIMIT (refused, not killed) */

/* The job's accounting (JobObjectBasicAndIoAccountingInformation and the
 * extended limit information's peak). */
struct hm_win_usage {
    unsigned long long user_100ns;
    unsigned long long kernel_100ns;
    unsigned long long read_bytes;
    unsigned long long write_bytes;
    unsigned long long peak_job_memory;
    unsigned int total_processes;
    unsigned int active_processes;
};

/* Returns 0, or -1 with the Windows error code in *win_error.  cmdline is
 * modified by CreateProcessW (as its documentation allows); env is a
 * double-NUL-terminated block; the std handles are inherited, nothing
 * else is. */
int hm_win_spawn(const wchar_t *application, wchar_t *cmdline, const wchar_t *env,
                 const wchar_t *cwd, void *std_in, void *std_out, void *std_err,
                 const struct hm_win_limits *limits, struct hm_win_proc *out,
                 unsigned long *win_error);
/* Waits until the job has no process left (0) or timeout_ms passed (1);
 * -1 on error.  timeout_ms of 0xFFFFFFFF waits forever. */
int hm_win_wait(struct hm_win_proc *proc, unsigned long timeout_ms);
/* Ends every process of the job. */
int hm_win_kill(struct hm_win_proc *proc, unsigned int exit_code);
int hm_win_usage(struct hm_win_proc *proc, struct hm_win_usage *usage);
int hm_win_exit_code(struct hm_win_proc *proc, unsigned long *code);
/* Closes the handles (the job last: that kills whatever is left). */
void hm_win_close(struct hm_win_proc *proc);

/* cdef-end */

#endif
