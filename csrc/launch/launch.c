/* hermetic-launch: hand one action to the per-user daemon, `hermetic serve`.
 *
 *     hermetic-launch [--spec FILE] [--env-pass NAME]... [--] COMMAND [ARGS...]
 *
 * Build tools start one compiler per action through a launcher
 * (CC="hermetic-launch gcc", CMAKE_<LANG>_COMPILER_LAUNCHER); an interpreter
 * started per action would cost more than the action's sandbox, so this
 * client is native and small: it builds one request, passes its own stdin,
 * stdout and stderr to the daemon, waits for the 8-byte reply and exits with
 * the status it carries.  docs/launch-protocol.md is the contract; this file
 * implements the client's side of it and nothing more.
 *
 * Exit statuses of the launcher's own: 123 for a bad command line or a
 * request that cannot be built (as `hermetic run`), 125 when the daemon
 * cannot be reached, started or used, or dies before replying.  Each failure
 * is one line on stderr, starting "hermetic-launch: ".
 *
 * Portable POSIX: it builds on Linux and macOS (Unix sockets and SCM_RIGHTS
 * exist on both; only finding the launcher's own executable differs).
 * Windows has no launcher: the build (setup.py) does not compile it there.
 *
 * Style: helpers return 0 or -errno; the process is single-threaded and
 * short-lived, so main() may exit, and the payload is one allocation sized
 * up front.  Signal dispositions are left as inherited: Ctrl-C or make's
 * SIGTERM ends the launcher, its end of the connection closes, and the daemon
 * then kills the action's whole sandbox (the protocol's cancellation).
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE /* syscall() and SYS_close_range on glibc */
#endif

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <poll.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#ifdef __APPLE__
#include <mach-o/dyld.h> /* _NSGetExecutablePath: macOS has no /proc/self/exe */
#endif
#ifdef __linux__
#include <sys/syscall.h>
#include <sys/uio.h> /* process_vm_writev: the proof step */
#endif

#ifndef HERMETIC_VERSION
#define HERMETIC_VERSION "unknown"
#endif

#define EXIT_USAGE 123 /* bad command line or request, as `hermetic run` */
#define EXIT_SETUP 125 /* the daemon cannot be reached or used */

/* The protocol's limit on a request's payload. */
#define MAX_PAYLOAD (16u << 20)
/* How long the client keeps trying to reach a daemon it started. */
#define START_TIMEOUT_NS (10LL * 1000000000LL)
/* Between two attempts to connect while a daemon starts. */
#define RETRY_NS (5LL * 1000000LL)
/* How long the client waits for the daemon's challenge (the daemon sends it
 * as it accepts; far more than that takes on a loaded machine). */
#define CHALLENGE_TIMEOUT_MS 10000
/* The challenge: magic, the address of the daemon's buffer, the nonce. */
#define NONCE_BYTES 16
#define CHALLENGE_BYTES (4 + 8 + NONCE_BYTES)

#ifdef MSG_NOSIGNAL
/* A daemon that went away turns a write into EPIPE, reported as one line,
 * instead of a SIGPIPE that would end the launcher without a word.  This
 * changes no signal disposition. */
#define SEND_FLAGS MSG_NOSIGNAL
#else
#define SEND_FLAGS 0 /* macOS: SO_NOSIGPIPE on the socket instead */
#endif

static const char USAGE[] =
    "usage: hermetic-launch [--spec FILE] [--env-pass NAME]... [--] COMMAND [ARGS...]\n"
    "\n"
    "Run COMMAND in a hermetic sandbox through the per-user daemon (hermetic serve),\n"
    "with this process's stdin, stdout, stderr and working directory, and exit with\n"
    "its status.  The daemon is started when none is running.\n"
    "\n"
    "  --spec FILE      the sandbox's spec (JSON); default: $HERMETIC_SPEC\n"
    "  --env-pass NAME  pass the variable NAME of this environment to the action\n"
    "                   (repeatable; also $HERMETIC_ENV_PASS, names separated by ':');\n"
    "                   a name that is not set here is not passed\n"
    "  --version        print the version and exit\n"
    "  --help           print this help and exit\n"
    "\n"
    "The daemon's socket is DIR/serve.sock, DIR being $HERMETIC_RUNTIME_DIR, else\n"
    "$XDG_RUNTIME_DIR/hermetic, else HOME/.cache/hermetic/run (HOME: $HOME, else\n"
    "the account's home in /etc/passwd).\n"
    "\n"
    "Exit status: the action's own; 128+N when signal N ended it; 123 bad command\n"
    "line or spec, 124 timeout, 125 setup failure or no daemon, 126 not executable,\n"
    "127 not found (see docs/launch-protocol.md).\n";

/* -- output ---------------------------------------------------------------- */

static int write_all(int fd, const void *buf, size_t len)
{
    const char *p = buf;
    while (len > 0) {
        ssize_t n = write(fd, p, len);
        if (n < 0) {
            int e = errno;
            if (e == EINTR)
                continue;
            return -e;
        }
        p += n;
        len -= (size_t)n;
    }
    return 0;
}

/* One line on stderr, "hermetic-launch: " then the NULL-terminated parts,
 * in one write(2): make -j interleaves the output of parallel actions, and a
 * line written in pieces could be torn apart there.  No stdio, so nothing is
 * left in a buffer when the launcher exits. */
static void say(const char *first, ...)
{
    char line[4096];
    size_t len = 0;
    const char *part = "hermetic-launch: ";
    va_list ap;

    va_start(ap, first);
    for (int i = 0; part != NULL; i++) {
        size_t n = strlen(part);
        if (n > sizeof line - 1 - len)
            n = sizeof line - 1 - len;
        memcpy(line + len, part, n);
        len += n;
        part = i == 0 ? first : va_arg(ap, const char *);
    }
    va_end(ap);
    line[len++] = '\n';
    (void)write_all(STDERR_FILENO, line, len);
}

