/*
 * memcount.c - an LD_PRELOAD shim that counts copies and socket system calls
 * by the library that made them, so the copy ledger measures OpenSSL's
 * internal copies instead of assuming them.
 *
 * It interposes memcpy, memmove, mempcpy and their _FORTIFY_SOURCE variants
 * (calls of at least MEMCOUNT_MIN_COPY bytes count), read/readv/recv*,
 * write/writev/send* and epoll_wait.  The caller is the return address, classified by the
 * loaded object it falls in (libssl, libcrypto, the wsstls extension,
 * Python, libc, other).  Only calls that cross a PLT are seen: a library's
 * internal calls to its own functions, and copies the compiler inlined, are
 * not.  It uses no Python API, so it can be preloaded into the interpreter;
 * wsstls/memcount.py controls it through the memcount_* functions.
 *
 * Counting is off until memcount_start(); when off, each interposed call
 * costs one relaxed load.
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <link.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <unistd.h>

#define MEMCOUNT_MIN_COPY 16
#define MAX_RANGES 256

enum memcount_class { MC_SSL, MC_CRYPTO, MC_WSSTLS, MC_PYTHON, MC_LIBC, MC_OTHER, MC_CLASSES };
enum memcount_kind { MC_COPY, MC_READ, MC_WRITE, MC_POLL, MC_KINDS };

struct range {
    uintptr_t start, end;
    int cls;
};

static atomic_int enabled;
/* The loaded objects' code ranges, in two buffers: memcount_start builds the
 * idle one and publishes it, so a thread classifying a call meanwhile (a
 * server's worker) reads a complete map, never one being rebuilt. */
static struct range ranges[2][MAX_RANGES];
static int nranges[2];
static atomic_int current;
static _Atomic uint64_t calls[MC_KINDS][MC_CLASSES], bytes[MC_KINDS][MC_CLASSES];

/* ------------------------------------------------------- real functions */

static void *(*real_memcpy)(void *, const void *, size_t);
static void *(*real_memmove)(void *, const void *, size_t);
static void *(*real_mempcpy)(void *, const void *, size_t);
static ssize_t (*real_read)(int, void *, size_t);
static ssize_t (*real_readv)(int, const struct iovec *, int);
static ssize_t (*real_recv)(int, void *, size_t, int);
static ssize_t (*real_recvfrom)(int, void *, size_t, int, struct sockaddr *, socklen_t *);
static ssize_t (*real_recvmsg)(int, struct msghdr *, int);
static ssize_t (*real_write)(int, const void *, size_t);
static ssize_t (*real_writev)(int, const struct iovec *, int);
static ssize_t (*real_send)(int, const void *, size_t, int);
static ssize_t (*real_sendto)(int, const void *, size_t, int, const struct sockaddr *, socklen_t);
static ssize_t (*real_sendmsg)(int, const struct msghdr *, int);
static int (*real_epoll_wait)(int, struct epoll_event *, int, int);

/* Used only while dlsym resolves the real functions (it may copy). */
static void *byte_copy(void *dst, const void *src, size_t n)
{
    volatile unsigned char *d = dst; /* volatile: never turned into a memcpy call */
    const unsigned char *s = src;
    if (d < s)
        for (size_t i = 0; i < n; i++)
            d[i] = s[i];
    else
        for (size_t i = n; i-- > 0;)
            d[i] = s[i];
    return dst;
}

#define RESOLVE(name) (*(void **)&real_##name = dlsym(RTLD_NEXT, #name))

__attribute__((constructor)) static void resolve(void)
{
    RESOLVE(memcpy);
    RESOLVE(memmove);
    RESOLVE(mempcpy);
    RESOLVE(read);
    RESOLVE(readv);
    RESOLVE(recv);
    RESOLVE(recvfrom);
    RESOLVE(recvmsg);
    RESOLVE(write);
    RESOLVE(writev);
    RESOLVE(send);
    RESOLVE(sendto);
    RESOLVE(sendmsg);
    RESOLVE(epoll_wait);
}

