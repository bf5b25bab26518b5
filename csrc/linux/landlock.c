/*
 * landlock.c: the action's Landlock ruleset, restricted onto itself after
 * no_new_privs and before seccomp.
 *
 * Like every child-side file (see child.c), this one runs in the caller's
 * memory: raw system calls over buffers the caller formatted, no libc.
 */
#define _GNU_SOURCE
#include <errno.h>

#include "internal.h"
#include "rawsys.h"

/* Landlock: the plan's rules, everything else the ruleset handles denied.
 * Needs no_new_privs (or CAP_SYS_ADMIN), so it comes after that. */
long hm__apply_landlock(const struct hm_plan *p, int *failed_rule)
{
    struct hm_ruleset_attr attr = {p->landlock_fs, p->landlock_net, p->landlock_scoped};
    /* The struct grew with the ABI: pass only what this kernel knows. */
    unsigned long size = p->landlock_abi >= 6 ? 24 : p->landlock_abi >= 4 ? 16 : 8;
    long ruleset = HM_SYS3(SYS_landlock_create_ruleset, &attr, size, 0);
    if (ruleset < 0)
        return ruleset;
    long r = 0;
    for (int i = 0; i < p->n_landlock_rules && r == 0; i++) {
        struct hm_path_beneath rule;
        rule.allowed_access = p->landlock_rules[i].access & p->landlock_fs;
        /* No symlinks, as for the binds: one planted in an output by an
         * earlier action must not redirect a rule. */
        long fd = hm__open_nofollow(p->landlock_rules[i].path);
        if (fd < 0) {
            r = fd;
        } else {
            rule.parent_fd = (int)fd;
            r = HM_SYS4(SYS_landlock_add_rule, ruleset, HM_LANDLOCK_RULE_PATH_BENEATH, &rule, 0);
            HM_SYS1(SYS_close, fd);
        }
        if (r < 0)
            *failed_rule = i;
    }
    if (r == 0)
        r = HM_SYS2(SYS_landlock_restrict_self, ruleset, 0);
    HM_SYS1(SYS_close, ruleset);
    return r;
}