static const char *errstr(int neg_errno)
{
    return strerror(-neg_errno);
}

static void print_text(const char *text)
{
    (void)write_all(STDOUT_FILENO, text, strlen(text));
}

/* -- the command line ------------------------------------------------------- */

struct request_args {
    const char *spec;      /* as given; made absolute when the payload is built */
    const char **env_pass; /* names, deduplicated */
    size_t n_env_pass;
    char *const *argv; /* the command and its arguments */
    size_t argc;
};

static int is_env_name(const char *s)
{
    return s[0] != '\0' && strchr(s, '=') == NULL;
}

/* Adds NAME once: a name given twice (an option and the variable) would
 * otherwise reach the daemon as two E records for one variable. */
static void add_env_name(struct request_args *r, const char *name)
{
    for (size_t i = 0; i < r->n_env_pass; i++)
        if (strcmp(r->env_pass[i], name) == 0)
            return;
    r->env_pass[r->n_env_pass++] = name;
}

static int option_value(const char *arg, const char *name, int argc, char **argv, int *i,
                        const char **value)
{
    size_t n = strlen(name);
    if (strncmp(arg, name, n) != 0)
        return 0;
    if (arg[n] == '=') {
        *value = arg + n + 1;
        return 1;
    }
    if (arg[n] != '\0')
        return 0;
    if (*i + 1 >= argc) {
        say(name, " needs a value (see hermetic-launch --help)", NULL);
        exit(EXIT_USAGE);
    }
    *value = argv[++*i];
    return 1;
}

/* Parses options up to the command: the first argument that is not an
 * option, or the one after "--", so that `hermetic-launch gcc -c x.c` works
 * as a launcher prefix does.  Exits on a usage error. */
static void parse_args(int argc, char **argv, struct request_args *r)
{
    int i;

    /* At most one name per argument, plus those of HERMETIC_ENV_PASS. */
    size_t cap = (size_t)argc;
    const char *from_env = getenv("HERMETIC_ENV_PASS");
    if (from_env != NULL)
        for (const char *p = from_env; *p != '\0'; p++)
            cap += *p == ':';
    cap += 1;
    r->env_pass = malloc(cap * sizeof *r->env_pass);
    if (r->env_pass == NULL) {
        say("out of memory", NULL);
        exit(EXIT_SETUP);
    }
    r->n_env_pass = 0;
    r->spec = NULL;

    for (i = 1; i < argc; i++) {
        const char *arg = argv[i];
        const char *value;
        if (strcmp(arg, "--") == 0) {
            i++;
            break;
        }
        if (arg[0] != '-' || arg[1] == '\0')
            break;
        if (strcmp(arg, "--help") == 0 || strcmp(arg, "-h") == 0) {
            print_text(USAGE);
            exit(0);
        }
        if (strcmp(arg, "--version") == 0) {
            print_text("hermetic-launch " HERMETIC_VERSION "\n");
            exit(0);
        }
        if (option_value(arg, "--spec", argc, argv, &i, &value)) {
            r->spec = value;
            continue;
        }
        if (option_value(arg, "--env-pass", argc, argv, &i, &value)) {
            if (!is_env_name(value)) {
                say("--env-pass: '", value, "' is not a variable name", NULL);
                exit(EXIT_USAGE);
            }
            add_env_name(r, value);
            continue;
        }
        say("unknown option ", arg, " (see hermetic-launch --help)", NULL);
        exit(EXIT_USAGE);
    }
    if (i >= argc) {
        say("no command given (hermetic-launch [options] [--] COMMAND [ARGS...])", NULL);
        exit(EXIT_USAGE);
    }
    r->argv = argv + i;
    r->argc = (size_t)(argc - i);

    if (r->spec == NULL)
        r->spec = getenv("HERMETIC_SPEC");
    if (r->spec == NULL || r->spec[0] == '\0') {
        say("no spec: give --spec FILE or set HERMETIC_SPEC", NULL);
        exit(EXIT_USAGE);
    }

    /* HERMETIC_ENV_PASS: names separated by ':'.  Empty names (a leading,
     * trailing or doubled ':') name nothing and are skipped, as a build
     * script that joins an empty list would make them. */
    if (from_env != NULL) {
        char *copy = strdup(from_env);
        if (copy == NULL) {
            say("out of memory", NULL);
            exit(EXIT_SETUP);
        }
        for (char *save = NULL, *name = strtok_r(copy, ":", &save); name != NULL;
             name = strtok_r(NULL, ":", &save)) {
            if (!is_env_name(name)) {
                say("HERMETIC_ENV_PASS: '", name, "' is not a variable name", NULL);
                exit(EXIT_USAGE);
            }
            add_env_name(r, name);
        }
        /* copy stays allocated: env_pass points into it until exit. */
    }
}

/* -- the payload ------------------------------------------------------------ */

struct buf {
    char *data;
    size_t len;
};

static void put_record(struct buf *b, char tag, const char *s1, const char *s2, const char *s3)
{
    b->data[b->len++] = tag;
    for (const char *parts[3] = {s1, s2, s3}, **p = parts; p < parts + 3; p++) {
        if (*p == NULL)
            continue;
        size_t n = strlen(*p);
        memcpy(b->data + b->len, *p, n);
        b->len += n;
    }
    b->data[b->len++] = '\0';
}

static size_t record_size(const char *s1, const char *s2, const char *s3)
{
    return 2 + strlen(s1) + (s2 ? strlen(s2) : 0) + (s3 ? strlen(s3) : 0);
}

/* The whole request (magic, length, payload) in one buffer, so that it goes
 * out in as few writes as the socket takes.  A relative spec path is made
 * absolute against the working directory: the daemon runs elsewhere.
 * Exits on an error. */
