/*
 * creds.c: the sandbox's credentials.  pid 1 writes the id maps of the new
 * user namespace; the action sets no_new_privs and drops every capability
 * before Landlock and seccomp.
 *
 * Like every child-side file (see child.c), this one runs in the caller's
 * memory: raw system calls over buffers the caller formatted, no libc.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <linux/capability.h>
#include <sys/prctl.h>

#include "internal.h"
#include "rawsys.h"

/* The id maps of the new user namespace (plan.uid_map: none when pid 1
 * runs as the caller's own ids).  setgroups must be denied before an
 * unprivileged gid_map write.  0, or -1 with *f filled. */
int hm__write_id_maps(const struct hm_plan *p, struct hm_fail *f)
{
    if (!p->uid_map)
        return 0;
    long r = hm__write_file("/proc/self/setgroups", "deny");
    if (r < 0 && r != -ENOENT)
        return hm__failed(f, HM_STAGE_SETGROUPS, -1, r);
    r = hm__write_file("/proc/self/uid_map", p->uid_map);
    if (r < 0)
        return hm__failed(f, HM_STAGE_UID_MAP, -1, r);
    r = hm__write_file("/proc/self/gid_map", p->gid_map);
    if (r < 0)
        return hm__failed(f, HM_STAGE_GID_MAP, -1, r);
    return 0;
}

/* no_new_privs: exec grants no privileges from now on (set-id bits, file
 * capabilities).  Required by an unprivileged seccomp and by Landlock. */
long hm__no_new_privs(void)
{
    return HM_SYS5(SYS_prctl, PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0);
}

long hm__drop_capabilities(void)
{
    /* The bounding set first: dropping from it needs CAP_SETPCAP, which
     * the capset() below removes.  An empty bounding set also means that
     * exec of anything as uid 0 inside gains nothing.  Each drop commits
     * new credentials (about 2 us); a capability the set no longer holds
     * (one spawned by hermetic's own threads, see hm_spawner_thread_init)
     * costs only the read. */
    for (long cap = 0; cap < 64; cap++) {
        long r = HM_SYS2(SYS_prctl, PR_CAPBSET_READ, cap);
        if (r == -EINVAL)
            break;
        if (r == 1)
            r = HM_SYS2(SYS_prctl, PR_CAPBSET_DROP, cap);
        if (r < 0)
            return r;
    }
    long r = HM_SYS5(SYS_prctl, PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0);
    if (r < 0 && r != -EINVAL)
        return r;
    struct __user_cap_header_struct hdr = {_LINUX_CAPABILITY_VERSION_3, 0};
    struct __user_cap_data_struct data[2] = {{0, 0, 0}, {0, 0, 0}};
    return HM_SYS2(SYS_capset, &hdr, data);
}
