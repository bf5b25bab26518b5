/*
 * tree.c: one directory's entries and their stat fields, for the action
 * digest's cache (hermetic/core/digest.py).
 *
 * hm_dir_snapshot() lists a directory, sorted by name, as a byte string:
 * per entry a u32 name length, the name, then mode, dev, ino, size,
 * mtime_ns and ctime_ns as u64s (native byte order).  Two equal snapshots
 * mean no entry was added, removed, replaced or changed in content or mode
 * (a write changes mtime and ctime): the caller then reuses the digest it
 * computed from the first.  One call per directory keeps an unchanged
 * tree's re-check to one fstatat() per entry, without Python per entry.
 */
#define _GNU_SOURCE
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "../hermetic.h"

/* The stat fields of names[from, to), into fields[]; -errno on failure
 * (an entry gone since the listing is marked with mode 0 and skipped).
 * On an unchanged tree these calls are the whole cost.  (A second thread
 * taking half of one directory's was measured slower; hermetic/core/digest.py
 * spreads whole directories over a few threads instead.) */
struct stat_job {
    int dfd;
    char **names;
    uint64_t *fields;
    size_t from, to;
    long rc;
};

static void *stat_range(void *arg)
{
    struct stat_job *j = arg;
    for (size_t i = j->from; i < j->to; i++) {
        struct stat st;
        uint64_t *f = j->fields + 6 * i;
        if (fstatat(j->dfd, j->names[i], &st, AT_SYMLINK_NOFOLLOW) < 0) {
            if (errno == ENOENT) {
                f[0] = 0;
                continue;
            }
            j->rc = -errno;
            return NULL;
        }
        f[0] = st.st_mode;
        f[1] = st.st_dev;
        f[2] = st.st_ino;
        f[3] = (uint64_t)st.st_size;
        f[4] = (uint64_t)st.st_mtim.tv_sec * 1000000000ULL + (uint64_t)st.st_mtim.tv_nsec;
        f[5] = (uint64_t)st.st_ctim.tv_sec * 1000000000ULL + (uint64_t)st.st_ctim.tv_nsec;
    }
    return NULL;
}

static int by_name(const void *a, const void *b)
{
    return strcmp(*(char *const *)a, *(char *const *)b);
}

/* Returns the snapshot's length, -ENOSPC when cap is too small (the
 * needed size is then in *need), or -errno. */
long hm_dir_snapshot(const char *path, char *out, unsigned long cap, unsigned long *need)
{
    int dfd = open(path, O_RDONLY | O_DIRECTORY | O_CLOEXEC | O_NOFOLLOW);
    if (dfd < 0)
        return -errno;
    DIR *dir = fdopendir(dfd);
    if (!dir) {
        int e = errno;
        close(dfd);
        return -e;
    }
    /* Names go into one arena, their offsets into another. */
    size_t n = 0, max = 256, used = 0, room = 8192;
    size_t *offs = malloc(max * sizeof *offs);
    char *arena = malloc(room);
    long rc = offs && arena ? 0 : -ENOMEM;
    struct dirent *d;
    while (rc == 0 && (errno = 0, d = readdir(dir)) != NULL) {
        const char *name = d->d_name;
        if (name[0] == '.' && (!name[1] || (name[1] == '.' && !name[2])))
            continue;
        size_t len = strlen(name) + 1;
        if (n == max || used + len > room) {
            size_t *o2 = n == max ? realloc(offs, 2 * max * sizeof *offs) : offs;
            char *a2 = used + len > room ? realloc(arena, 2 * room + len) : arena;
            if (o2)
                offs = o2;
            if (a2)
                arena = a2;
            if (!o2 || !a2) {
                rc = -ENOMEM;
                break;
            }
            if (n == max)
                max *= 2;
            if (a2 != arena || used + len > room)
                room = 2 * room + len;
        }
        memcpy(arena + used, name, len);
        offs[n++] = used;
        used += len;
    }
    if (rc == 0 && errno)
        rc = -errno;
    char **names = rc == 0 ? malloc((n ? n : 1) * sizeof *names) : NULL;
    if (rc == 0 && !names)
        rc = -ENOMEM;
    if (rc == 0) {
        size_t total = 0;
        for (size_t i = 0; i < n; i++) {
            names[i] = arena + offs[i];
            total += 4 + strlen(names[i]) + 6 * 8;
        }
        *need = total;
        qsort(names, n, sizeof *names, by_name);
        size_t at = 0;
        uint64_t *fields = total > cap ? NULL : malloc((n ? n : 1) * 6 * sizeof *fields);
        if (total > cap)
            rc = -ENOSPC;
        else if (!fields)
            rc = -ENOMEM;
        if (rc == 0) {
            struct stat_job job = {dfd, names, fields, 0, n, 0};
            stat_range(&job);
            rc = job.rc;
        }
        for (size_t i = 0; i < n && rc == 0; i++) {
            const uint64_t *f = fields + 6 * i;
            if (f[0] == 0)
                continue; /* gone since the listing */
            uint32_t len = (uint32_t)strlen(names[i]);
            memcpy(out + at, &len, 4);
            memcpy(out + at + 4, names[i], len);
            memcpy(out + at + 4 + len, f, 6 * sizeof *f);
            at += 4 + len + 6 * sizeof *f;
        }
        free(fields);
        if (rc == 0)
            rc = (long)at;
    }
    free(names);
    free(offs);
    free(arena);
    closedir(dir);
    return rc;
}