static struct buf build_request(const struct request_args *r)
{
    char *cwd = getcwd(NULL, 0); /* allocates: glibc, musl and macOS all do */
    if (cwd == NULL) {
        int e = errno;
        say("cannot get the working directory: ", strerror(e), NULL);
        exit(EXIT_SETUP);
    }
    const char *spec_dir = r->spec[0] == '/' ? NULL : cwd;
    const char *spec_sep = spec_dir == NULL ? NULL : strcmp(cwd, "/") == 0 ? "" : "/";

    /* The variables to pass: a name not set in this environment is simply
     * not sent (not sent as empty, not an error).  That is what `env -i`
     * users and nsjail's `-E NAME` expect: a list such as
     * SOURCE_DATE_EPOCH:CCACHE_DIR can be exported once for a whole build
     * while each variable is set only where it applies. */
    const char **values = malloc((r->n_env_pass + 1) * sizeof *values);
    if (values == NULL) {
        say("out of memory", NULL);
        exit(EXIT_SETUP);
    }

    size_t need = record_size(spec_dir ? spec_dir : "", spec_sep, r->spec);
    need += record_size(cwd, NULL, NULL);
    for (size_t i = 0; i < r->argc; i++) {
        need += record_size(r->argv[i], NULL, NULL);
        if (need > MAX_PAYLOAD)
            break; /* no overflow below, whatever the arguments' sizes */
    }
    for (size_t i = 0; i < r->n_env_pass && need <= MAX_PAYLOAD; i++) {
        values[i] = getenv(r->env_pass[i]);
        if (values[i] != NULL)
            need += record_size(r->env_pass[i], "=", values[i]);
    }
    if (need > MAX_PAYLOAD) {
        say("the request is larger than the daemon accepts (16 MiB of arguments, "
            "variables and paths)",
            NULL);
        exit(EXIT_USAGE);
    }

    struct buf b = {malloc(8 + need), 8};
    if (b.data == NULL) {
        say("out of memory", NULL);
        exit(EXIT_SETUP);
    }
    memcpy(b.data, "HML3", 4);
    for (int k = 0; k < 4; k++) /* little-endian, whatever the host's order */
        b.data[4 + k] = (char)((need >> (8 * k)) & 0xff);
    put_record(&b, 'S', spec_dir, spec_sep, r->spec);
    put_record(&b, 'C', cwd, NULL, NULL);
    for (size_t i = 0; i < r->argc; i++)
        put_record(&b, 'A', r->argv[i], NULL, NULL);
    for (size_t i = 0; i < r->n_env_pass; i++)
        if (values[i] != NULL)
            put_record(&b, 'E', r->env_pass[i], "=", values[i]);
    free(values);
    free(cwd);
    return b;
}

/* -- stdio ------------------------------------------------------------------ */

/* A closed stdin, stdout or stderr is opened on /dev/null, in its own slot,
 * before anything else opens a descriptor.  Two reasons: the protocol sends
 * /dev/null for a stream the client does not have open, and a socket or
 * pipe opened later must not land in slot 0-2 and be sent as the action's
 * stdio. */
static int fill_stdio(void)
{
    /* One poll says which of the three is closed (POLLNVAL): a system
     * call instead of three, on every action. */
    struct pollfd p[3] = {{0, 0, 0}, {1, 0, 0}, {2, 0, 0}};
    int r;
    do
        r = poll(p, 3, 0);
    while (r < 0 && errno == EINTR);
    if (r < 0)
        return -errno;
    for (int fd = 0; fd <= 2; fd++) {
        if (!(p[fd].revents & POLLNVAL))
            continue;
        int got = open("/dev/null", fd == 0 ? O_RDONLY : O_WRONLY);
        if (got < 0)
            return -errno;
        if (got != fd) { /* cannot happen: open takes the lowest free slot */
            close(got);
            return -EBADF;
        }
    }
    return 0;
}

/* -- the runtime directory --------------------------------------------------- */

struct runtime {
    char dir[PATH_MAX];
    struct sockaddr_un addr; /* DIR/serve.sock, for messages and the length check */
    int dirfd;               /* DIR, opened once and checked (check_runtime_dir) */
    struct sockaddr_un via;  /* the socket's name through dirfd (try_connect) */
    int from_home;           /* DIR is below $HOME: its parents may need making */
};

static int join(char *dst, size_t size, const char *a, const char *b)
{
    size_t la = strlen(a), lb = strlen(b);
    if (la + lb + 1 > size)
        return -ENAMETOOLONG;
    memcpy(dst, a, la);
    memcpy(dst + la, b, lb + 1);
    return 0;
}

/* The home directory /etc/passwd gives uid, for a launcher started without
 * HOME (a scrubbed environment).  The file itself, not getpwuid: the
 * launcher may be linked statically, where NSS would need the shared
 * libraries of the system's C library; the daemon reads the same file. */
static int passwd_home(uid_t uid, char *out, size_t size)
{
    static char text[1 << 20];
    int fd = open("/etc/passwd", O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return -errno;
    size_t len = 0;
    for (;;) {
        ssize_t n = read(fd, text + len, sizeof text - 1 - len);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0)
            break;
        len += (size_t)n;
    }
    close(fd);
    text[len] = '\0';
    /* name:password:UID:GID:gecos:HOME:shell, one account a line. */
    for (char *line = text, *next; line != NULL && *line != '\0'; line = next) {
        next = strchr(line, '\n');
        if (next != NULL)
            *next++ = '\0';
        char *field[7];
        int n = 0;
        for (char *p = line; n < 7; n++) {
            field[n] = p;
            p = strchr(p, ':');
            if (p == NULL) {
                n++;
                break;
            }
            *p++ = '\0';
        }
        if (n < 6 || field[2][0] == '\0')
            continue;
        char *end;
        errno = 0;
        unsigned long v = strtoul(field[2], &end, 10);
        if (errno != 0 || *end != '\0' || v != (unsigned long)uid)
            continue;
        if (strlen(field[5]) + 1 > size)
            return -ENAMETOOLONG;
        memcpy(out, field[5], strlen(field[5]) + 1);
        return 0;
    }
    return -ENOENT;
}

