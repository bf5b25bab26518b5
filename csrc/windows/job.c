/*
 * job.c: run an action in a job object (see hermetic_windows.h).
 *
 * Order matters: the job and its completion port exist before the
 * process; the process is created suspended, assigned to the job, then
 * resumed, so its first instruction already runs inside the job and every
 * child it creates is in the job too.  Only the three std handles are
 * inherited (PROC_THREAD_ATTRIBUTE_HANDLE_LIST).
 */
#define WIN32_LEAN_AND_MEAN
#include <windows.h>

#include "hermetic_windows.h"

static int fail(unsigned long *win_error)
{
    *win_error = GetLastError();
    return -1;
}

static int set_limits(HANDLE job, const struct hm_win_limits *lim)
{
    JOBOBJECT_EXTENDED_LIMIT_INFORMATION info;
    ZeroMemory(&info, sizeof info);
    DWORD flags = JOB_OBJECT_LIMIT_KILL_ON_JOB_CLOSE | JOB_OBJECT_LIMIT_DIE_ON_UNHANDLED_EXCEPTION;
    if (lim && lim->max_processes) {
        flags |= JOB_OBJECT_LIMIT_ACTIVE_PROCESS;
        info.BasicLimitInformation.ActiveProcessLimit = lim->max_processes;
    }
    if (lim && lim->memory_bytes) {
        flags |= JOB_OBJECT_LIMIT_JOB_MEMORY;
        info.JobMemoryLimit = (SIZE_T)lim->memory_bytes;
    }
    if (lim && lim->cpu_time_100ns) {
        flags |= JOB_OBJECT_LIMIT_JOB_TIME;
        info.BasicLimitInformation.PerJobUserTimeLimit.QuadPart = (LONGLONG)lim->cpu_time_100ns;
    }
    info.BasicLimitInformation.LimitFlags = flags;
    if (!SetInformationJobObject(job, JobObjectExtendedLimitInformation, &info, sizeof info))
        return -1;
    if (lim && lim->cpu_time_100ns) {
        /* By default the job is ended at its time limit without a message:
         * ask for the message, and end it ourselves (hm_win_wait). */
        JOBOBJECT_END_OF_JOB_TIME_INFORMATION eoj;
        eoj.EndOfJobTimeAction = JOB_OBJECT_POST_AT_END_OF_JOB;
        if (!SetInformationJobObject(job, JobObjectEndOfJobTimeInformation, &eoj, sizeof eoj))
            return -1;
    }
    return 0;
}

/* Processes still in the job (the messages are not guaranteed, and a job
 * the action nests in ours reports through our port too). */
static long active_processes(HANDLE job)
{
    JOBOBJECT_BASIC_ACCOUNTING_INFORMATION acct;
    if (!QueryInformationJobObject(job, JobObjectBasicAccountingInformation, &acct, sizeof acct,
                                   NULL))
        return -1;
    return (long)acct.ActiveProcesses;
}

int hm_win_spawn(const wchar_t *application, wchar_t *cmdline, const wchar_t *env,
                 const wchar_t *cwd, void *std_in, void *std_out, void *std_err,
                 const struct hm_win_limits *limits, struct hm_win_proc *out,
                 unsigned long *win_error)
{
    ZeroMemory(out, sizeof *out);
    *win_error = 0;
    HANDLE job = CreateJobObjectW(NULL, NULL);
    if (!job)
        return fail(win_error);
    HANDLE port = CreateIoCompletionPort(INVALID_HANDLE_VALUE, NULL, 0, 1);
    if (!port) {
        fail(win_error);
        CloseHandle(job);
        return -1;
    }
    JOBOBJECT_ASSOCIATE_COMPLETION_PORT assoc;
    assoc.CompletionKey = job;
    assoc.CompletionPort = port;
    if (!SetInformationJobObject(job, JobObjectAssociateCompletionPortInformation, &assoc,
                                 sizeof assoc) ||
        set_limits(job, limits) < 0)
        goto fail_job;

    /* Inherit exactly the std handles. */
    HANDLE inherit[3] = {std_in, std_out, std_err};
    SIZE_T attr_size = 0;
    InitializeProcThreadAttributeList(NULL, 1, 0, &attr_size);
    LPPROC_THREAD_ATTRIBUTE_LIST attrs = HeapAlloc(GetProcessHeap(), 0, attr_size);
    if (!attrs) {
        SetLastError(ERROR_NOT_ENOUGH_MEMORY);
        goto fail_job;
    }
    if (!InitializeProcThreadAttributeList(attrs, 1, 0, &attr_size)) {
        HeapFree(GetProcessHeap(), 0, attrs);
        goto fail_job;
    }
    if (!UpdateProcThreadAttribute(attrs, 0, PROC_THREAD_ATTRIBUTE_HANDLE_LIST, inherit,
                                   sizeof inherit, NULL, NULL))
        goto fail_attrs;

    STARTUPINFOEXW si;
    ZeroMemory(&si, sizeof si);
    si.StartupInfo.cb = sizeof si;
    si.StartupInfo.dwFlags = STARTF_USESTDHANDLES;
    si.StartupInfo.hStdInput = std_in;
    si.StartupInfo.hStdOutput = std_out;
    si.StartupInfo.hStdError = std_err;
    si.lpAttributeList = attrs;
    PROCESS_INFORMATION pi;
    ZeroMemory(&pi, sizeof pi);
    DWORD create = CREATE_SUSPENDED | CREATE_UNICODE_ENVIRONMENT | EXTENDED_STARTUPINFO_PRESENT |
                   CREATE_NO_WINDOW | CREATE_NEW_PROCESS_GROUP;
    if (!CreateProcessW(application, cmdline, NULL, NULL, TRUE, create, (LPVOID)env, cwd,
                        &si.StartupInfo, &pi))
        goto fail_attrs;
    DeleteProcThreadAttributeList(attrs);
    HeapFree(GetProcessHeap(), 0, attrs);
    if (!AssignProcessToJobObject(job, pi.hProcess)) {
        fail(win_error);
        TerminateProcess(pi.hProcess, 1);
        CloseHandle(pi.hThread);
        CloseHandle(pi.hProcess);
        CloseHandle(port);
        CloseHandle(job);
        return -1;
    }
    if (ResumeThread(pi.hThread) == (DWORD)-1) {
        fail(win_error);
        TerminateJobObject(job, 1);
        CloseHandle(pi.hThread);
        CloseHandle(pi.hProcess);
        CloseHandle(port);
        CloseHandle(job);
        return -1;
    }
    CloseHandle(pi.hThread);
    out->process = pi.hProcess;
    out->job = job;
    out->port = port;
    out->pid = pi.dwProcessId;
    return 0;

fail_attrs:
    fail(win_error);
    DeleteProcThreadAttributeList(attrs);
    HeapFree(GetProcessHeap(), 0, attrs);
    CloseHandle(port);
    CloseHandle(job);
    return -1;
fail_job:
    fail(win_error);
    CloseHandle(port);
    CloseHandle(job);
    return -1;
}

