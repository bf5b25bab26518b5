/*
 * hermetic_macos.h: the C interface of the macOS core (sandbox.c).
 *
 * The child applies a generated SBPL profile to itself with
 * sandbox_init_with_parameters() just before exec, so the profile's text
 * stays constant per policy shape and the spec's paths travel as
 * parameters (hermetic/platforms/macos_sbpl.py).
 */
#ifndef HERMETIC_MACOS_H
#define HERMETIC_MACOS_H

/* cdef-begin */

struct hm_mac_rlimit {
    int resource;
    unsigned long long cur;
    unsigned long long max;
};

/* Starts the action; returns its pid (the leader of a new session, so
 * its process group is the sandbox), or -1 with the reason in err: the
 * sandbox's own message when the profile was refused, else the failing
 * step and errno.  params is NULL-terminated, KEY, VALUE, KEY, VALUE... */
int hm_mac_spawn(const char *const *exec_paths, int n_exec_paths, char *const *argv,
                 char *const *envp, const char *cwd, const char *profile,
                 const char *const *params, int stdin_fd, int stdout_fd, int stderr_fd,
                 const struct hm_mac_rlimit *rlimits, int n_rlimits, char *err,
                 unsigned long err_size);

/* cdef-end */

#endif