/* DIR as the protocol defines it.  Exits on an error. */
static void runtime_dir(struct runtime *rt)
{
    const char *own = getenv("HERMETIC_RUNTIME_DIR");
    const char *xdg = getenv("XDG_RUNTIME_DIR");
    int err;

    if (own != NULL && own[0] != '\0') {
        err = join(rt->dir, sizeof rt->dir, own, "");
    } else if (xdg != NULL && xdg[0] != '\0') {
        err = join(rt->dir, sizeof rt->dir, xdg, "/hermetic");
    } else {
        /* Below $HOME, as gpg-agent falls back to its home directory: a
         * name in the shared /tmp (/tmp/hermetic-UID) can be taken first by
         * another user, who would then refuse this user's launcher for
         * good (the sticky /tmp keeps the owner's directory). */
        static char from_passwd[PATH_MAX];
        const char *home = getenv("HOME");
        if ((home == NULL || home[0] != '/') &&
            passwd_home(geteuid(), from_passwd, sizeof from_passwd) == 0)
            home = from_passwd;
        if (home == NULL || home[0] != '/') {
            say("no runtime directory: set XDG_RUNTIME_DIR, HERMETIC_RUNTIME_DIR or HOME", NULL);
            exit(EXIT_SETUP);
        }
        err = join(rt->dir, sizeof rt->dir, home, "/.cache/hermetic/run");
        rt->from_home = 1;
    }
    if (err == 0 && rt->dir[0] != '/') {
        /* Relative, it would name another directory in every working
         * directory (and the daemon refuses it). */
        say("refusing the runtime directory ", rt->dir, ": it is not an absolute path", NULL);
        exit(EXIT_SETUP);
    }
    if (err == 0)
        err = join(rt->addr.sun_path, sizeof rt->addr.sun_path, rt->dir, "/serve.sock");
    if (err < 0) {
        const char *named = own != NULL && own[0] != '\0' ? own : xdg != NULL ? xdg : "";
        say("the runtime directory's socket path is too long for a Unix socket (DIR from ",
            named, ")", NULL);
        exit(EXIT_SETUP);
    }
    rt->addr.sun_family = AF_UNIX;
}

/* What lstat found at DIR: refused, naming DIR, unless it is our own
 * directory, 0700.  Exits on an error. */
static void check_runtime_stat(const struct runtime *rt, const struct stat *st)
{
    const char *why = NULL;
    if (S_ISLNK(st->st_mode))
        why = "is a symbolic link";
    else if (!S_ISDIR(st->st_mode))
        why = "is not a directory";
    else if (st->st_uid != geteuid())
        why = "is owned by another user";
    else if ((st->st_mode & 077) != 0)
        why = "is accessible to group or others (its mode must be 0700)";
    if (why != NULL) {
        say("refusing the runtime directory ", rt->dir, ": it ", why, NULL);
        exit(EXIT_SETUP);
    }
}

/* Makes the parents of a DIR below $HOME (~/.cache, ~/.cache/hermetic),
 * 0700 as the XDG base directory specification asks; existing ones are
 * left as they are (DIR itself is what is checked). */
static void make_home_parents(const struct runtime *rt)
{
    char path[PATH_MAX];
    size_t len = strlen(rt->dir);
    memcpy(path, rt->dir, len + 1);
    for (int level = 0; level < 2; level++) {
        char *slash = strrchr(path, '/');
        if (slash == NULL || slash == path)
            return;
        *slash = '\0';
    }
    /* path is ~/.cache now; then ~/.cache/hermetic. */
    for (int level = 0; level < 2; level++) {
        if (mkdir(path, 0700) < 0 && errno != EEXIST)
            return; /* opening DIR says why */
        path[strlen(path)] = '/';
    }
}

/* Creates DIR when it is missing, then opens it once, with O_NOFOLLOW (a
 * symbolic link is refused, not followed), and checks what it opened: a
 * directory owned by our effective uid with no permission bit for group or
 * others.  The socket is then reached through that descriptor, never by
 * DIR's name again: a directory renamed into DIR's place after the check
 * (by whoever owns DIR's parent) is not the one connected to.  So only this
 * user reaches the socket, and a directory planted by someone else is never
 * trusted with the action's descriptors.  Exits on an error, naming DIR. */
static void check_runtime_dir(struct runtime *rt)
{
    struct stat st;
#ifdef O_PATH
    /* Only a handle (Linux): the socket's lookup below needs search
     * permission on DIR, not read permission. */
    int flags = O_PATH | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC;
#else
    int flags = O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC;
#endif

    /* It exists on every call but the first: open first spares the mkdir
     * (EEXIST) there. */
    rt->dirfd = open(rt->dir, flags);
    if (rt->dirfd < 0 && errno == ENOENT) {
        if (rt->from_home)
            make_home_parents(rt);
        if (mkdir(rt->dir, 0700) == 0) {
            /* A restrictive umask could have left us without access to our
             * own directory; chmod only widens it to 0700, never beyond. */
            if (chmod(rt->dir, 0700) < 0) {
                int e = errno;
                say("cannot set the mode of the runtime directory ", rt->dir, ": ",
                    strerror(e), NULL);
                exit(EXIT_SETUP);
            }
        } else if (errno != EEXIST) {
            int e = errno;
            say("cannot create the runtime directory ", rt->dir, ": ", strerror(e), NULL);
            exit(EXIT_SETUP);
        }
        rt->dirfd = open(rt->dir, flags);
    }
    if (rt->dirfd < 0) {
        int e = errno;
        /* A link (ELOOP) or not a directory (ENOTDIR): lstat names which. */
        if (lstat(rt->dir, &st) == 0)
            check_runtime_stat(rt, &st);
        say("cannot open the runtime directory ", rt->dir, ": ", strerror(e), NULL);
        exit(EXIT_SETUP);
    }
    if (fstat(rt->dirfd, &st) < 0) {
        int e = errno;
        say("cannot examine the runtime directory ", rt->dir, ": ", strerror(e), NULL);
        exit(EXIT_SETUP);
    }
    check_runtime_stat(rt, &st);

    /* try_connect fchdirs to the descriptor and connects to the relative
     * name (there is no connectat).  On Linux /proc/self/fd/N/serve.sock
     * would do without the fchdir, but its lookup through a new process's
     * /proc cost about 15 us more on every action. */
    rt->via.sun_family = AF_UNIX;
    (void)join(rt->via.sun_path, sizeof rt->via.sun_path, "serve.sock", "");
}

