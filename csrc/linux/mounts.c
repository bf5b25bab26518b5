/*
 * mounts.c: the sandbox's filesystem.  The op executor (one switch over
 * the plan's op list), the root built from the host's (private, a tmpfs,
 * pivot_root, the ops, the old root detached, read-only) or copied from a
 * prepared mount namespace, and the process that prepares one.
 *
 * Like every child-side file (see child.c), this one runs in the caller's
 * memory: raw system calls over buffers the caller formatted, no libc.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <sched.h>
#include <sys/mount.h>

#include "internal.h"
#include "rawsys.h"

/* Resolve a path without following any symlink: the plan was made from
 * canonical paths, so a symlink met now was planted since (by an earlier
 * action in its outputs, say) and must not redirect a mount. */
long hm__open_nofollow(const char *path)
{
    struct hm_open_how how = {O_PATH | O_CLOEXEC, 0, HM_RESOLVE_NO_SYMLINKS};
    return HM_SYS4(SYS_openat2, AT_FDCWD, path, &how, sizeof how);
}

/* A detached copy of the mount tree at path (recursive), the path
 * resolved without symlinks. */
static long clone_tree(const char *path)
{
    long at = hm__open_nofollow(path);
    if (at < 0)
        return at;
    long tree = HM_SYS3(SYS_open_tree, at, "",
                        HM_OPEN_TREE_CLONE | O_CLOEXEC | HM_AT_RECURSIVE | HM_AT_EMPTY_PATH);
    HM_SYS1(SYS_close, at);
    return tree;
}

/* A detached tree attached at dst (resolved without symlinks). */
static long attach_tree(long tree, const char *dst)
{
    long at = hm__open_nofollow(dst);
    if (at < 0)
        return at;
    long r = HM_SYS5(SYS_move_mount, tree, "", at, "",
                     HM_MOVE_MOUNT_F_EMPTY_PATH | HM_MOVE_MOUNT_T_EMPTY_PATH);
    HM_SYS1(SYS_close, at);
    return r;
}

/* A bind as a detached copy of the source tree: flagged (read-only,
 * nosuid, nodev, recursively) before it is attached, then moved onto the
 * target.  Each path is resolved once, without symlinks, and nothing is
 * visible at the target until the flags are on. */
static long bind_tree(const struct hm_op *op)
{
    struct hm_mount_attr attr = {HM_MOUNT_ATTR_NOSUID, 0, 0, 0};
    if (!(op->flags & HM_BIND_DEVICES))
        attr.attr_set |= HM_MOUNT_ATTR_NODEV;
    if (op->flags & HM_BIND_RDONLY)
        attr.attr_set |= HM_MOUNT_ATTR_RDONLY;
    if (op->flags & HM_BIND_SYSTEM) {
        long r = HM_SYS5(SYS_mount, op->src, op->dst, 0, MS_BIND | MS_REC, 0);
        if (r == 0)
            r = HM_SYS5(SYS_mount_setattr, AT_FDCWD, op->dst, HM_AT_RECURSIVE, &attr, sizeof attr);
        return r;
    }
    long tree = clone_tree(op->src);
    if (tree < 0)
        return tree;
    long r = HM_SYS5(SYS_mount_setattr, tree, "", HM_AT_EMPTY_PATH | HM_AT_RECURSIVE, &attr,
                     sizeof attr);
    if (r == 0)
        r = attach_tree(tree, op->dst);
    HM_SYS1(SYS_close, tree);
    return r;
}

/* A detached copy of the mount tree at dst (HM_OP_GRAB): taken from the
 * prepared namespace's copy before a fresh mount covers it. */
static long grab_tree(const struct hm_op *op, long *slots)
{
    if (op->flags < 0 || op->flags >= HM_MAX_GRABS)
        return -EINVAL;
    long tree = clone_tree(op->dst);
    if (tree < 0)
        return tree;
    slots[op->flags] = tree;
    return 0;
}

/* The copy in a slot attached at dst (HM_OP_PLACE); its flags are those of
 * the mount it was copied from. */
static long place_tree(const struct hm_op *op, long *slots)
{
    if (op->flags < 0 || op->flags >= HM_MAX_GRABS || slots[op->flags] < 0)
        return -EINVAL;
    long r = attach_tree(slots[op->flags], op->dst);
    HM_SYS1(SYS_close, slots[op->flags]);
    slots[op->flags] = -1;
    return r;
}