/* ------------------------------------------------------------- counting */

static int classify_name(const char *name)
{
    if (strstr(name, "libssl"))
        return MC_SSL;
    if (strstr(name, "libcrypto"))
        return MC_CRYPTO;
    if (strstr(name, "wsstls/_native"))
        return MC_WSSTLS;
    if (*name == '\0' || strstr(name, "libpython") || strstr(name, "python3") ||
        strstr(name, "lib-dynload"))
        return MC_PYTHON; /* "" is the main program: the interpreter */
    if (strstr(name, "libc.so"))
        return MC_LIBC;
    return MC_OTHER;
}

static int add_object(struct dl_phdr_info *info, size_t size, void *data)
{
    (void)size;
    int b = *(int *)data;
    int cls = classify_name(info->dlpi_name ? info->dlpi_name : "");
    for (int i = 0; i < info->dlpi_phnum && nranges[b] < MAX_RANGES; i++) {
        const ElfW(Phdr) *ph = &info->dlpi_phdr[i];
        if (ph->p_type != PT_LOAD || !(ph->p_flags & PF_X))
            continue;
        uintptr_t start = info->dlpi_addr + ph->p_vaddr;
        ranges[b][nranges[b]++] = (struct range){start, start + ph->p_memsz, cls};
    }
    return 0;
}

static int classify(const void *caller)
{
    uintptr_t pc = (uintptr_t)caller;
    int b = atomic_load_explicit(&current, memory_order_acquire);
    for (int i = 0; i < nranges[b]; i++)
        if (pc >= ranges[b][i].start && pc < ranges[b][i].end)
            return ranges[b][i].cls;
    return MC_OTHER;
}

static void record(int kind, const void *caller, uint64_t n)
{
    int cls = classify(caller);
    atomic_fetch_add_explicit(&calls[kind][cls], 1, memory_order_relaxed);
    atomic_fetch_add_explicit(&bytes[kind][cls], n, memory_order_relaxed);
}

static inline int on(void) { return atomic_load_explicit(&enabled, memory_order_relaxed); }

/* ----------------------------------------------------------- the copies */

#define COPY_HOOK(n)                                                                          \
    do {                                                                                      \
        if (on() && (n) >= MEMCOUNT_MIN_COPY)                                                 \
            record(MC_COPY, __builtin_return_address(0), (n));                                \
    } while (0)

void *memcpy(void *restrict dst, const void *restrict src, size_t n)
{
    COPY_HOOK(n);
    return real_memcpy ? real_memcpy(dst, src, n) : byte_copy(dst, src, n);
}

void *memmove(void *dst, const void *src, size_t n)
{
    COPY_HOOK(n);
    return real_memmove ? real_memmove(dst, src, n) : byte_copy(dst, src, n);
}

void *mempcpy(void *restrict dst, const void *restrict src, size_t n)
{
    COPY_HOOK(n);
    if (real_mempcpy)
        return real_mempcpy(dst, src, n);
    return (unsigned char *)byte_copy(dst, src, n) + n;
}

/* _FORTIFY_SOURCE builds (Debian's OpenSSL) call these with the size of the
 * destination object; the check itself is libc's business. */
void *__memcpy_chk(void *dst, const void *src, size_t n, size_t dstlen)
{
    (void)dstlen;
    COPY_HOOK(n);
    return real_memcpy ? real_memcpy(dst, src, n) : byte_copy(dst, src, n);
}

void *__memmove_chk(void *dst, const void *src, size_t n, size_t dstlen)
{
    (void)dstlen;
    COPY_HOOK(n);
    return real_memmove ? real_memmove(dst, src, n) : byte_copy(dst, src, n);
}

/* ------------------------------------------------------------ the calls */

/* Every call counts, successful or not (EAGAIN costs a system call too);
 * bytes are what the kernel moved. */