/* -- connecting, and starting the daemon ------------------------------------- */

static int64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

static void sleep_ns(int64_t ns)
{
    struct timespec ts = {(time_t)(ns / 1000000000LL), (long)(ns % 1000000000LL)};
    (void)nanosleep(&ts, NULL); /* an early wake only retries sooner */
}

#ifndef SOCK_CLOEXEC
static int set_cloexec(int fd)
{
    int flags = fcntl(fd, F_GETFD);
    if (flags < 0 || fcntl(fd, F_SETFD, flags | FD_CLOEXEC) < 0)
        return -errno;
    return 0;
}
#endif

/* One attempt: the connected socket's descriptor, or -errno. */
static int try_connect(const struct runtime *rt)
{
    /* Close-on-exec: the daemon this launcher may start must not inherit
     * it.  Set atomically where the system can (two system calls fewer on
     * every action); macOS has no SOCK_CLOEXEC. */
#ifdef SOCK_CLOEXEC
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return -errno;
    int err = 0;
#else
    int fd = socket(AF_UNIX, SOCK_STREAM, 0);
    if (fd < 0)
        return -errno;
    int err = set_cloexec(fd);
#endif
#ifdef SO_NOSIGPIPE
    if (err == 0) {
        int one = 1;
        if (setsockopt(fd, SOL_SOCKET, SO_NOSIGPIPE, &one, sizeof one) < 0)
            err = -errno;
    }
#endif
    /* The launcher is single-threaded: nothing else resolves a relative
     * name while the working directory is DIR.  It stays there: the
     * request, which names the caller's working directory, was built
     * before, and nothing after this opens a relative name (the daemon
     * it may start runs from /; a relative entry of PATH, should it look
     * for `hermetic` there, is taken from DIR). */
    if (err == 0 && fchdir(rt->dirfd) < 0)
        err = -errno;
    while (err == 0 && connect(fd, (const struct sockaddr *)&rt->via, sizeof rt->via) < 0) {
        /* An interrupted connect goes on in the background, and a second
         * call cannot tell how it ended: start again on a fresh socket. */
        err = -errno;
        if (err == -EINTR) {
            close(fd);
            return try_connect(rt);
        }
    }
    if (err < 0) {
        close(fd);
        return err;
    }
    return fd;
}

/* The directory holding the launcher's own executable, into buf. */
static int own_dir(char *buf, size_t size)
{
#if defined(__linux__)
    ssize_t n = readlink("/proc/self/exe", buf, size - 1);
    if (n < 0)
        return -errno;
    buf[n] = '\0';
#elif defined(__APPLE__)
    uint32_t len = (uint32_t)size;
    if (_NSGetExecutablePath(buf, &len) != 0)
        return -ENAMETOOLONG;
#else
    (void)buf;
    (void)size;
    return -ENOSYS;
#endif
    char *slash = strrchr(buf, '/');
    if (slash == NULL)
        return -ENOENT;
    *slash = '\0';
    return 0;
}

/* Closes every descriptor from 3 up in the child about to exec the daemon:
 * a pipe of the build tool's that it inherited would otherwise stay open
 * in the long-lived daemon, and a reader waiting for its end (ninja reads
 * each action's output until EOF) would wait forever. */
static void close_from_3(void)
{
#if defined(__linux__) && defined(SYS_close_range)
    /* The raw call: glibc's wrapper is newer than manylinux's glibc. */
    if (syscall(SYS_close_range, 3U, ~0U, 0U) == 0)
        return;
#endif
    long max = sysconf(_SC_OPEN_MAX);
    if (max < 0 || max > 65536)
        max = 65536;
    for (int fd = 3; fd < max; fd++)
        close(fd);
}

/* Runs `hermetic serve --detach` and waits until it returns (the daemon
 * listens, or another one holds the lock) or the deadline passes.  Its
 * stdin and stdout are /dev/null and its stderr a pipe read here: the
 * daemon outlives this launcher, so it must hold none of the build tool's
 * streams (see close_from_3), and what it says when it fails is relayed in
 * this launcher's one line.  Returns 0 or a status to exit with, having
 * said why. */
