/*
 * probe.c: what this kernel offers, asked without side effects.  Each
 * function returns 0 (or a positive version) when the feature is there and
 * -errno when it is not.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <stddef.h>
#include <sys/syscall.h>
#include <unistd.h>

#include "../hermetic.h"

#include "kernel_compat.h"

/* A system call that exists fails on these bad arguments with something
 * other than ENOSYS. */
static int exists(long r)
{
    return r < 0 && errno == ENOSYS ? -ENOSYS : 0;
}

int hm_probe_landlock_abi(void)
{
    /* LANDLOCK_CREATE_RULESET_VERSION = 1 */
    long r = syscall(SYS_landlock_create_ruleset, NULL, 0, 1U);
    return r < 0 ? -errno : (int)r;
}

int hm_probe_clone3(void)
{
    return exists(syscall(SYS_clone3, NULL, 0));
}

int hm_probe_mount_setattr(void)
{
    return exists(syscall(SYS_mount_setattr, -1, "", 0, NULL, 0));
}