int hm_win_wait(struct hm_win_proc *proc, unsigned long timeout_ms)
{
    ULONGLONG start = GetTickCount64();
    for (;;) {
        /* Never block long on the port alone: a lost message must not hang
         * the wait, so the job is also asked directly at least every 100 ms. */
        DWORD wait = 100;
        if (timeout_ms != 0xFFFFFFFFUL) {
            ULONGLONG spent = GetTickCount64() - start;
            if (spent >= timeout_ms)
                return active_processes((HANDLE)proc->job) == 0 ? 0 : 1;
            if (timeout_ms - spent < wait)
                wait = (DWORD)(timeout_ms - spent);
        }
        DWORD message = 0;
        ULONG_PTR key = 0;
        LPOVERLAPPED detail = NULL;
        if (!GetQueuedCompletionStatus((HANDLE)proc->port, &message, &key, &detail, wait)) {
            if (GetLastError() != WAIT_TIMEOUT)
                return -1;
            long active = active_processes((HANDLE)proc->job);
            if (active < 0)
                return -1;
            if (active == 0)
                return 0;
            continue;
        }
        if ((HANDLE)key != (HANDLE)proc->job)
            continue;
        switch (message) {
        case JOB_OBJECT_MSG_ACTIVE_PROCESS_ZERO:
            /* Also sent for a job nested in ours: believe the count. */
            if (active_processes((HANDLE)proc->job) == 0)
                return 0;
            break;
        case JOB_OBJECT_MSG_JOB_MEMORY_LIMIT:
            proc->breaches |= HM_WIN_BREACH_MEMORY;
            TerminateJobObject((HANDLE)proc->job, ERROR_NOT_ENOUGH_QUOTA);
            break;
        case JOB_OBJECT_MSG_END_OF_JOB_TIME:
            proc->breaches |= HM_WIN_BREACH_TIME;
            TerminateJobObject((HANDLE)proc->job, ERROR_NOT_ENOUGH_QUOTA);
            break;
        case JOB_OBJECT_MSG_ACTIVE_PROCESS_LIMIT:
            /* The new process was refused; the job goes on. */
            proc->breaches |= HM_WIN_BREACH_PROCESSES;
            break;
        default:
            break;
        }
    }
}

int hm_win_kill(struct hm_win_proc *proc, unsigned int exit_code)
{
    return TerminateJobObject((HANDLE)proc->job, exit_code) ? 0 : -1;
}

int hm_win_usage(struct hm_win_proc *proc, struct hm_win_usage *usage)
{
    JOBOBJECT_BASIC_AND_IO_ACCOUNTING_INFORMATION acct;
    JOBOBJECT_EXTENDED_LIMIT_INFORMATION ext;
    ZeroMemory(usage, sizeof *usage);
    if (!QueryInformationJobObject((HANDLE)proc->job, JobObjectBasicAndIoAccountingInformation,
                                   &acct, sizeof acct, NULL))
        return -1;
    usage->user_100ns = (unsigned long long)acct.BasicInfo.TotalUserTime.QuadPart;
    usage->kernel_100ns = (unsigned long long)acct.BasicInfo.TotalKernelTime.QuadPart;
    usage->read_bytes = acct.IoInfo.ReadTransferCount;
    usage->write_bytes = acct.IoInfo.WriteTransferCount;
    usage->total_processes = acct.BasicInfo.TotalProcesses;
    usage->active_processes = acct.BasicInfo.ActiveProcesses;
    if (QueryInformationJobObject((HANDLE)proc->job, JobObjectExtendedLimitInformation, &ext,
                                  sizeof ext, NULL))
        usage->peak_job_memory = ext.PeakJobMemoryUsed;
    return 0;
}

int hm_win_exit_code(struct hm_win_proc *proc, unsigned long *code)
{
    DWORD c = 0;
    if (!GetExitCodeProcess((HANDLE)proc->process, &c))
        return -1;
    *code = c;
    return 0;
}

void hm_win_close(struct hm_win_proc *proc)
{
    if (proc->process)
        CloseHandle((HANDLE)proc->process);
    if (proc->port)
        CloseHandle((HANDLE)proc->port);
    if (proc->job)
        CloseHandle((HANDLE)proc->job); /* KILL_ON_JOB_CLOSE: nothing outlives it */
    proc->process = proc->port = proc->job = NULL;
}