static int start_daemon(int64_t deadline)
{
    char path[PATH_MAX];
    int beside = own_dir(path, sizeof path) == 0 && strlen(path) + 10 < sizeof path;
    if (beside) {
        strcat(path, "/hermetic");
        beside = access(path, X_OK) == 0;
    }

    int pipefd[2];
    if (pipe(pipefd) < 0) {
        int e = errno;
        say("cannot start the daemon: pipe: ", strerror(e), NULL);
        return EXIT_SETUP;
    }
    pid_t pid = fork();
    if (pid < 0) {
        int e = errno;
        say("cannot start the daemon: fork: ", strerror(e), NULL);
        return EXIT_SETUP;
    }
    if (pid == 0) {
        /* The child: single-threaded, so anything may be called here. */
        int null = open("/dev/null", O_RDWR);
        if (null < 0 || dup2(null, 0) < 0 || dup2(null, 1) < 0 || dup2(pipefd[1], 2) < 0)
            _exit(EXIT_SETUP);
        close_from_3();
        char *args[] = {beside ? path : "hermetic", "serve", "--detach", NULL};
        if (beside)
            execv(path, args);
        else
            execvp("hermetic", args);
        int e = errno;
        say("cannot run `hermetic serve --detach` (", beside ? path : "hermetic on PATH",
            "): ", strerror(e), NULL);
        _exit(EXIT_SETUP);
    }
    close(pipefd[1]);
    (void)fcntl(pipefd[0], F_SETFL, O_NONBLOCK);

    /* Keep the end of what it says: the last line is the reason. */
    char said[1024];
    size_t said_len = 0;
    int status = -1;
    int pipe_open = 1;
    for (;;) {
        if (pipe_open) {
            struct pollfd p = {pipefd[0], POLLIN, 0};
            (void)poll(&p, 1, 10);
        } else {
            sleep_ns(RETRY_NS); /* it closed its stderr but has not exited yet */
        }
        while (pipe_open) {
            char chunk[512];
            ssize_t n = read(pipefd[0], chunk, sizeof chunk);
            if (n == 0)
                pipe_open = 0;
            if (n <= 0)
                break; /* EAGAIN: nothing more for now */
            for (ssize_t k = 0; k < n; k++) {
                if (said_len == sizeof said) { /* keep the later half */
                    memmove(said, said + sizeof said / 2, sizeof said / 2);
                    said_len = sizeof said / 2;
                }
                said[said_len++] = chunk[k];
            }
        }
        pid_t w = waitpid(pid, &status, WNOHANG);
        if (w == pid)
            break;
        if (w < 0 && errno != EINTR) {
            status = -1;
            break;
        }
        if (now_ns() >= deadline) {
            close(pipefd[0]);
            say("`hermetic serve --detach` did not return within 10 s", NULL);
            return EXIT_SETUP;
        }
    }
    close(pipefd[0]);
    if (status != -1 && WIFEXITED(status) && WEXITSTATUS(status) == 0)
        return 0;

    /* Its last non-empty line, without a "hermetic: " of its own. */
    while (said_len > 0 && (said[said_len - 1] == '\n' || said[said_len - 1] == '\r'))
        said_len--;
    said[said_len < sizeof said ? said_len : sizeof said - 1] = '\0';
    const char *last = strrchr(said, '\n');
    last = last == NULL ? said : last + 1;
    if (strncmp(last, "hermetic-launch: ", 17) == 0)
        last += 17;
    else if (strncmp(last, "hermetic: ", 10) == 0)
        last += 10;
    char code[16] = "?";
    if (status != -1 && WIFEXITED(status)) {
        int v = WEXITSTATUS(status), n = 0;
        char digits[4];
        do {
            digits[n++] = (char)('0' + v % 10);
            v /= 10;
        } while (v != 0);
        for (int k = 0; k < n; k++)
            code[k] = digits[n - 1 - k];
        code[n] = '\0';
    }
    if (last[0] != '\0')
        say("the daemon could not be started (status ", code, "): ", last, NULL);
    else
        say("the daemon could not be started (`hermetic serve --detach` exited with status ",
            code, ")", NULL);
    return EXIT_SETUP;
}

/* The connected socket.  A missing socket (ENOENT) or one nobody listens on
 * (ECONNREFUSED) starts the daemon once, then connecting is retried for up
 * to 10 s in all.  Exits on an error. */
static int connect_daemon(const struct runtime *rt)
{
    int64_t deadline = 0;
    int started = 0;

    for (;;) {
        int fd = try_connect(rt);
        if (fd >= 0)
            return fd;
        if (fd != -ENOENT && fd != -ECONNREFUSED) {
            say("cannot connect to the daemon at ", rt->addr.sun_path, ": ", errstr(fd), NULL);
            exit(EXIT_SETUP);
        }
        if (!started) {
            started = 1;
            deadline = now_ns() + START_TIMEOUT_NS;
            int code = start_daemon(deadline);
            if (code != 0)
                exit(code);
            continue;
        }
        if (now_ns() >= deadline) {
            say("no daemon answers at ", rt->addr.sun_path, " (", errstr(fd),
                ") 10 s after starting one", NULL);
            exit(EXIT_SETUP);
        }
        sleep_ns(RETRY_NS);
    }
}

/* -- whom we talk to ---------------------------------------------------------- */

/* The listener's credentials: the same uid as ours, else one line and exit
 * 125.  The directory check already keeps others from DIR; this also holds
 * when the socket was reached some other way.  *pid: the daemon's, which
 * the proof writes to (0 where the system does not say). */
static void check_server(int sock, const struct runtime *rt, pid_t *pid)
{
    uid_t uid;
    *pid = 0;
#if defined(__linux__)
    struct ucred cred;
    socklen_t len = sizeof cred;
    if (getsockopt(sock, SOL_SOCKET, SO_PEERCRED, &cred, &len) < 0) {
        int e = errno;
        say("cannot learn who listens at ", rt->addr.sun_path, ": ", strerror(e), NULL);
        exit(EXIT_SETUP);
    }
    uid = cred.uid;
    *pid = cred.pid;
#else
    gid_t gid;
    if (getpeereid(sock, &uid, &gid) < 0) {
        int e = errno;
        say("cannot learn who listens at ", rt->addr.sun_path, ": ", strerror(e), NULL);
        exit(EXIT_SETUP);
    }
#endif
    if (uid != geteuid()) {
        say("refusing the daemon at ", rt->addr.sun_path,
            ": it runs as another user, not as this one", NULL);
        exit(EXIT_SETUP);
    }
}

/* Reads exactly len bytes, waiting at most until deadline (ms from now for
 * the whole); the count read (short at the end of the stream), or -errno
 * (-ETIMEDOUT). */
