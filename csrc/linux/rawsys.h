/*
 * rawsys.h: system calls without libc, for code that runs after clone().
 *
 * The sandbox's child shares the caller's memory (CLONE_VM) and, not being
 * created with CLONE_SETTLS, also the calling thread's TLS.  libc's syscall()
 * stores failures in errno, which lives in that TLS: a child writing it would
 * clobber the errno of the Python thread that is still running.  These
 * helpers return -errno instead and touch no memory but their arguments.
 */
#ifndef HERMETIC_RAWSYS_H
#define HERMETIC_RAWSYS_H

#include <sys/syscall.h>

#include "kernel_compat.h"

#if defined(__x86_64__)
static inline long hm_sys6(long n, long a, long b, long c, long d, long e, long f)
{
    register long r10 __asm__("r10") = d;
    register long r8 __asm__("r8") = e;
    register long r9 __asm__("r9") = f;
    long ret;
    __asm__ volatile("syscall"
                     : "=a"(ret)
                     : "a"(n), "D"(a), "S"(b), "d"(c), "r"(r10), "r"(r8), "r"(r9)
                     : "rcx", "r11", "memory");
    return ret;
}
#elif defined(__aarch64__)
static inline long hm_sys6(long n, long a, long b, long c, long d, long e, long f)
{
    register long x8 __asm__("x8") = n;
    register long x0 __asm__("x0") = a;
    register long x1 __asm__("x1") = b;
    register long x2 __asm__("x2") = c;
    register long x3 __asm__("x3") = d;
    register long x4 __asm__("x4") = e;
    register long x5 __asm__("x5") = f;
    __asm__ volatile("svc #0"
                     : "+r"(x0)
                     : "r"(x8), "r"(x1), "r"(x2), "r"(x3), "r"(x4), "r"(x5)
                     : "memory");
    return x0;
}
#else
#error "hermetic: raw system calls are implemented for x86_64 and aarch64 only"
#endif

/*
 * hm_clone_run: clone(flags) onto stack_top; the child calls fn(arg) and
 * exits with its return value, the caller gets the child's pid or -errno.
 * Used by pid 1 to start the action: libc's clone() would store a failure in
 * the shared errno (see above).  flags must not contain CLONE_SETTLS or the
 * tid flags.
 */
#if defined(__x86_64__)
static inline long hm_clone_run(unsigned long flags, void *stack_top, int (*fn)(void *), void *arg)
{
    register long r10 __asm__("r10") = 0;
    register long r8 __asm__("r8") = 0;
    register int (*r12)(void *) __asm__("r12") = fn;
    register void *r13 __asm__("r13") = arg;
    long ret;
    __asm__ volatile("syscall\n\t"
                     "test %%rax, %%rax\n\t"
                     "jnz 1f\n\t"
                     /* child: on the new stack, no frame to return to */
                     "xor %%ebp, %%ebp\n\t"
                     "mov %%r13, %%rdi\n\t"
                     "call *%%r12\n\t"
                     "mov %%eax, %%edi\n\t"
                     "mov $60, %%eax\n\t" /* SYS_exit */
                     "syscall\n\t"
                     "hlt\n"
                     "1:\n\t"
                     : "=a"(ret)
                     : "a"((long)SYS_clone), "D"(flags), "S"(stack_top), "d"(0L), "r"(r10),
                       "r"(r8), "r"(r12), "r"(r13)
                     : "rcx", "r11", "memory");
    return ret;
}
#elif defined(__aarch64__)
static inline long hm_clone_run(unsigned long flags, void *stack_top, int (*fn)(void *), void *arg)
{
    register long x8 __asm__("x8") = SYS_clone;
    register long x0 __asm__("x0") = (long)flags;
    register long x1 __asm__("x1") = (long)stack_top;
    register long x2 __asm__("x2") = 0;
    register long x3 __asm__("x3") = 0;
    register long x4 __asm__("x4") = 0;
    register int (*x19)(void *) __asm__("x19") = fn;
    register void *x20 __asm__("x20") = arg;
    __asm__ volatile("svc #0\n\t"
                     "cbnz x0, 1f\n\t"
                     "mov x29, xzr\n\t"
                     "mov x0, x20\n\t"
                     "blr x19\n\t"
                     "mov x8, #93\n\t" /* SYS_exit */
                     "svc #0\n"
                     "1:\n\t"
                     : "+r"(x0)
                     : "r"(x8), "r"(x1), "r"(x2), "r"(x3), "r"(x4), "r"(x19), "r"(x20)
                     : "x30", "memory");
    return x0;
}
#endif

/*
 * hm_clone3_run: clone3(args, size); the child, on the stack the args name,
 * calls fn(arg) and exits with its return value; the caller gets the
 * child's pid or -errno.  Needed for CLONE_INTO_CGROUP, which only clone3
 * has, for a child that does not exec (libc has no clone3 wrapper).
 */
#if defined(__x86_64__)
static inline long hm_clone3_run(void *args, unsigned long size, int (*fn)(void *), void *arg)
{
    register int (*r12)(void *) __asm__("r12") = fn;
    register void *r13 __asm__("r13") = arg;
    long ret;
    __asm__ volatile("syscall\n\t"
                     "test %%rax, %%rax\n\t"
                     "jnz 1f\n\t"
                     "xor %%ebp, %%ebp\n\t"
                     "mov %%r13, %%rdi\n\t"
                     "call *%%r12\n\t"
                     "mov %%eax, %%edi\n\t"
                     "mov $60, %%eax\n\t"
                     "syscall\n\t"
                     "hlt\n"
                     "1:\n\t"
                     : "=a"(ret)
                     : "a"((long)SYS_clone3), "D"(args), "S"(size), "r"(r12), "r"(r13)
                     : "rcx", "r11", "memory");
    return ret;
}
#elif defined(__aarch64__)
static inline long hm_clone3_run(void *args, unsigned long size, int (*fn)(void *), void *arg)
{
    register long x8 __asm__("x8") = SYS_clone3;
    register long x0 __asm__("x0") = (long)args;
    register long x1 __asm__("x1") = (long)size;
    register int (*x19)(void *) __asm__("x19") = fn;
    register void *x20 __asm__("x20") = arg;
    __asm__ volatile("svc #0\n\t"
                     "cbnz x0, 1f\n\t"
                     "mov x29, xzr\n\t"
                     "mov x0, x20\n\t"
                     "blr x19\n\t"
                     "mov x8, #93\n\t"
                     "svc #0\n"
                     "1:\n\t"
                     : "+r"(x0)
                     : "r"(x8), "r"(x1), "r"(x19), "r"(x20)
                     : "x30", "memory");
    return x0;
}
#endif

#define HM_SYS0(n) hm_sys6((n), 0, 0, 0, 0, 0, 0)
#define HM_SYS1(n, a) hm_sys6((n), (long)(a), 0, 0, 0, 0, 0)
#define HM_SYS2(n, a, b) hm_sys6((n), (long)(a), (long)(b), 0, 0, 0, 0)
#define HM_SYS3(n, a, b, c) hm_sys6((n), (long)(a), (long)(b), (long)(c), 0, 0, 0)
#define HM_SYS4(n, a, b, c, d) hm_sys6((n), (long)(a), (long)(b), (long)(c), (long)(d), 0, 0)
#define HM_SYS5(n, a, b, c, d, e) \
    hm_sys6((n), (long)(a), (long)(b), (long)(c), (long)(d), (long)(e), 0)

#endif
