/*
 * outputs.c: whether the set-id scan after a run has anything to look at.
 *
 * After every run hermetic/security/outputs.py walks the outputs and temps
 * for regular files with a set-uid or set-gid bit, or executable with a
 * file capability.  Most runs leave neither: a compiler writes 0644
 * objects, /bin/true writes nothing.  From Python that walk of two empty
 * directories took about 60 us per action (13 system calls each, and the
 * interpreter around them); here it is an open, two getdents64 and a close
 * per empty directory.
 *
 * hm_outputs_plain() answers only "nothing to do": 1 when no root holds a
 * regular file with a set-id bit, nor an executable one with file
 * capabilities (its security.capability attribute, read from the same
 * inode as its mode), 0 when it found one or could not tell (a directory
 * it cannot open, one nested deeper than max_depth, more than max_entries
 * entries, an attribute it cannot read, any error other than a name gone
 * since it was listed).  On 0 the caller runs the full scan, which strips, removes and
 * reports; so every doubt costs time, never a check.  A build's outputs
 * hold executables (a linked program, CMake's compiler probes): each is
 * an open, an fstat and a getxattr here, where it sent every later run to
 * the full scan.
 *
 * Like the scan it never follows a link: the roots are looked at with
 * lstat semantics, every directory is opened relative to its parent's
 * descriptor with O_DIRECTORY | O_NOFOLLOW, and only regular files count.
 * It holds at most max_depth + 1 directory descriptors at once, and
 * max_depth + 1 listing buffers of LISTING bytes on the stack.  The
 * caller's inputs nested in an output are not skipped here (the scan skips
 * them): an executable among them only sends the caller to the full scan.
 */
#define _GNU_SOURCE
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/xattr.h>
#include <unistd.h>

#include "../hermetic.h"

#define SETID (S_ISUID | S_ISGID)
#define EXEC (S_IXUSR | S_IXGRP | S_IXOTH)
#define DIR_FLAGS (O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC)
/* Bytes of entries read at a time, per directory level (on the stack:
 * max_depth levels at most).  One read lists a small directory. */
#define LISTING 2048

struct entry64 {
    unsigned long long d_ino;
    long long d_off;
    unsigned short d_reclen;
    unsigned char d_type;
    char d_name[];
};

struct budget {
    long entries; /* left to look at */
};

/* 1: the executable regular file `name` in the directory `fd` (seen as
 * `seen` by the listing's fstatat) has neither a set-id bit nor file
 * capabilities; 0: it has, or the answer is unknown (as the scan reads
 * them: any other error counts as "none" there).  Mode and attribute come
 * from one inode: the name is opened O_PATH|O_NOFOLLOW, the descriptor's
 * file must be the one listed, and the attribute is read through
 * /proc/self/fd/<that descriptor>, which getxattr follows to the inode
 * itself.  A name swapped since the listing (by an action still running
 * on the same outputs) gives 0.  No attribute, or a filesystem without
 * attributes: none.  `fd` is AT_FDCWD for a root given as a path. */
static int plain_exec_at(int fd, const char *name, const struct stat *seen)
{
    int p = openat(fd, name, O_PATH | O_NOFOLLOW | O_CLOEXEC);
    if (p < 0)
        return errno == ENOENT; /* gone since listed, as for the listing */
    struct stat now;
    int plain = 0;
    if (fstat(p, &now) == 0 && S_ISREG(now.st_mode) && now.st_dev == seen->st_dev &&
        now.st_ino == seen->st_ino && !(now.st_mode & SETID)) {
        char path[64];
        snprintf(path, sizeof path, "/proc/self/fd/%d", p);
        plain = getxattr(path, "security.capability", NULL, 0) < 0 &&
                (errno == ENODATA || errno == ENOTSUP);
    }
    close(p);
    return plain;
}

/* 1: the regular file `name` in `fd`, listed as `st`, needs no scan: no
 * set-id bit, and not executable or without file capabilities. */
static int plain_file(int fd, const char *name, const struct stat *st)
{
    if (st->st_mode & SETID)
        return 0;
    return !(st->st_mode & EXEC) || plain_exec_at(fd, name, st);
}

/* 1: nothing under the directory `fd` to scan; 0: something, or no
 * answer.  Listed with getdents64 directly: opendir's allocation and its
 * fstat and fcntl are three more calls per directory. */
static int plain_dir(int fd, int depth, struct budget *b)
{
    char buf[LISTING] __attribute__((aligned(8)));
    for (;;) {
        long n = syscall(SYS_getdents64, fd, buf, sizeof buf);
        if (n == 0)
            return 1;
        if (n < 0)
            return 0;
        for (long at = 0; at < n;) {
            struct entry64 *e = (struct entry64 *)(buf + at);
            at += e->d_reclen;
            const char *name = e->d_name;
            if (name[0] == '.' && (!name[1] || (name[1] == '.' && !name[2])))
                continue;
            if (--b->entries < 0)
                return 0;
            unsigned char type = e->d_type;
            if (type == DT_UNKNOWN || type == DT_REG) {
                struct stat st;
                if (fstatat(fd, name, &st, AT_SYMLINK_NOFOLLOW) < 0) {
                    if (errno == ENOENT)
                        continue;
                    return 0;
                }
                if (S_ISREG(st.st_mode)) {
                    if (!plain_file(fd, name, &st))
                        return 0;
                    continue;
                }
                type = S_ISDIR(st.st_mode) ? DT_DIR : DT_LNK; /* DT_LNK: any other kind */
            }
            if (type != DT_DIR)
                continue; /* a link is never followed; other kinds are not scanned */
            if (depth == 0)
                return 0; /* too deep to answer here: the scan goes to any depth */
            int child = openat(fd, name, DIR_FLAGS);
            if (child < 0) {
                if (errno == ENOENT)
                    continue;
                return 0; /* ELOOP (replaced by a link), EACCES...: the scan reports it */
            }
            int plain = plain_dir(child, depth - 1, b);
            close(child);
            if (!plain)
                return 0;
        }
    }
}

/* `roots`: NUL-terminated host paths one after the other, an empty one
 * ends them.  See the top of the file. */
int hm_outputs_plain(const char *roots, int max_depth, long max_entries)
{
    struct budget b = {max_entries};
    if (max_depth < 0)
        return 0;
    for (const char *root = roots; *root; root += strlen(root) + 1) {
        /* A directory (the usual root) is opened at once; a file or a
         * link fails that with ENOTDIR or ELOOP and is looked at then. */
        int fd = open(root, DIR_FLAGS);
        if (fd >= 0) {
            int plain = plain_dir(fd, max_depth, &b);
            close(fd);
            if (!plain)
                return 0;
            continue;
        }
        if (errno == ENOENT)
            continue;
        if (errno != ENOTDIR && errno != ELOOP)
            return 0;
        struct stat st;
        if (lstat(root, &st) < 0) {
            if (errno == ENOENT)
                continue;
            return 0;
        }
        if (S_ISREG(st.st_mode) && !plain_file(AT_FDCWD, root, &st))
            return 0;
        if (S_ISDIR(st.st_mode))
            return 0; /* a directory again since: no answer */
    }
    return 1;
}