static ssize_t read_within(int sock, unsigned char *buf, size_t len, int timeout_ms)
{
    size_t got = 0;
    int64_t deadline = now_ns() + (int64_t)timeout_ms * 1000000LL;
    while (got < len) {
        int64_t left = deadline - now_ns();
        if (left <= 0)
            return -ETIMEDOUT;
        struct pollfd p = {sock, POLLIN, 0};
        int r = poll(&p, 1, (int)(left / 1000000LL) + 1);
        if (r < 0 && errno == EINTR)
            continue;
        if (r < 0)
            return -errno;
        if (r == 0)
            continue;
        ssize_t n = recv(sock, buf + got, len - got, 0);
        if (n < 0) {
            int e = errno;
            if (e == EINTR || e == EAGAIN)
                continue;
            return -e;
        }
        if (n == 0)
            break;
        got += (size_t)n;
    }
    return (ssize_t)got;
}

static int read_reply(int sock, unsigned char reply[8], size_t *got);

/* The daemon's refusal: its status word (8 bytes: "HMR1" before the
 * challenge, "HMN3" after it, then the status) and one line until the
 * daemon closes the connection.  `word` holds the `got` bytes read so far
 * (the word, perhaps the start of the line).  Said as one line and exited
 * with; returns when no line came. */
static void exit_if_refused(int sock, const unsigned char *word, size_t got)
{
    char why[1024];
    size_t n = got > 8 ? got - 8 : 0;
    if (n > sizeof why - 1)
        n = sizeof why - 1;
    memcpy(why, word + 8, n);
    for (;;) {
        ssize_t more = n < sizeof why - 1 ? recv(sock, why + n, sizeof why - 1 - n, 0) : 0;
        if (more < 0 && errno == EINTR)
            continue;
        if (more <= 0)
            break;
        n += (size_t)more;
    }
    while (n > 0 && (why[n - 1] == '\n' || why[n - 1] == '\r'))
        n--;
    if (n == 0)
        return;
    why[n] = '\0';
    for (size_t k = 0; k < n; k++)
        if (why[k] == '\n' || why[k] == '\r')
            why[k] = ' '; /* one line */
    uint32_t raw = (uint32_t)word[4] | (uint32_t)word[5] << 8 | (uint32_t)word[6] << 16 |
                   (uint32_t)word[7] << 24;
    say("the daemon refused this caller: ", why, NULL);
    exit(raw > 0 && raw <= 255 ? (int)raw : EXIT_SETUP);
}

/* The proof step (docs/launch-protocol.md): the daemon's challenge names a
 * buffer in its memory and a nonce; writing the nonce there with
 * process_vm_writev shows the kernel lets this caller write the daemon's
 * memory (the same uids, a superset of its capabilities, a Landlock domain
 * no narrower than its, what the LSMs and Yama say): a caller that could
 * make the daemon do anything already.  A refusal of the daemon's (its
 * status, then one line) is said and exited with.  Exits on any failure. */
static void prove(int sock, const struct runtime *rt, pid_t pid)
{
    unsigned char c[CHALLENGE_BYTES];
    ssize_t got = read_within(sock, c, sizeof c, CHALLENGE_TIMEOUT_MS);
    if (got >= 8 && memcmp(c, "HMR1", 4) == 0) {
        /* Refused before its challenge: another uid, too many handshakes. */
        exit_if_refused(sock, c, (size_t)got);
        say("the daemon refused this caller without saying why", NULL);
        exit(EXIT_SETUP);
    }
    if (got == -ETIMEDOUT) {
        say("the daemon at ", rt->addr.sun_path,
            " sent no challenge within 10 s (a daemon of an older hermetic? it exits when idle)",
            NULL);
        exit(EXIT_SETUP);
    }
    if (got < 0) {
        say("cannot read the daemon's challenge: ", errstr((int)got), NULL);
        exit(EXIT_SETUP);
    }
    if ((size_t)got < sizeof c) {
        say("the daemon closed the connection before its challenge (it may have died)", NULL);
        exit(EXIT_SETUP);
    }
    if (memcmp(c, "HMP3", 4) != 0) {
        say("the daemon's challenge is not of this protocol (no HMP3; a daemon of another "
            "hermetic? `hermetic serve --stop` ends it)",
            NULL);
        exit(EXIT_SETUP);
    }
#if defined(__linux__)
    uint64_t address = 0;
    for (int k = 7; k >= 0; k--) /* little-endian, whatever the host's order */
        address = address << 8 | c[4 + k];
    struct iovec local = {c + 12, NONCE_BYTES};
    struct iovec remote = {(void *)(uintptr_t)address, NONCE_BYTES};
    ssize_t n = process_vm_writev(pid, &local, 1, &remote, 1, 0);
    if (n == NONCE_BYTES)
        return;
    int e = n < 0 ? errno : EIO;
    /* The daemon compares this caller from /proc while it proves itself,
     * and may have refused it for a reason it names (another namespace,
     * no_new_privs...).  Half-closing says that no request comes: the
     * daemon then sends that refusal, or closes without a word. */
    (void)shutdown(sock, SHUT_WR);
    unsigned char word[8];
    size_t got8;
    if (read_reply(sock, word, &got8) == 0 && got8 == 8 && memcmp(word, "HMN3", 4) == 0)
        exit_if_refused(sock, word, 8);
    if (e == EPERM || e == EACCES) { /* EACCES: an LSM's refusal */
        char scope[8] = "";
        int fd = open("/proc/sys/kernel/yama/ptrace_scope", O_RDONLY | O_CLOEXEC);
        if (fd >= 0) {
            ssize_t r = read(fd, scope, sizeof scope - 1);
            scope[r > 0 ? r : 0] = '\0';
            close(fd);
        }
        if (scope[0] >= '2' && scope[0] <= '9') {
            scope[1] = '\0';
            say("kernel.yama.ptrace_scope is ", scope,
                ": no process may write the daemon's memory, which is how a caller proves it "
                "may use the daemon (docs/launch-protocol.md)", NULL);
            exit(EXIT_SETUP);
        }
        say("this caller may not use the daemon: it may not write the daemon's memory (it is "
            "confined more tightly: Landlock, fewer capabilities, an LSM); give it a daemon "
            "of its own (HERMETIC_RUNTIME_DIR)", NULL);
        exit(EXIT_SETUP);
    }
    say("cannot prove to the daemon that this caller may use it: ", strerror(e), NULL);
    exit(EXIT_SETUP);
#else
    (void)pid;
    say("the daemon's proof step needs process_vm_writev, which this system lacks", NULL);
    exit(EXIT_SETUP);
#endif
}

