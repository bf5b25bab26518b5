/*
 * net.c: the sandbox's network namespace from inside: loopback up, the
 * egress proxy's listening socket handed to the caller, and the process
 * that makes a pooled network namespace.
 *
 * Like every child-side file (see child.c), this one runs in the caller's
 * memory: raw system calls over buffers the caller formatted, no libc.
 */
#define _GNU_SOURCE
#include <fcntl.h>
#include <net/if.h>
#include <netinet/in.h>
#include <sys/ioctl.h>
#include <sys/socket.h>

#include "internal.h"
#include "rawsys.h"

long hm__loopback_up(void)
{
    long s = HM_SYS3(SYS_socket, AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    if (s < 0)
        return s;
    struct ifreq ifr;
    char *b = (char *)&ifr;
    for (unsigned long i = 0; i < sizeof ifr; i++)
        b[i] = 0;
    ifr.ifr_name[0] = 'l';
    ifr.ifr_name[1] = 'o';
    ifr.ifr_flags = IFF_UP | IFF_LOOPBACK | IFF_RUNNING;
    long r = HM_SYS3(SYS_ioctl, s, SIOCSIFFLAGS, &ifr);
    HM_SYS1(SYS_close, s);
    return r;
}

/* The egress proxy's listening socket, made inside the sandbox's network
 * namespace so that only the sandbox can connect to it; the caller accepts
 * on it and makes the outbound connections from its own namespace.  No
 * proxy process runs in the sandbox. */
long hm__proxy_listen(int port)
{
    long s = HM_SYS3(SYS_socket, AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (s < 0)
        return s;
    int one = 1;
    struct sockaddr_in sa;
    char *b = (char *)&sa;
    for (unsigned long i = 0; i < sizeof sa; i++)
        b[i] = 0;
    sa.sin_family = AF_INET;
    sa.sin_port = (unsigned short)(((port & 0xff) << 8) | ((port >> 8) & 0xff));
    unsigned char *ip = (unsigned char *)&sa.sin_addr;
    ip[0] = 127;
    ip[3] = 1;
    long r = HM_SYS5(SYS_setsockopt, s, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    if (r == 0)
        r = HM_SYS3(SYS_bind, s, &sa, sizeof sa);
    if (r == 0)
        r = HM_SYS2(SYS_listen, s, 128);
    if (r == 0)
        r = hm__send_fd(HM_MSG_PROXY_FD, s);
    HM_SYS1(SYS_close, s);
    return r;
}

/* Makes a network namespace for the pool: loopback up, and a descriptor
 * for it.  Cloned with CLONE_FILES, so the descriptor lands in the caller's
 * table, and CLONE_VFORK, so the caller waits. */
int hm__netns_main(void *argp)
{
    struct hm_netns_args *a = argp;
    long r = hm__loopback_up();
    if (r == 0)
        r = HM_SYS4(SYS_openat, AT_FDCWD, "/proc/self/ns/net", O_RDONLY | O_CLOEXEC, 0);
    a->fd = r >= 0 ? (int)r : -1;
    a->err = r >= 0 ? 0 : (int)r;
    return 0;
}
