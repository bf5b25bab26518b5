/*
 * worker.c: threads that only clone sandboxes.
 *
 * A sandbox is born in the cgroups of the thread that clones it.  Moving a
 * process into a cgroup v1 group is slow, so hermetic places a few
 * long-lived threads once and has them do the clone: the caller hands its
 * plan over, the worker runs hm_spawn(), and the caller goes on to wait for
 * the sandbox itself.  The hand-over is a mutex and a condition variable,
 * without the interpreter: microseconds.
 *
 * A worker places itself (hm_worker_join): it writes "0" to each group's
 * `tasks` file.  The kernel moves the calling thread alone then, without
 * write-locking every thread group of the system (cgroup_threadgroup_rwsem)
 * as it does for a move by id, which waits for an RCU grace period: on
 * this machine about 0.2 ms for a slot's five groups, from Python, instead
 * of 8-16 ms.
 *
 * A worker blocks every signal, so no signal handler ever runs on it, and
 * it never runs Python.  It is also the parent thread of the sandboxes it
 * clones, which PR_SET_PDEATHSIG watches: it lives until hm_worker_stop().
 */
#define _GNU_SOURCE
#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <stdlib.h>
#include <sys/syscall.h>
#include <unistd.h>

#include "../hermetic.h"

struct hm_worker_impl {
    pthread_t thread;
    pthread_mutex_t mu;
    pthread_cond_t cv;
    int tid;
    int started;
    int stop;
    int pending;  /* a request waits for the worker */
    int done;     /* the worker answered it */
    const struct hm_plan *plan;
    struct hm_proc *proc;
    struct hm_error *error;
    int kind;            /* of the pending request: REQ_SPAWN or REQ_JOIN */
    const int *join_fds;
    int n_join;
    int join_failed;     /* index of the file a join could not write */
    int rc;
};

enum { REQ_SPAWN, REQ_JOIN };

/* "0" to each `tasks` file: the calling thread moves.  The index of the
 * file that failed goes to *failed. */
static int join_self(const int *fds, int n, int *failed)
{
    for (int i = 0; i < n; i++) {
        /* The worker blocks every signal, and the kernel writes all of
         * it or fails. */
        ssize_t r = pwrite(fds[i], "0", 1, 0);
        if (r != 1) {
            *failed = i;
            return r < 0 ? -errno : -EIO;
        }
    }
    return 0;
}

static void *worker_main(void *arg)
{
    struct hm_worker_impl *w = arg;
    sigset_t all;
    sigfillset(&all);
    pthread_sigmask(SIG_SETMASK, &all, NULL);
    /* Best effort: without it each action drops the set itself. */
    hm_spawner_thread_init();
    pthread_mutex_lock(&w->mu);
    w->tid = (int)syscall(SYS_gettid);
    w->started = 1;
    pthread_cond_broadcast(&w->cv);
    for (;;) {
        while (!w->pending && !w->stop)
            pthread_cond_wait(&w->cv, &w->mu);
        if (w->stop)
            break;
        w->pending = 0;
        pthread_mutex_unlock(&w->mu);
        int rc;
        if (w->kind == REQ_JOIN)
            rc = join_self(w->join_fds, w->n_join, &w->join_failed);
        else
            rc = hm_spawn(w->plan, w->proc, w->error);
        pthread_mutex_lock(&w->mu);
        w->rc = rc;
        w->done = 1;
        pthread_cond_broadcast(&w->cv);
    }
    pthread_mutex_unlock(&w->mu);
    hm_spawner_thread_fini();
    return NULL;
}

int hm_worker_start(struct hm_worker *worker)
{
    struct hm_worker_impl *w = calloc(1, sizeof *w);
    if (!w)
        return -ENOMEM;
    pthread_mutex_init(&w->mu, NULL);
    pthread_cond_init(&w->cv, NULL);
    /* The thread inherits the caller's signal mask until worker_main
     * blocks everything: block it already here, so no window exists. */
    sigset_t all, old;
    sigfillset(&all);
    pthread_sigmask(SIG_SETMASK, &all, &old);
    int e = pthread_create(&w->thread, NULL, worker_main, w);
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    if (e) {
        pthread_cond_destroy(&w->cv);
        pthread_mutex_destroy(&w->mu);
        free(w);
        return -e;
    }
    pthread_mutex_lock(&w->mu);
    while (!w->started)
        pthread_cond_wait(&w->cv, &w->mu);
    worker->tid = w->tid;
    pthread_mutex_unlock(&w->mu);
    worker->impl = w;
    return 0;
}

/* Hand the request set in w (under w->mu) to the worker and wait for its
 * answer; returns with w->mu held. */
static int request(struct hm_worker_impl *w)
{
    w->done = 0;
    w->pending = 1;
    pthread_cond_broadcast(&w->cv);
    while (!w->done)
        pthread_cond_wait(&w->cv, &w->mu);
    return w->rc;
}

/* hm_spawn() run by the worker thread.  One request at a time per worker:
 * the caller leases a worker exclusively. */
int hm_worker_spawn(struct hm_worker *worker, const struct hm_plan *plan, struct hm_proc *proc,
                    struct hm_error *error)
{
    struct hm_worker_impl *w = worker->impl;
    if (!w)
        return -EINVAL;
    pthread_mutex_lock(&w->mu);
    w->kind = REQ_SPAWN;
    w->plan = plan;
    w->proc = proc;
    w->error = error;
    int rc = request(w);
    w->plan = NULL;
    w->proc = NULL;
    w->error = NULL;
    pthread_mutex_unlock(&w->mu);
    return rc;
}

/* The worker thread moves itself into the groups whose `tasks` files are
 * open (for writing) at fds[0..n-1].  On failure *failed is the index of
 * the file it could not write. */
int hm_worker_join(struct hm_worker *worker, const int *fds, int n, int *failed)
{
    struct hm_worker_impl *w = worker->impl;
    *failed = -1;
    if (!w || !fds || n < 0)
        return -EINVAL;
    pthread_mutex_lock(&w->mu);
    w->kind = REQ_JOIN;
    w->join_fds = fds;
    w->n_join = n;
    w->join_failed = -1;
    int rc = request(w);
    *failed = w->join_failed;
    w->kind = REQ_SPAWN;
    w->join_fds = NULL;
    w->n_join = 0;
    pthread_mutex_unlock(&w->mu);
    return rc;
}

void hm_worker_stop(struct hm_worker *worker)
{
    struct hm_worker_impl *w = worker->impl;
    if (!w)
        return;
    pthread_mutex_lock(&w->mu);
    w->stop = 1;
    pthread_cond_broadcast(&w->cv);
    pthread_mutex_unlock(&w->mu);
    pthread_join(w->thread, NULL);
    pthread_cond_destroy(&w->cv);
    pthread_mutex_destroy(&w->mu);
    free(w);
    worker->impl = NULL;
}