/* -- the exchange ------------------------------------------------------------ */

/* The request, its first sendmsg carrying the three descriptors as one
 * SCM_RIGHTS message; the rest of the bytes in as many writes as the socket
 * takes (a stream socket may accept part of a large request). */
static int send_request(int sock, const struct buf *b, const int fds[3])
{
    union {
        struct cmsghdr align;
        char bytes[CMSG_SPACE(3 * sizeof(int))];
    } ctl;
    struct iovec iov = {b->data, b->len};
    struct msghdr msg;
    ssize_t n;

    memset(&ctl, 0, sizeof ctl);
    memset(&msg, 0, sizeof msg);
    msg.msg_iov = &iov;
    msg.msg_iovlen = 1;
    msg.msg_control = ctl.bytes;
    msg.msg_controllen = sizeof ctl.bytes;
    struct cmsghdr *cmsg = CMSG_FIRSTHDR(&msg);
    cmsg->cmsg_level = SOL_SOCKET;
    cmsg->cmsg_type = SCM_RIGHTS;
    cmsg->cmsg_len = CMSG_LEN(3 * sizeof(int));
    memcpy(CMSG_DATA(cmsg), fds, 3 * sizeof(int));

    do /* EINTR: nothing was sent, the descriptors neither */
        n = sendmsg(sock, &msg, SEND_FLAGS);
    while (n < 0 && errno == EINTR);
    if (n < 0)
        return -errno;

    size_t done = (size_t)n;
    while (done < b->len) {
        n = send(sock, b->data + done, b->len - done, SEND_FLAGS);
        if (n < 0) {
            int e = errno;
            if (e == EINTR)
                continue;
            return -e;
        }
        done += (size_t)n;
    }
    /* No shutdown(SHUT_WR): the daemon takes the connection's end as the
     * client gone, and would cancel the action. */
    return 0;
}

/* The 8-byte reply; *got says how many arrived before the end. */
static int read_reply(int sock, unsigned char reply[8], size_t *got)
{
    *got = 0;
    while (*got < 8) {
        ssize_t n = recv(sock, reply + *got, 8 - *got, 0);
        if (n < 0) {
            int e = errno;
            if (e == EINTR)
                continue;
            return -e;
        }
        if (n == 0)
            return 0;
        *got += (size_t)n;
    }
    return 0;
}

int main(int argc, char **argv)
{
    struct request_args args;
    struct runtime rt;
    int err;

    /* First, before any descriptor is opened (see fill_stdio). */
    err = fill_stdio();
    if (err < 0) {
        say("cannot open /dev/null for a closed standard stream: ", errstr(err), NULL);
        return EXIT_SETUP;
    }
    parse_args(argc, argv, &args);
    struct buf request = build_request(&args);

    memset(&rt, 0, sizeof rt);
    runtime_dir(&rt);
    check_runtime_dir(&rt);
    int sock = connect_daemon(&rt);
    pid_t daemon_pid;
    check_server(sock, &rt, &daemon_pid);
    prove(sock, &rt, daemon_pid);

    const int stdio[3] = {STDIN_FILENO, STDOUT_FILENO, STDERR_FILENO};
    err = send_request(sock, &request, stdio);
    if (err < 0) {
        /* A caller that the daemon refused after its challenge (compared
         * from /proc) may find the connection closed: the refusal is
         * still there to read. */
        unsigned char word[8];
        size_t n;
        if (read_reply(sock, word, &n) == 0 && n == 8 && memcmp(word, "HMN3", 4) == 0)
            exit_if_refused(sock, word, n);
        say("cannot send the request to the daemon at ", rt.addr.sun_path, ": ", errstr(err),
            NULL);
        return EXIT_SETUP;
    }
    free(request.data);

    unsigned char reply[8];
    size_t got;
    err = read_reply(sock, reply, &got);
    if (err < 0) {
        say("cannot read the daemon's reply: ", errstr(err), NULL);
        return EXIT_SETUP;
    }
    if (got < 8) {
        say("the daemon closed the connection before it replied (it may have died)", NULL);
        return EXIT_SETUP;
    }
    /* A refusal after the challenge (compared from /proc) has a word of
     * its own and one line after it; the reply of an action that ran is
     * these 8 bytes alone, and nothing more is read. */
    if (memcmp(reply, "HMN3", 4) == 0) {
        exit_if_refused(sock, reply, 8);
        say("the daemon refused this caller without saying why", NULL);
        return EXIT_SETUP;
    }
    if (memcmp(reply, "HMR1", 4) != 0) {
        say("the daemon's reply is not of this protocol (no HMR1)", NULL);
        return EXIT_SETUP;
    }
    uint32_t raw = (uint32_t)reply[4] | (uint32_t)reply[5] << 8 | (uint32_t)reply[6] << 16 |
                   (uint32_t)reply[7] << 24;
    int32_t status = (int32_t)raw;
    if (status < 0 || status > 255) {
        say("the daemon's reply carries an invalid exit status", NULL);
        return EXIT_SETUP;
    }
    return (int)status;
}
