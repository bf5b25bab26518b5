/*
 * stage.c: hard links from the farm worker's local cache into one
 * directory of an exec root (hermetic/remote/cas.py, LocalCache.link_all).
 *
 * Each entry is checked, then linked: fstatat() without following a link
 * must find a regular file of the caller's effective uid and of the size
 * its digest names (anything else is not a file the cache wrote), and
 * linkat() never follows a link either.  The names come packed, each
 * ended by a NUL, so a directory of files costs Python one call; cffi
 * releases the interpreter's lock around it, so the directories of one
 * level are linked on several threads at once.  Per file, Python's own
 * work had cost twice the two system calls.
 *
 * An entry that fails does not stop the call: its index goes to failed[]
 * and the next one is tried, so a directory is packed and walked once
 * whatever fails in it (a lease whose every input shares one inode past
 * its link limit fails each with EMLINK).  The caller places the failed
 * ones one by one, which names the failure or mends it.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "../hermetic.h"

long hm_link_entries(int cache_fd, int dir_fd, const char *entries, const char *names,
                     const long long *sizes, long n, long *failed)
{
    uid_t uid = geteuid();
    long n_failed = 0;
    for (long i = 0; i < n; i++) {
        struct stat st;
        if (fstatat(cache_fd, entries, &st, AT_SYMLINK_NOFOLLOW) < 0 || !S_ISREG(st.st_mode) ||
            st.st_uid != uid || (long long)st.st_size != sizes[i] ||
            linkat(cache_fd, entries, dir_fd, names, 0) < 0)
            failed[n_failed++] = i;
        entries += strlen(entries) + 1;
        names += strlen(names) + 1;
    }
    return n_failed;
}