#define SYSCALL_HOOK(kind, expr)                                                              \
    do {                                                                                      \
        ssize_t r_ = (expr);                                                                  \
        if (on())                                                                             \
            record((kind), __builtin_return_address(0), r_ > 0 ? (uint64_t)r_ : 0);           \
        return r_;                                                                            \
    } while (0)

ssize_t read(int fd, void *buf, size_t n) { SYSCALL_HOOK(MC_READ, real_read(fd, buf, n)); }

ssize_t readv(int fd, const struct iovec *iov, int n)
{
    SYSCALL_HOOK(MC_READ, real_readv(fd, iov, n));
}

ssize_t recv(int fd, void *buf, size_t n, int flags)
{
    SYSCALL_HOOK(MC_READ, real_recv(fd, buf, n, flags));
}

ssize_t recvfrom(int fd, void *buf, size_t n, int flags, struct sockaddr *a, socklen_t *al)
{
    SYSCALL_HOOK(MC_READ, real_recvfrom(fd, buf, n, flags, a, al));
}

ssize_t recvmsg(int fd, struct msghdr *msg, int flags)
{
    SYSCALL_HOOK(MC_READ, real_recvmsg(fd, msg, flags));
}

ssize_t write(int fd, const void *buf, size_t n) { SYSCALL_HOOK(MC_WRITE, real_write(fd, buf, n)); }

ssize_t writev(int fd, const struct iovec *iov, int n)
{
    SYSCALL_HOOK(MC_WRITE, real_writev(fd, iov, n));
}

ssize_t send(int fd, const void *buf, size_t n, int flags)
{
    SYSCALL_HOOK(MC_WRITE, real_send(fd, buf, n, flags));
}

ssize_t sendto(int fd, const void *buf, size_t n, int flags, const struct sockaddr *a, socklen_t al)
{
    SYSCALL_HOOK(MC_WRITE, real_sendto(fd, buf, n, flags, a, al));
}

ssize_t sendmsg(int fd, const struct msghdr *msg, int flags)
{
    SYSCALL_HOOK(MC_WRITE, real_sendmsg(fd, msg, flags));
}

int epoll_wait(int epfd, struct epoll_event *events, int maxevents, int timeout)
{
    SYSCALL_HOOK(MC_POLL, real_epoll_wait(epfd, events, maxevents, timeout));
}

/* --------------------------------------------------------------- control */

/* 1 when this library's memcpy is the one the process uses (preloaded). */
int memcount_active(void) { return dlsym(RTLD_DEFAULT, "memcpy") == (void *)memcpy; }

int memcount_classes(void) { return MC_CLASSES; }
int memcount_kinds(void) { return MC_KINDS; }

/* Zero the counters, map the loaded objects again, count from now on.  One
 * thread at a time calls start/stop; other threads may be copying. */
void memcount_start(void)
{
    atomic_store(&enabled, 0);
    int next = 1 - atomic_load_explicit(&current, memory_order_relaxed);
    nranges[next] = 0;
    dl_iterate_phdr(add_object, &next);
    atomic_store_explicit(&current, next, memory_order_release); /* the map before its use */
    for (int k = 0; k < MC_KINDS; k++)
        for (int c = 0; c < MC_CLASSES; c++) {
            atomic_store(&calls[k][c], 0);
            atomic_store(&bytes[k][c], 0);
        }
    atomic_store(&enabled, 1);
}

void memcount_stop(void) { atomic_store(&enabled, 0); }

/* out[(kind * MC_CLASSES + class) * 2 + {0: calls, 1: bytes}] */
void memcount_read(uint64_t *out)
{
    for (int k = 0; k < MC_KINDS; k++)
        for (int c = 0; c < MC_CLASSES; c++) {
            out[(k * MC_CLASSES + c) * 2] = atomic_load(&calls[k][c]);
            out[(k * MC_CLASSES + c) * 2 + 1] = atomic_load(&bytes[k][c]);
        }
}
