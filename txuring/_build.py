"""
cffi API-mode build of C{txuring._core}.

The C source is C{csrc/core.c}; this module only declares to cffi what
Python may call. Structures the kernel defines are declared with C{...} so that cffi
takes their layout from the real headers at compile time, never from a copy here.

Built by setuptools through C{cffi_modules} in C{pyproject.toml}; for a quick in-tree
build, C{python -m txuring._build}.
"""

import os

from cffi import FFI

CDEF = r"""
/* ---- kernel and libc structures (layout from the headers) ---- */
struct iovec { void *iov_base; size_t iov_len; };
typedef unsigned int socklen_t;
typedef unsigned short sa_family_t;
struct sockaddr { sa_family_t sa_family; ...; };
struct in_addr { uint32_t s_addr; };
struct sockaddr_in { sa_family_t sin_family; uint16_t sin_port; struct in_addr sin_addr; ...; };
struct in6_addr { unsigned char s6_addr[16]; ...; };  /* glibc: a union, 4-aligned */
struct sockaddr_in6 {
    sa_family_t sin6_family; uint16_t sin6_port; uint32_t sin6_flowinfo;
    struct in6_addr sin6_addr; uint32_t sin6_scope_id; ...;
};
struct sockaddr_un { sa_family_t sun_family; char sun_path[108]; };
struct sockaddr_storage { sa_family_t ss_family; ...; };
struct msghdr {
    void *msg_name; socklen_t msg_namelen; struct iovec *msg_iov; size_t msg_iovlen;
    void *msg_control; size_t msg_controllen; int msg_flags;
};
struct __kernel_timespec { int64_t tv_sec; long long tv_nsec; };
struct open_how { uint64_t flags; uint64_t mode; uint64_t resolve; };
struct statx_timestamp { int64_t tv_sec; uint32_t tv_nsec; ...; };
struct statx {
    uint32_t stx_mask; uint32_t stx_blksize; uint64_t stx_attributes; uint32_t stx_nlink;
    uint32_t stx_uid; uint32_t stx_gid; uint16_t stx_mode; uint64_t stx_ino;
    uint64_t stx_size; uint64_t stx_blocks; uint64_t stx_attributes_mask;
    struct statx_timestamp stx_atime; struct statx_timestamp stx_btime;
    struct statx_timestamp stx_ctime; struct statx_timestamp stx_mtime;
    uint32_t stx_rdev_major; uint32_t stx_rdev_minor;
    uint32_t stx_dev_major; uint32_t stx_dev_minor; ...;
};

/* ---- the ring ---- */
struct txu_ring {
    int fd;
    int forked;
    unsigned setup_flags;
    unsigned features;
    unsigned sq_entries;
    unsigned cq_entries;
    unsigned long long wait_timeouts_pending;
    unsigned long long enters;
    unsigned long long submitted;
    unsigned long long harvested;
    unsigned batch_n;
    unsigned batch_next;
    unsigned sqe_tail;
    ...;
};
struct txu_bufring { unsigned entries; unsigned short bgid; unsigned lent; ...; };

#define TXU_UD_WAIT_TIMEOUT ...

int txu_setup(struct txu_ring *r, unsigned entries, unsigned cq_entries, unsigned flags,
              unsigned sq_thread_idle);
void txu_close(struct txu_ring *r);
unsigned txu_sq_space(struct txu_ring *r);
unsigned txu_sq_ready(struct txu_ring *r);
int txu_submit_and_wait(struct txu_ring *r, unsigned min_complete, long long timeout_ns,
                        int use_ext_arg);
int txu_wait(struct txu_ring *r, long long timeout_ns, int use_ext_arg, int taskrun_flag);
unsigned txu_cq_ready(struct txu_ring *r);
int txu_harvest(struct txu_ring *r, uint64_t *user_data, int32_t *res, uint32_t *flags,
                unsigned max);
int txu_sq_rollback(struct txu_ring *r, unsigned n);
int txu_sq_forget_fd(struct txu_ring *r, int fd);
unsigned txu_cq_overflow(struct txu_ring *r);
unsigned txu_sq_dropped(struct txu_ring *r);
unsigned txu_sq_flags(struct txu_ring *r);

int txu_register_eventfd(struct txu_ring *r, int efd);
int txu_unregister_eventfd(struct txu_ring *r);
int txu_register_buffers(struct txu_ring *r, const struct iovec *iov, unsigned nr);
int txu_unregister_buffers(struct txu_ring *r);
int txu_enable_rings(struct txu_ring *r);
int txu_register_iowq_max_workers(struct txu_ring *r, unsigned *values);
int txu_probe(struct txu_ring *r, unsigned char *supported, unsigned nsupported);

int txu_bufring_setup(struct txu_ring *r, struct txu_bufring *b, unsigned entries,
                      unsigned short bgid, char *base, unsigned buf_size);
int txu_bufring_free(struct txu_ring *r, struct txu_bufring *b);
int txu_bufring_deliver(struct txu_bufring *b, unsigned bid);
int txu_bufring_lend(struct txu_bufring *b, unsigned bid);
int txu_bufring_provide(struct txu_bufring *b, unsigned bid);
int txu_bufring_recycle(struct txu_bufring *b, unsigned bid);

int txu_prep_nop(struct txu_ring *r, uint64_t ud, unsigned sf);
int txu_prep_read(struct txu_ring *r, int fd, void *buf, unsigned len, uint64_t off,
                  uint64_t ud, unsigned sf);
int txu_prep_write(struct txu_ring *r, int fd, const void *buf, unsigned len, uint64_t off,
                   uint64_t ud, unsigned sf);
int txu_prep_readv(struct txu_ring *r, int fd, const struct iovec *iov, unsigned n,
                   uint64_t off, int rw_flags, uint64_t ud, unsigned sf);
int txu_prep_writev(struct txu_ring *r, int fd, const struct iovec *iov, unsigned n,
                    uint64_t off, int rw_flags, uint64_t ud, unsigned sf);
int txu_prep_read_fixed(struct txu_ring *r, int fd, void *buf, unsigned len, uint64_t off,
                        unsigned buf_index, uint64_t ud, unsigned sf);
int txu_prep_write_fixed(struct txu_ring *r, int fd, const void *buf, unsigned len,
                         uint64_t off, unsigned buf_index, uint64_t ud, unsigned sf);
int txu_prep_read_multishot(struct txu_ring *r, int fd, unsigned short bgid, uint64_t off,
                            uint64_t ud, unsigned sf);
int txu_prep_fsync(struct txu_ring *r, int fd, unsigned fsync_flags, uint64_t off,
                   unsigned len, uint64_t ud, unsigned sf);
int txu_prep_poll_add(struct txu_ring *r, int fd, unsigned events, int multishot,
                      uint64_t ud, unsigned sf);
int txu_prep_poll_remove(struct txu_ring *r, uint64_t target, uint64_t ud, unsigned sf);
int txu_prep_timeout(struct txu_ring *r, struct __kernel_timespec *ts, unsigned count,
                     unsigned timeout_flags, uint64_t ud, unsigned sf);
int txu_prep_timeout_remove(struct txu_ring *r, uint64_t target, uint64_t ud, unsigned sf);
int txu_prep_link_timeout(struct txu_ring *r, struct __kernel_timespec *ts,
                          unsigned timeout_flags, uint64_t ud, unsigned sf);
int txu_prep_cancel(struct txu_ring *r, uint64_t target, int fd, unsigned cancel_flags,
                    uint64_t ud, unsigned sf);
int txu_prep_openat2(struct txu_ring *r, int dfd, const char *path, struct open_how *how,
                     uint64_t ud, unsigned sf);
int txu_prep_close(struct txu_ring *r, int fd, uint64_t ud, unsigned sf);
int txu_prep_statx(struct txu_ring *r, int dfd, const char *path, int at_flags, unsigned mask,
                   struct statx *out, uint64_t ud, unsigned sf);
int txu_prep_fallocate(struct txu_ring *r, int fd, int mode, uint64_t off, uint64_t len,
                       uint64_t ud, unsigned sf);
int txu_prep_ftruncate(struct txu_ring *r, int fd, uint64_t len, uint64_t ud, unsigned sf);
int txu_prep_renameat(struct txu_ring *r, int olddfd, const char *oldpath, int newdfd,
                      const char *newpath, unsigned flags, uint64_t ud, unsigned sf);
int txu_prep_unlinkat(struct txu_ring *r, int dfd, const char *path, int flags,
                      uint64_t ud, unsigned sf);
int txu_prep_mkdirat(struct txu_ring *r, int dfd, const char *path, unsigned mode,
                     uint64_t ud, unsigned sf);
int txu_prep_symlinkat(struct txu_ring *r, const char *target, int newdfd,
                       const char *linkpath, uint64_t ud, unsigned sf);
int txu_prep_linkat(struct txu_ring *r, int olddfd, const char *oldpath, int newdfd,
                    const char *newpath, int flags, uint64_t ud, unsigned sf);
int txu_prep_splice(struct txu_ring *r, int fd_in, int64_t off_in, int fd_out,
                    int64_t off_out, unsigned nbytes, unsigned splice_flags,
                    uint64_t ud, unsigned sf);
int txu_prep_tee(struct txu_ring *r, int fd_in, int fd_out, unsigned nbytes,
                 unsigned splice_flags, uint64_t ud, unsigned sf);
int txu_prep_socket(struct txu_ring *r, int domain, int type, int protocol,
                    uint64_t ud, unsigned sf);
int txu_prep_bind(struct txu_ring *r, int fd, const struct sockaddr *addr, unsigned addrlen,
                  uint64_t ud, unsigned sf);
int txu_prep_listen(struct txu_ring *r, int fd, int backlog, uint64_t ud, unsigned sf);
int txu_prep_connect(struct txu_ring *r, int fd, const struct sockaddr *addr,
                     unsigned addrlen, uint64_t ud, unsigned sf);
int txu_prep_accept(struct txu_ring *r, int fd, struct sockaddr *addr, socklen_t *addrlen,
                    int flags, int multishot, uint64_t ud, unsigned sf);
int txu_prep_shutdown(struct txu_ring *r, int fd, int how, uint64_t ud, unsigned sf);
int txu_prep_send(struct txu_ring *r, int fd, const void *buf, unsigned len, int flags,
                  uint64_t ud, unsigned sf);
int txu_prep_send_zc(struct txu_ring *r, int fd, const void *buf, unsigned len, int flags,
                     unsigned zc_flags, uint64_t ud, unsigned sf);
int txu_prep_recv(struct txu_ring *r, int fd, void *buf, unsigned len, int flags,
                  uint64_t ud, unsigned sf);
int txu_prep_recv_multishot(struct txu_ring *r, int fd, unsigned short bgid, int flags,
                            uint64_t ud, unsigned sf);
int txu_prep_sendmsg(struct txu_ring *r, int fd, const struct msghdr *msg, int flags,
                     uint64_t ud, unsigned sf);
int txu_prep_recvmsg(struct txu_ring *r, int fd, struct msghdr *msg, int flags,
                     uint64_t ud, unsigned sf);

size_t txu_cmsg_space_fds(unsigned nfds);
size_t txu_cmsg_len_fds(unsigned nfds);
int txu_cmsg_put_fds(struct msghdr *msg, const int *fds, unsigned nfds);
int txu_cmsg_get_fds(struct msghdr *msg, int *out, unsigned max);

/* ---- lean path for txuring's own transports (txuring/tcp.py) ---- */
int txu_lean_recv(struct txu_ring *r, int fd, unsigned short bgid, unsigned mode,
                  uint64_t ud, unsigned sf);
int txu_lean_send(struct txu_ring *r, int fd, const char *buf, size_t off, unsigned len,
                  uint64_t ud, unsigned sf);
int txu_lean_cancel(struct txu_ring *r, uint64_t target, uint64_t ud, unsigned sf);
int txu_lean_read(struct txu_ring *r, int fd, char *buf, unsigned len, uint64_t off,
                  uint64_t ud, unsigned sf);
int txu_lean_open(struct txu_ring *r, int dfd, const char *path, int flags, unsigned mode,
                  uint64_t ud, unsigned sf);
int txu_lean_read_close(struct txu_ring *r, int fd, char *buf, unsigned len,
                        uint64_t close_ud, uint64_t ud, unsigned sf);
int txu_fstat_cached(int fd, uint64_t *size);
int txu_openat2_now(int dfd, const char *path, uint64_t flags, uint64_t resolve);
int txu_bufring_recycle_many(struct txu_bufring *b, const uint16_t *bids, unsigned n);
#define TXU_BUNDLE_CONTIGUOUS ...
#define TXU_RECVSEND_BUNDLE ...
int txu_bufring_bundle(struct txu_bufring *b, unsigned bid, int res, uint16_t *out,
                       unsigned max);
"""

_here = os.path.dirname(os.path.abspath(__file__))

#: TXURING_SANITIZE=1 builds the core with AddressSanitizer and UndefinedBehaviorSanitizer
#: (see scripts/sanitize.sh, which also preloads their runtimes into Python).
_SANITIZE = ["-fsanitize=address,undefined", "-fno-sanitize-recover=undefined",
             "-fno-omit-frame-pointer", "-g"] if os.environ.get("TXURING_SANITIZE") else []

ffibuilder = FFI()
ffibuilder.cdef(CDEF)
with open(os.path.join(_here, "csrc", "core.c")) as _f:
    ffibuilder.set_source(
        "txuring._core",
        _f.read(),
        extra_compile_args=["-O2", "-Wall", "-Wno-unused-function"] + _SANITIZE,
        extra_link_args=_SANITIZE,
    )

if __name__ == "__main__":
    # tmpdir is the project root: cffi writes txuring/_core.c (generated) and the .so there.
    ffibuilder.compile(tmpdir=os.path.dirname(_here), verbose=True)
