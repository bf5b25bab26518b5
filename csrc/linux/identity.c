/*
 * identity.c: whether host paths still name the inodes they named.
 *
 * A standby sandbox binds host paths (and enters a working directory) as
 * they were when it was set up; before its action starts, the execution
 * taking it checks that each path still resolves, without following a
 * final link, to the same device, inode and file type
 * (hermetic/platforms/linux/standby.py), so that a path replaced on the
 * host since is never the one the action sees.  That check is on the
 * calling thread of every action; one call here makes it a system call
 * per path without an interpreter object per path (about 30 us for the
 * seven paths of a toolchain spec from Python, a third of it here).
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <string.h>
#include <sys/stat.h>

#include "../hermetic.h"

/* `paths`: n NUL-terminated paths one after the other; `expect`: 3 values
 * per path, its st_dev, st_ino and st_mode >> 12 (the file type) as lstat
 * gave them.  1 when every path still has them, 0 when one is missing or
 * differs; -errno when one cannot be looked at (EACCES, ENOMEM...). */
int hm_identity_same(const char *paths, const unsigned long long *expect, int n)
{
    const char *p = paths;
    for (int i = 0; i < n; i++, p += strlen(p) + 1) {
        struct stat st;
        if (fstatat(AT_FDCWD, p, &st, AT_SYMLINK_NOFOLLOW) < 0) {
            if (errno == ENOENT || errno == ENOTDIR)
                return 0;
            return -errno;
        }
        const unsigned long long *e = expect + 3 * i;
        if ((unsigned long long)st.st_dev != e[0] || (unsigned long long)st.st_ino != e[1] ||
            (unsigned long long)(st.st_mode >> 12) != e[2])
            return 0;
    }
    return 1;
}