static long run_op(const struct hm_op *op, long *slots)
{
    long r;
    switch ((enum hm_op_kind)op->kind) {
    case HM_OP_MKDIR:
        r = HM_SYS3(SYS_mkdirat, AT_FDCWD, op->dst, op->mode);
        return r == -EEXIST ? 0 : r;
    case HM_OP_MKFILE:
        r = HM_SYS4(SYS_openat, AT_FDCWD, op->dst, O_WRONLY | O_CREAT | O_CLOEXEC | O_NOCTTY,
                    op->mode);
        if (r < 0)
            return r;
        HM_SYS1(SYS_close, r);
        return 0;
    case HM_OP_SYMLINK:
        return HM_SYS3(SYS_symlinkat, op->src, AT_FDCWD, op->dst);
    case HM_OP_BIND:
        return bind_tree(op);
    case HM_OP_TMPFS:
        return HM_SYS5(SYS_mount, "tmpfs", op->dst, "tmpfs", (unsigned long)op->flags, op->data);
    case HM_OP_PROC:
        return HM_SYS5(SYS_mount, "proc", op->dst, "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC, 0);
    case HM_OP_REMOUNT_RO:
        return HM_SYS5(SYS_mount, 0, op->dst, 0,
                       MS_REMOUNT | MS_BIND | MS_RDONLY | (unsigned long)op->flags, 0);
    case HM_OP_MKNOD:
        return HM_SYS4(SYS_mknodat, AT_FDCWD, op->dst, op->mode, (unsigned int)op->flags);
    case HM_OP_GRAB:
        return grab_tree(op, slots);
    case HM_OP_PLACE:
        return place_tree(op, slots);
    }
    return -EINVAL;
}

/* The op list in order; copies still held when one fails are dropped.
 * A failure names op first + i (first: where this list sits in the whole,
 * see hm_plan.late_ops). */
int hm__run_ops(const struct hm_op *ops, int n, int first, struct hm_fail *f)
{
    long slots[HM_MAX_GRABS];
    for (int i = 0; i < HM_MAX_GRABS; i++)
        slots[i] = -1;
    int rc = 0;
    for (int i = 0; i < n && rc == 0; i++) {
        long r = run_op(&ops[i], slots);
        if (r < 0)
            rc = hm__failed(f, HM_STAGE_OP, first + i, r);
    }
    for (int i = 0; i < HM_MAX_GRABS; i++)
        if (slots[i] >= 0)
            HM_SYS1(SYS_close, slots[i]);
    return rc;
}

/* The sandbox's filesystem from the host's, in this process's new mount
 * namespace: private, a tmpfs root, pivot_root, the op list, the old root
 * detached, the root read-only. */
int hm__build_root(const struct hm_plan *p, struct hm_proc *proc, struct hm_fail *f)
{
    /* Private first, so nothing below propagates to the host. */
    long r = HM_SYS5(SYS_mount, 0, "/", 0, MS_REC | MS_PRIVATE, 0);
    if (r < 0)
        return hm__failed(f, HM_STAGE_MOUNT_PRIVATE, -1, r);
    /* The new root is a tmpfs mounted on the staging directory, then made
     * the root with the host's root kept at oldroot until every bind has
     * taken its source from it.  pivot_root detaches the tmpfs from the
     * staging directory, so sources under it stay reachable. */
    r = HM_SYS5(SYS_mount, "tmpfs", p->staging, "tmpfs", MS_NOSUID | MS_NODEV, "mode=0755");
    if (r < 0)
        return hm__failed(f, HM_STAGE_ROOT_TMPFS, -1, r);
    r = HM_SYS1(SYS_chdir, p->staging);
    if (r == 0)
        r = HM_SYS3(SYS_mkdirat, AT_FDCWD, p->oldroot + 1, 0700);
    if (r == 0)
        r = HM_SYS2(SYS_pivot_root, ".", p->oldroot + 1);
    if (r == 0)
        r = HM_SYS1(SYS_chdir, "/");
    if (r < 0)
        return hm__failed(f, HM_STAGE_PIVOT_ROOT, -1, r);
    if (hm__run_ops(p->ops, p->n_ops, 0, f) < 0)
        return -1;
    if (proc)
        hm__stamp(proc, p->profile, HM_STAMP_OPS);
    /* Only now is the host unreachable. */
    r = HM_SYS2(SYS_umount2, p->oldroot, MNT_DETACH);
    if (r == 0)
        r = HM_SYS3(SYS_unlinkat, AT_FDCWD, p->oldroot, AT_REMOVEDIR);
    if (r < 0)
        return hm__failed(f, HM_STAGE_DETACH_OLDROOT, -1, r);
    /* Read-only last: the ops above create mount points in the root. */
    r = HM_SYS5(SYS_mount, 0, "/", 0, MS_REMOUNT | MS_BIND | MS_RDONLY | MS_NOSUID | MS_NODEV, 0);
    if (r < 0)
        return hm__failed(f, HM_STAGE_ROOT_READONLY, -1, r);
    return 0;
}

/* The sandbox's filesystem as a private copy of a prepared mount namespace
 * (hm_mntns_create): joining it makes its root this process's root, the
 * copy keeps each action's mounts from the others', and the op list adds
 * what each action gets fresh (/proc, the private /tmp). */
int hm__copy_root(const struct hm_plan *p, struct hm_proc *proc, struct hm_fail *f)
{
    long r = HM_SYS2(SYS_setns, HM_FD_MNTNS, CLONE_NEWNS);
    if (r == 0)
        r = HM_SYS1(SYS_unshare, CLONE_NEWNS);
    HM_SYS1(SYS_close, HM_FD_MNTNS);
    if (r < 0)
        return hm__failed(f, HM_STAGE_MNTNS, -1, r);
    if (hm__run_ops(p->ops, p->n_ops, 0, f) < 0)
        return -1;
    hm__stamp(proc, p->profile, HM_STAMP_OPS);
    return 0;
}

/* Makes a prepared mount namespace (hm_mntns_create): the root built from
 * plan->ops, in a namespace of its own that a descriptor keeps.  Cloned
 * with CLONE_FILES, so the descriptor lands in the caller's table, and
 * CLONE_VFORK, so the caller waits. */
int hm__mntns_main(void *argp)
{
    struct hm_mntns_args *a = argp;
    struct hm_fail f = {0, -1, 0};
    /* The plan's modes exactly: this process has its own fs_struct. */
    HM_SYS1(SYS_umask, 0);
    long fd = HM_SYS4(SYS_openat, AT_FDCWD, "/proc/self/ns/mnt", O_RDONLY | O_CLOEXEC, 0);
    if (fd < 0) {
        hm__failed(&f, HM_STAGE_MNTNS, -1, fd);
    } else if (hm__build_root(a->plan, 0, &f) < 0) {
        HM_SYS1(SYS_close, fd);
        fd = -1;
    }
    a->fd = (int)fd;
    a->stage = f.stage;
    a->op_index = f.op_index;
    a->err = (int)f.err;
    return 0;
}
