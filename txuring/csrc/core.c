/*
 * txuring._core: the C half of txuring, compiled by cffi in API mode.
 *
 * Why C at all: an SQE is 64 bytes of kernel ABI that must be filled and published
 * with the right memory ordering, and a CQE batch must be copied out and the head
 * advanced once. Doing that through cffi field accesses would cost a Python-level
 * attribute store per field; doing it here costs one border crossing per op and one
 * per batch of completions.
 *
 * Rules this file keeps:
 *   - it talks to the kernel directly (io_uring_setup/enter/register + mmap), no liburing;
 *   - it never allocates Python objects and never calls back into Python;
 *   - every prep function fills exactly one SQE and returns 0, or -EBUSY when the SQ
 *     is full (the Python side keeps a FIFO overflow queue, so nothing is ever lost);
 *   - it checks its own state instead of trusting a pointer: every entry point on a
 *     closed ring (rings unmapped), a ring inherited by a fork child, or a closed buffer
 *     ring answers -EBADFD (or 0 for a count) and touches no memory. Python turns that
 *     into a clear exception; a mistake above this file can not become a segfault or a
 *     write into the parent's ring.
 *
 * Memory ordering (io_uring(7)): the kernel reads sq.tail with acquire semantics, so the
 * SQE contents must be visible before the tail store: store-release on sq.tail. The
 * kernel writes CQEs and then store-releases cq.tail; we load-acquire cq.tail, read the
 * CQEs, then store-release cq.head so the kernel may reuse the slots.
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/uio.h>
#include <time.h>
#include <unistd.h>
#include <netinet/in.h>
#include <sys/un.h>
#include <linux/io_uring.h>
#include <linux/openat2.h>
#include <linux/stat.h>
#include <linux/time_types.h>

/* ---- constants newer than the oldest header we build against (ABI values) ---- */
#ifndef __NR_io_uring_setup
#define __NR_io_uring_setup 425
#define __NR_io_uring_enter 426
#define __NR_io_uring_register 427
#endif
#ifndef IORING_SETUP_NO_SQARRAY
#define IORING_SETUP_NO_SQARRAY (1U << 16) /* 6.6 */
#endif
/* IORING_RECVSEND_BUNDLE (6.10, with IORING_FEAT_RECVSEND_BUNDLE = 1 << 14) */
#define TXU_RECVSEND_BUNDLE (1U << 4)
#ifndef IORING_FEAT_REG_REG_RING
#define IORING_FEAT_REG_REG_RING (1U << 13) /* 6.3 */
#endif
/* Opcodes after IORING_OP_SENDMSG_ZC (48, 6.1). */
#define TXU_OP_READ_MULTISHOT 49 /* 6.7 */
#define TXU_OP_WAITID 50         /* 6.7 */
#define TXU_OP_FUTEX_WAIT 51     /* 6.7 */
#define TXU_OP_FUTEX_WAKE 52     /* 6.7 */
#define TXU_OP_FUTEX_WAITV 53    /* 6.7 */
#define TXU_OP_FIXED_FD_INSTALL 54 /* 6.8 */
#define TXU_OP_FTRUNCATE 55      /* 6.9 */
#define TXU_OP_BIND 56           /* 6.11 */
#define TXU_OP_LISTEN 57         /* 6.11 */

/* user_data the core reserves for its own wait-timeout SQEs (the pre-EXT_ARG way to
 * bound a wait); harvest() drops their CQEs. The Python side never issues this id. */
#define TXU_UD_WAIT_TIMEOUT 0xffffffffffffffffULL

struct txu_ring {
    int fd;
    /* Set (by the Python at-fork hook) in a fork child: the mappings are shared with
     * the parent, so the child must never write them nor register through the fd. */
    int forked;
    unsigned setup_flags;
    unsigned features;
    unsigned sq_entries;
    unsigned cq_entries;
    /* submission queue */
    unsigned *sq_khead;
    unsigned *sq_ktail;
    unsigned *sq_kflags;
    unsigned *sq_kdropped;
    unsigned *sq_array;
    unsigned sq_mask;
    struct io_uring_sqe *sqes;
    unsigned sqe_head; /* first SQE not yet published to the kernel */
    unsigned sqe_tail; /* next free SQE slot */
    /* completion queue */
    unsigned *cq_khead;
    unsigned *cq_ktail;
    unsigned *cq_koverflow;
    unsigned *cq_kflags;
    unsigned cq_mask;
    struct io_uring_cqe *cqes;
    /* mappings */
    void *sq_ring_ptr;
    size_t sq_ring_sz;
    void *cq_ring_ptr;
    size_t cq_ring_sz;
    size_t sqes_sz;
    /* the wait timeout when the kernel has no EXT_ARG: copied by the kernel at submit */
    struct __kernel_timespec wait_ts;
    unsigned long long wait_timeouts_pending;
    /* counters for stats() */
    unsigned long long enters;
    unsigned long long submitted;
    unsigned long long harvested;
    /* The last harvested batch: harvest() sets batch_n and batch_next = 0 in the same C
     * call that moves the CQ head, and Python advances batch_next as it dispatches. So
     * an exception (a signal handler's KeyboardInterrupt) landing between two CQEs
     * leaves the rest of the batch here for the next fill_completions(), never lost. */
    unsigned batch_n;
    unsigned batch_next;
};

/* The ring can be used by this process: mapped, open, and not a fork child's copy. */
#define RING_OK(r) ((r)->sq_ring_ptr != NULL && !(r)->forked)

static long sys_setup(unsigned entries, struct io_uring_params *p)
{
    return syscall(__NR_io_uring_setup, entries, p);
}

static long sys_enter(int fd, unsigned to_submit, unsigned min_complete, unsigned flags,
                      const void *arg, size_t argsz)
{
    return syscall(__NR_io_uring_enter, fd, to_submit, min_complete, flags, arg, argsz);
}

static int txu_register(struct txu_ring *r, unsigned opcode, void *arg, unsigned nr_args)
{
    if (!RING_OK(r))
        return -EBADFD;
    long ret = syscall(__NR_io_uring_register, r->fd, opcode, arg, nr_args);
    return ret < 0 ? -errno : (int)ret;
}

static void txu_unmap(struct txu_ring *r)
{
    if (r->sqes && r->sqes != MAP_FAILED)
        munmap(r->sqes, r->sqes_sz);
    if (r->cq_ring_ptr && r->cq_ring_ptr != r->sq_ring_ptr && r->cq_ring_ptr != MAP_FAILED)
        munmap(r->cq_ring_ptr, r->cq_ring_sz);
    if (r->sq_ring_ptr && r->sq_ring_ptr != MAP_FAILED)
        munmap(r->sq_ring_ptr, r->sq_ring_sz);
    r->sqes = NULL;
    r->cq_ring_ptr = r->sq_ring_ptr = NULL;
}

/* Create a ring. Returns 0 or -errno; on error nothing is left open or mapped. */
static int txu_setup(struct txu_ring *r, unsigned entries, unsigned cq_entries,
                     unsigned flags, unsigned sq_thread_idle)
{
    struct io_uring_params p;
    long fd;

    memset(r, 0, sizeof *r);
    r->fd = -1;
    memset(&p, 0, sizeof p);
    p.flags = flags | IORING_SETUP_CQSIZE;
    p.cq_entries = cq_entries;
    p.sq_thread_idle = sq_thread_idle;
    fd = sys_setup(entries, &p);
    if (fd < 0)
        return -errno;
    r->fd = (int)fd;
    r->setup_flags = p.flags;
    r->features = p.features;
    r->sq_entries = p.sq_entries;
    r->cq_entries = p.cq_entries;

    r->sq_ring_sz = p.sq_off.array + p.sq_entries * sizeof(unsigned);
    r->cq_ring_sz = p.cq_off.cqes + p.cq_entries * sizeof(struct io_uring_cqe);
    /* IORING_FEAT_SINGLE_MMAP (5.4): both rings live in one mapping. */
    if (p.features & IORING_FEAT_SINGLE_MMAP) {
        if (r->cq_ring_sz > r->sq_ring_sz)
            r->sq_ring_sz = r->cq_ring_sz;
        r->cq_ring_sz = r->sq_ring_sz;
    }
    r->sq_ring_ptr = mmap(NULL, r->sq_ring_sz, PROT_READ | PROT_WRITE,
                          MAP_SHARED | MAP_POPULATE, r->fd, IORING_OFF_SQ_RING);
    if (r->sq_ring_ptr == MAP_FAILED)
        goto fail;
    if (p.features & IORING_FEAT_SINGLE_MMAP) {
        r->cq_ring_ptr = r->sq_ring_ptr;
    } else {
        r->cq_ring_ptr = mmap(NULL, r->cq_ring_sz, PROT_READ | PROT_WRITE,
                              MAP_SHARED | MAP_POPULATE, r->fd, IORING_OFF_CQ_RING);
        if (r->cq_ring_ptr == MAP_FAILED)
            goto fail;
    }
    r->sqes_sz = p.sq_entries * sizeof(struct io_uring_sqe);
    r->sqes = mmap(NULL, r->sqes_sz, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_POPULATE,
                   r->fd, IORING_OFF_SQES);
    if (r->sqes == MAP_FAILED)
        goto fail;

    char *sq = r->sq_ring_ptr, *cq = r->cq_ring_ptr;
    r->sq_khead = (unsigned *)(sq + p.sq_off.head);
    r->sq_ktail = (unsigned *)(sq + p.sq_off.tail);
    r->sq_mask = *(unsigned *)(sq + p.sq_off.ring_mask);
    r->sq_kflags = (unsigned *)(sq + p.sq_off.flags);
    r->sq_kdropped = (unsigned *)(sq + p.sq_off.dropped);
    r->sq_array = (unsigned *)(sq + p.sq_off.array);
    r->cq_khead = (unsigned *)(cq + p.cq_off.head);
    r->cq_ktail = (unsigned *)(cq + p.cq_off.tail);
    r->cq_mask = *(unsigned *)(cq + p.cq_off.ring_mask);
    r->cq_koverflow = (unsigned *)(cq + p.cq_off.overflow);
    r->cq_kflags = p.cq_off.flags ? (unsigned *)(cq + p.cq_off.flags) : NULL;
    r->cqes = (struct io_uring_cqe *)(cq + p.cq_off.cqes);
    /* The SQ index array maps ring slots to SQE slots; we keep it the identity. */
    for (unsigned i = 0; i < r->sq_entries; i++)
        r->sq_array[i] = i;
    r->sqe_head = r->sqe_tail = *r->sq_khead;
    return 0;

fail:;
    int err = errno;
    txu_unmap(r);
    close(r->fd);
    r->fd = -1;
    return -err;
}

static void txu_close(struct txu_ring *r)
{
    txu_unmap(r);
    if (r->fd >= 0)
        close(r->fd);
    r->fd = -1;
}

/* ---- submission ---- */

static unsigned txu_sq_flags(struct txu_ring *r)
{
    if (!RING_OK(r))
        return 0;
    return __atomic_load_n(r->sq_kflags, __ATOMIC_ACQUIRE);
}

static unsigned txu_cq_ready(struct txu_ring *r)
{
    if (!RING_OK(r))
        return 0;
    return __atomic_load_n(r->cq_ktail, __ATOMIC_ACQUIRE) - *r->cq_khead;
}

static unsigned txu_sq_space(struct txu_ring *r)
{
    if (!RING_OK(r))
        return 0;
    unsigned head = __atomic_load_n(r->sq_khead, __ATOMIC_ACQUIRE);
    return r->sq_entries - (r->sqe_tail - head);
}

/* SQEs prepared but not yet taken by the kernel. */
static unsigned txu_sq_ready(struct txu_ring *r)
{
    if (!RING_OK(r))
        return 0;
    return r->sqe_tail - __atomic_load_n(r->sq_khead, __ATOMIC_ACQUIRE);
}

static struct io_uring_sqe *get_sqe(struct txu_ring *r)
{
    unsigned head = __atomic_load_n(r->sq_khead, __ATOMIC_ACQUIRE);
    if (r->sqe_tail - head >= r->sq_entries)
        return NULL;
    struct io_uring_sqe *sqe = &r->sqes[r->sqe_tail & r->sq_mask];
    r->sqe_tail++;
    memset(sqe, 0, sizeof *sqe);
    return sqe;
}

/* Take back the last n SQEs prepared and not yet published (a linked chain whose
 * later op could not be prepared: its earlier SQEs' IOSQE_IO_LINK would otherwise
 * chain them to whatever op comes next). */
static int txu_sq_rollback(struct txu_ring *r, unsigned n)
{
    if (!RING_OK(r))
        return -EBADFD;
    if (r->sqe_tail - r->sqe_head < n)
        return -EINVAL;
    r->sqe_tail -= n;
    return 0;
}

/* An fd is about to be closed: every SQE prepared and not yet taken by the kernel
 * that names it (by number, not a fixed file) is made to name fd -1 instead, so that
 * it completes with -EBADF. Kernel fact: an SQE's fd is looked up when the kernel
 * takes the SQE (io_uring_enter), not when it is written; closed first, the number
 * could by then belong to another file (the next accept or socket gets the lowest
 * free number), and the op would act on that one: a send of one connection's bytes
 * to another's peer, a recv taking another connection's bytes. Cancels (whose fd is
 * a match key) are left alone. Not for SQPOLL rings, whose kernel thread reads
 * published SQEs at any time. Returns how many SQEs were changed. */
static int txu_sq_forget_fd(struct txu_ring *r, int fd)
{
    if (!RING_OK(r) || fd < 0 || (r->setup_flags & IORING_SETUP_SQPOLL))
        return 0;
    unsigned head = __atomic_load_n(r->sq_khead, __ATOMIC_ACQUIRE);
    int n = 0;
    for (unsigned i = head; i != r->sqe_tail; i++) {
        struct io_uring_sqe *sqe = &r->sqes[i & r->sq_mask];
        if (sqe->fd == fd && !(sqe->flags & IOSQE_FIXED_FILE) &&
            sqe->opcode != IORING_OP_ASYNC_CANCEL) {
            sqe->fd = -1;
            n++;
        }
    }
    return n;
}

/* Make every prepared SQE visible to the kernel; returns how many are pending. */
static unsigned flush_sq(struct txu_ring *r)
{
    if (r->sqe_head != r->sqe_tail) {
        r->sqe_head = r->sqe_tail;
        __atomic_store_n(r->sq_ktail, r->sqe_tail, __ATOMIC_RELEASE);
    }
    return r->sqe_tail - __atomic_load_n(r->sq_khead, __ATOMIC_ACQUIRE);
}

static unsigned enter_flags(struct txu_ring *r, unsigned flags)
{
    if (r->setup_flags & IORING_SETUP_SQPOLL) {
        /* Full barrier between the tail store (flush_sq) and the flags load: else the
         * SQ thread may set NEED_WAKEUP after reading the old tail and sleep while we
         * read stale flags and skip the wakeup (liburing's io_uring_smp_mb here). */
        __atomic_thread_fence(__ATOMIC_SEQ_CST);
        /* The SQ thread sleeps after sq_thread_idle ms and must then be woken. */
        if (__atomic_load_n(r->sq_kflags, __ATOMIC_ACQUIRE) & IORING_SQ_NEED_WAKEUP)
            flags |= IORING_ENTER_SQ_WAKEUP;
    }
    return flags;
}

/*
 * One io_uring_enter that submits everything prepared and, with min_complete > 0, waits
 * until that many CQEs are ready or timeout_ns passes (timeout_ns < 0: no limit).
 * With IORING_SETUP_DEFER_TASKRUN completions are only posted while the owner enters
 * with GETEVENTS, so GETEVENTS is always passed. use_ext_arg selects the 5.11 way of
 * bounding the wait; without it a timeout SQE with TXU_UD_WAIT_TIMEOUT does the job.
 * Returns the number submitted (>= 0) or -errno; -ETIME (timed out) and -EINTR (a signal
 * arrived: Python should run its handlers) are for the caller to interpret.
 */
static int txu_submit_and_wait(struct txu_ring *r, unsigned min_complete,
                               long long timeout_ns, int use_ext_arg)
{
    struct io_uring_getevents_arg arg;
    struct __kernel_timespec ts;
    const void *argp = NULL;
    size_t argsz = 0;
    unsigned flags = IORING_ENTER_GETEVENTS;

    if (!RING_OK(r))
        return -EBADFD;
    if (min_complete > 0 && timeout_ns >= 0) {
        if (use_ext_arg) {
            ts.tv_sec = timeout_ns / 1000000000LL;
            ts.tv_nsec = timeout_ns % 1000000000LL;
            memset(&arg, 0, sizeof arg);
            arg.sigmask_sz = _NSIG / 8;
            arg.ts = (uint64_t)(uintptr_t)&ts;
            argp = &arg;
            argsz = sizeof arg;
            flags |= IORING_ENTER_EXT_ARG;
        } else {
            struct io_uring_sqe *sqe = get_sqe(r);
            if (!sqe) {
                /* Make room: hand the kernel what is queued, then add the timeout. */
                unsigned n = flush_sq(r);
                long ret = sys_enter(r->fd, n, 0, enter_flags(r, IORING_ENTER_GETEVENTS), NULL, 0);
                if (ret < 0)
                    return -errno;
                sqe = get_sqe(r);
                if (!sqe)
                    return -EBUSY;
            }
            r->wait_ts.tv_sec = timeout_ns / 1000000000LL;
            r->wait_ts.tv_nsec = timeout_ns % 1000000000LL;
            sqe->opcode = IORING_OP_TIMEOUT;
            sqe->fd = -1;
            sqe->addr = (uint64_t)(uintptr_t)&r->wait_ts;
            sqe->len = 1;
            /* Count min_complete: the timeout also ends as soon as that many CQEs are
             * posted, so it never outlives this wait to cut a later one short (the
             * way liburing bounds waits before EXT_ARG). */
            sqe->off = min_complete;
            sqe->user_data = TXU_UD_WAIT_TIMEOUT;
            r->wait_timeouts_pending++;
        }
    }
    unsigned to_submit = flush_sq(r);
    r->enters++;
    long ret = sys_enter(r->fd, to_submit, min_complete, enter_flags(r, flags), argp, argsz);
    if (ret < 0)
        return -errno;
    r->submitted += (unsigned long long)ret;
    return (int)ret;
}

/*
 * CQEs ready for the caller. Without EXT_ARG a wait is bounded by a timeout SQE whose
 * CQE (TXU_UD_WAIT_TIMEOUT) wakes the wait: consume those at the head of the CQ, so a
 * wait that only timed out reports 0 (harvest() would drop them anyway).
 */
static unsigned cq_ready_for_caller(struct txu_ring *r)
{
    unsigned head = *r->cq_khead;
    unsigned tail = __atomic_load_n(r->cq_ktail, __ATOMIC_ACQUIRE);
    unsigned start = head;
    if (!r->wait_timeouts_pending)
        return tail - head;
    while (head != tail && r->cqes[head & r->cq_mask].user_data == TXU_UD_WAIT_TIMEOUT) {
        head++;
        if (r->wait_timeouts_pending)
            r->wait_timeouts_pending--;
    }
    if (head != start)
        __atomic_store_n(r->cq_khead, head, __ATOMIC_RELEASE);
    return tail - head;
}

/*
 * The loop's wait, the one io_uring_enter of an iteration: submit what is prepared and
 * wait up to timeout_ns (< 0: no limit, 0: do not wait) for a completion.
 * Returns the number of CQEs ready, or -errno (-EINTR: a signal arrived).
 *
 * A zero-timeout wait with nothing to submit skips the system call when the kernel
 * says no enter is needed: with IORING_SETUP_TASKRUN_FLAG (5.19) it sets
 * IORING_SQ_TASKRUN in sq_flags while task work (completions DEFER_TASKRUN holds back)
 * is pending, and IORING_SQ_CQ_OVERFLOW while CQEs wait in its overflow list.
 */
static int txu_wait(struct txu_ring *r, long long timeout_ns, int use_ext_arg, int taskrun_flag)
{
    if (!RING_OK(r))
        return -EBADFD;
    unsigned ready = cq_ready_for_caller(r);
    /* Not taken by the kernel yet: unpublished, or left by an enter that failed. */
    int pending = txu_sq_ready(r) != 0;
    int ret;

    if (ready) {
        if (pending) {
            ret = txu_submit_and_wait(r, 0, -1, use_ext_arg);
            if (ret < 0 && ret != -EINTR && ret != -EBUSY && ret != -EAGAIN)
                return ret;
        }
        return (int)cq_ready_for_caller(r);
    }
    if (timeout_ns == 0) {
        if (!pending && taskrun_flag &&
            !(txu_sq_flags(r) & (IORING_SQ_TASKRUN | IORING_SQ_CQ_OVERFLOW)))
            return 0;
        ret = txu_submit_and_wait(r, 0, -1, use_ext_arg);
    } else {
        ret = txu_submit_and_wait(r, 1, timeout_ns, use_ext_arg);
    }
    /* ETIME: timed out. EBUSY/EAGAIN: CQEs are backed up; the caller harvests them. */
    if (ret < 0 && ret != -ETIME && ret != -EBUSY && ret != -EAGAIN)
        return ret;
    return (int)cq_ready_for_caller(r);
}

/* ---- completion ---- */


/*
 * Copy up to max CQEs into the three arrays and advance the CQ head once; record the
 * batch (batch_n, batch_next = 0) in the same call, so Python can never lose it to an
 * exception raised between the return and its first dispatch. Refuses (-EBUSY) while
 * the previous batch is not fully dispatched: its entries would be overwritten.
 * CQEs of the core's own wait timeouts are consumed and not reported.
 */
static int txu_harvest(struct txu_ring *r, uint64_t *user_data, int32_t *res,
                       uint32_t *flags, unsigned max)
{
    if (!RING_OK(r))
        return 0;
    if (r->batch_next < r->batch_n)
        return -EBUSY;
    unsigned head = *r->cq_khead;
    unsigned tail = __atomic_load_n(r->cq_ktail, __ATOMIC_ACQUIRE);
    unsigned n = 0;
    if (head == tail && (txu_sq_flags(r) & IORING_SQ_CQ_OVERFLOW)) {
        /* IORING_FEAT_NODROP (5.5): CQEs that did not fit wait in the kernel; an
         * enter with GETEVENTS moves them into the CQ. */
        r->enters++;
        sys_enter(r->fd, 0, 0, IORING_ENTER_GETEVENTS, NULL, 0);
        tail = __atomic_load_n(r->cq_ktail, __ATOMIC_ACQUIRE);
    }
    while (head != tail && n < max) {
        struct io_uring_cqe *cqe = &r->cqes[head & r->cq_mask];
        head++;
        if (cqe->user_data == TXU_UD_WAIT_TIMEOUT) {
            if (r->wait_timeouts_pending)
                r->wait_timeouts_pending--;
            continue;
        }
        user_data[n] = cqe->user_data;
        res[n] = cqe->res;
        flags[n] = cqe->flags;
        n++;
    }
    __atomic_store_n(r->cq_khead, head, __ATOMIC_RELEASE);
    r->batch_n = n;
    r->batch_next = 0;
    r->harvested += n;
    return (int)n;
}

static unsigned txu_cq_overflow(struct txu_ring *r)
{
    if (!RING_OK(r))
        return 0;
    return __atomic_load_n(r->cq_koverflow, __ATOMIC_ACQUIRE);
}

static unsigned txu_sq_dropped(struct txu_ring *r)
{
    if (!RING_OK(r))
        return 0;
    return __atomic_load_n(r->sq_kdropped, __ATOMIC_ACQUIRE);
}


/* ---- registration ---- */

static int txu_register_eventfd(struct txu_ring *r, int efd)
{
    return txu_register(r, IORING_REGISTER_EVENTFD, &efd, 1);
}

static int txu_unregister_eventfd(struct txu_ring *r)
{
    return txu_register(r, IORING_UNREGISTER_EVENTFD, NULL, 0);
}

static int txu_register_buffers(struct txu_ring *r, const struct iovec *iov, unsigned nr)
{
    return txu_register(r, IORING_REGISTER_BUFFERS, (void *)iov, nr);
}

static int txu_unregister_buffers(struct txu_ring *r)
{
    return txu_register(r, IORING_UNREGISTER_BUFFERS, NULL, 0);
}

static int txu_enable_rings(struct txu_ring *r)
{
    return txu_register(r, IORING_REGISTER_ENABLE_RINGS, NULL, 0);
}

/* values[0] bounded workers, values[1] unbounded; 0 leaves a limit as it is.
 * On return they hold the previous limits. */
static int txu_register_iowq_max_workers(struct txu_ring *r, unsigned *values)
{
    return txu_register(r, IORING_REGISTER_IOWQ_MAX_WORKERS, values, 2);
}

/* Fill supported[op] = 1 for each op the running kernel knows. Returns last_op + 1
 * (the number of opcodes it knows about) or -errno. */
static int txu_probe(struct txu_ring *r, unsigned char *supported, unsigned nsupported)
{
    size_t sz = sizeof(struct io_uring_probe) + 256 * sizeof(struct io_uring_probe_op);
    char buf[sizeof(struct io_uring_probe) + 256 * sizeof(struct io_uring_probe_op)];
    struct io_uring_probe *p = (struct io_uring_probe *)buf;
    memset(buf, 0, sz);
    int ret = txu_register(r, IORING_REGISTER_PROBE, p, 256);
    if (ret < 0)
        return ret;
    memset(supported, 0, nsupported);
    for (unsigned i = 0; i < p->ops_len && i < 256; i++) {
        unsigned op = p->ops[i].op;
        if (op < nsupported && (p->ops[i].flags & IO_URING_OP_SUPPORTED))
            supported[op] = 1;
    }
    return p->last_op + 1;
}

/* ---- provided buffer rings (5.19) ---- */

/*
 * The ring of buffer descriptors is ours (user memory the kernel pins at registration);
 * the buffers are one block of Python memory (base, entries * size) that the Python
 * side keeps alive for as long as any op may use the group.
 *
 * Ownership, per buffer id: PUBLISHED (in the ring: the kernel's), DELIVERED (a CQE
 * carrying it was dispatched: deliver(), called by the op's Handle, idempotent), or
 * LENT (handed to the caller by lend(), until it hands it back with provide()). Only a
 * DELIVERED buffer can be taken or lent, so a CQE taken twice, or flags made up,
 * can never publish a buffer the kernel already holds. Only this file computes a buffer's address, from a
 * range-checked id: the kernel can never be told to write outside the block, and a
 * buffer can never be published twice through provide().
 */
#define TXU_BUF_PUBLISHED 0
#define TXU_BUF_LENT 1
#define TXU_BUF_DELIVERED 2

struct txu_bufring {
    struct io_uring_buf_ring *br;
    size_t size;
    unsigned entries; /* power of two */
    unsigned mask;
    unsigned short bgid;
    char *base;          /* buffer i is base + i * buf_size */
    unsigned buf_size;
    unsigned char *state; /* TXU_BUF_* per buffer id */
    unsigned lent;        /* how many are LENT */
    /* The ring's order, for bundles: succ[i] is the buffer published right after
     * buffer i (the next slot of the ring), last the buffer published last (-1: none
     * yet). A bundle CQE names only its first buffer; the kernel took the others from
     * the following slots (see txu_bufring_bundle). */
    unsigned short *succ;
    int last;
};

/* Put buffer bid (checked by the caller) in the ring's next slot, not yet visible to
 * the kernel (the caller moves the tail), and note the ring order for bundles. */
static void bufring_place(struct txu_bufring *b, unsigned short tail, unsigned short bid)
{
    struct io_uring_buf *buf = &b->br->bufs[tail & b->mask];
    buf->addr = (uint64_t)(uintptr_t)(b->base + (size_t)bid * b->buf_size);
    buf->len = b->buf_size;
    buf->bid = bid;
    if (b->last >= 0)
        b->succ[b->last] = bid;
    b->last = bid;
}

static void bufring_publish(struct txu_bufring *b, unsigned short bid)
{
    unsigned short tail = b->br->tail;
    bufring_place(b, tail, bid);
    __atomic_store_n(&b->br->tail, (unsigned short)(tail + 1), __ATOMIC_RELEASE);
}

/* Register buffer group bgid over entries buffers of buf_size bytes at base, every one
 * of them published. Returns 0 or -errno; on error nothing is left registered. */
static int txu_bufring_setup(struct txu_ring *r, struct txu_bufring *b, unsigned entries,
                             unsigned short bgid, char *base, unsigned buf_size)
{
    struct io_uring_buf_reg reg;
    memset(b, 0, sizeof *b);
    if (entries == 0 || (entries & (entries - 1)) || entries > 32768 || buf_size == 0)
        return -EINVAL;
    b->last = -1;
    b->state = calloc(entries, 1);
    b->succ = calloc(entries, sizeof *b->succ);
    if (!b->state || !b->succ) {
        free(b->state);
        free(b->succ);
        b->state = NULL;
        b->succ = NULL;
        return -ENOMEM;
    }
    b->size = entries * sizeof(struct io_uring_buf);
    b->br = mmap(NULL, b->size, PROT_READ | PROT_WRITE, MAP_ANONYMOUS | MAP_PRIVATE, -1, 0);
    if (b->br == MAP_FAILED) {
        int err = errno;
        b->br = NULL;
        free(b->state);
        free(b->succ);
        b->state = NULL;
        b->succ = NULL;
        return -err;
    }
    b->entries = entries;
    b->mask = entries - 1;
    b->bgid = bgid;
    b->base = base;
    b->buf_size = buf_size;
    memset(&reg, 0, sizeof reg);
    reg.ring_addr = (uint64_t)(uintptr_t)b->br;
    reg.ring_entries = entries;
    reg.bgid = bgid;
    int ret = txu_register(r, IORING_REGISTER_PBUF_RING, &reg, 1);
    if (ret < 0) {
        munmap(b->br, b->size);
        b->br = NULL;
        free(b->state);
        free(b->succ);
        b->state = NULL;
        b->succ = NULL;
        return ret;
    }
    for (unsigned i = 0; i < entries; i++)
        bufring_publish(b, (unsigned short)i);
    return 0;
}

/* Unregister (not from a fork child: the fd is the parent's ring) and unmap. */
static int txu_bufring_free(struct txu_ring *r, struct txu_bufring *b)
{
    struct io_uring_buf_reg reg;
    int ret = 0;
    if (!b->br)
        return 0;
    memset(&reg, 0, sizeof reg);
    reg.bgid = b->bgid;
    if (RING_OK(r))
        ret = txu_register(r, IORING_UNREGISTER_PBUF_RING, &reg, 1);
    munmap(b->br, b->size);
    b->br = NULL;
    free(b->state);
    free(b->succ);
    b->state = NULL;
    b->succ = NULL;
    return ret;
}

/* -EBADFD closed, -EINVAL an id out of range, else 0. */
static int bufring_check(struct txu_bufring *b, unsigned bid)
{
    if (!b->br)
        return -EBADFD;
    if (bid >= b->entries)
        return -EINVAL;
    return 0;
}

/* A dispatched CQE carried buffer bid (PUBLISHED -> DELIVERED; again: no change).
 * -EALREADY if the caller holds it lent: the kernel can not have used it. */
static int txu_bufring_deliver(struct txu_bufring *b, unsigned bid)
{
    int err = bufring_check(b, bid);
    if (err)
        return err;
    if (b->state[bid] == TXU_BUF_LENT)
        return -EALREADY;
    b->state[bid] = TXU_BUF_DELIVERED;
    return 0;
}

/* A delivered buffer goes to the caller (DELIVERED -> LENT); -EALREADY otherwise. */
static int txu_bufring_lend(struct txu_bufring *b, unsigned bid)
{
    int err = bufring_check(b, bid);
    if (err)
        return err;
    if (b->state[bid] != TXU_BUF_DELIVERED)
        return -EALREADY;
    b->state[bid] = TXU_BUF_LENT;
    b->lent++;
    return 0;
}

/* The caller hands a lent buffer back (LENT -> PUBLISHED); -EALREADY if it was not lent. */
static int txu_bufring_provide(struct txu_bufring *b, unsigned bid)
{
    int err = bufring_check(b, bid);
    if (err)
        return err;
    if (b->state[bid] != TXU_BUF_LENT)
        return -EALREADY;
    b->state[bid] = TXU_BUF_PUBLISHED;
    b->lent--;
    bufring_publish(b, (unsigned short)bid);
    return 0;
}

/* A delivered buffer, copied out by the caller, goes straight back to the kernel
 * (DELIVERED -> PUBLISHED): take()'s one call. -EALREADY otherwise (not delivered:
 * the kernel's still, or taken already; or lent). */
static int txu_bufring_recycle(struct txu_bufring *b, unsigned bid)
{
    int err = bufring_check(b, bid);
    if (err)
        return err;
    if (b->state[bid] != TXU_BUF_DELIVERED)
        return -EALREADY;
    b->state[bid] = TXU_BUF_PUBLISHED;
    bufring_publish(b, (unsigned short)bid);
    return 0;
}

/* ---- SQE preparation: one function per op ---- */

#define PREP(r, op_, fd_, ud, sf)                        \
    if (!RING_OK(r))                                     \
        return -EBADFD;                                  \
    struct io_uring_sqe *sqe = get_sqe(r);               \
    if (!sqe)                                            \
        return -EBUSY;                                   \
    sqe->opcode = (op_);                                 \
    sqe->fd = (fd_);                                     \
    sqe->user_data = (ud);                               \
    sqe->flags = (unsigned char)(sf)

#define ADDR(p) ((uint64_t)(uintptr_t)(p))

static int txu_prep_nop(struct txu_ring *r, uint64_t ud, unsigned sf)
{
    PREP(r, IORING_OP_NOP, -1, ud, sf);
    return 0;
}

/* read/write/readv/writev/read_fixed/write_fixed share one layout. */
static int prep_rw(struct txu_ring *r, unsigned op, int fd, const void *addr, unsigned len,
                   uint64_t off, int rw_flags, uint64_t ud, unsigned sf)
{
    PREP(r, op, fd, ud, sf);
    sqe->addr = ADDR(addr);
    sqe->len = len;
    sqe->off = off;
    sqe->rw_flags = rw_flags;
    return 0;
}

static int txu_prep_read(struct txu_ring *r, int fd, void *buf, unsigned len, uint64_t off,
                         uint64_t ud, unsigned sf)
{
    return prep_rw(r, IORING_OP_READ, fd, buf, len, off, 0, ud, sf);
}

static int txu_prep_write(struct txu_ring *r, int fd, const void *buf, unsigned len,
                          uint64_t off, uint64_t ud, unsigned sf)
{
    return prep_rw(r, IORING_OP_WRITE, fd, buf, len, off, 0, ud, sf);
}

static int txu_prep_readv(struct txu_ring *r, int fd, const struct iovec *iov, unsigned n,
                          uint64_t off, int rw_flags, uint64_t ud, unsigned sf)
{
    return prep_rw(r, IORING_OP_READV, fd, iov, n, off, rw_flags, ud, sf);
}

static int txu_prep_writev(struct txu_ring *r, int fd, const struct iovec *iov, unsigned n,
                           uint64_t off, int rw_flags, uint64_t ud, unsigned sf)
{
    return prep_rw(r, IORING_OP_WRITEV, fd, iov, n, off, rw_flags, ud, sf);
}

static int txu_prep_read_fixed(struct txu_ring *r, int fd, void *buf, unsigned len,
                               uint64_t off, unsigned buf_index, uint64_t ud, unsigned sf)
{
    int ret = prep_rw(r, IORING_OP_READ_FIXED, fd, buf, len, off, 0, ud, sf);
    if (ret == 0)
        r->sqes[(r->sqe_tail - 1) & r->sq_mask].buf_index = (unsigned short)buf_index;
    return ret;
}

static int txu_prep_write_fixed(struct txu_ring *r, int fd, const void *buf, unsigned len,
                                uint64_t off, unsigned buf_index, uint64_t ud, unsigned sf)
{
    int ret = prep_rw(r, IORING_OP_WRITE_FIXED, fd, buf, len, off, 0, ud, sf);
    if (ret == 0)
        r->sqes[(r->sqe_tail - 1) & r->sq_mask].buf_index = (unsigned short)buf_index;
    return ret;
}

static int txu_prep_read_multishot(struct txu_ring *r, int fd, unsigned short bgid,
                                   uint64_t off, uint64_t ud, unsigned sf)
{
    PREP(r, TXU_OP_READ_MULTISHOT, fd, ud, sf | IOSQE_BUFFER_SELECT);
    sqe->off = off;
    sqe->buf_group = bgid;
    return 0;
}

static int txu_prep_fsync(struct txu_ring *r, int fd, unsigned fsync_flags, uint64_t off,
                          unsigned len, uint64_t ud, unsigned sf)
{
    PREP(r, IORING_OP_FSYNC, fd, ud, sf);
    sqe->fsync_flags = fsync_flags;
    sqe->off = off;
    sqe->len = len;
    return 0;
}

static int txu_prep_poll_add(struct txu_ring *r, int fd, unsigned events, int multishot,
                             uint64_t ud, unsigned sf)
{
    PREP(r, IORING_OP_POLL_ADD, fd, ud, sf);
    sqe->poll32_events = events; /* little-endian hosts; 32-bit events since 5.9 */
    if (multishot)
        sqe->len = IORING_POLL_ADD_MULTI;
    return 0;
}

static int txu_prep_poll_remove(struct txu_ring *r, uint64_t target, uint64_t ud, unsigned sf)
{
    PREP(r, IORING_OP_POLL_REMOVE, -1, ud, sf);
    sqe->addr = target;
    return 0;
}

static int txu_prep_timeout(struct txu_ring *r, struct __kernel_timespec *ts, unsigned count,
                            unsigned timeout_flags, uint64_t ud, unsigned sf)
{
    PREP(r, IORING_OP_TIMEOUT, -1, ud, sf);
    sqe->addr = ADDR(ts);
    sqe->len = 1;
    sqe->off = count;
    sqe->timeout_flags = timeout_flags;
    return 0;
}

static int txu_prep_timeout_remove(struct txu_ring *r, uint64_t target, uint64_t ud, unsigned sf)
{
    PREP(r, IORING_OP_TIMEOUT_REMOVE, -1, ud, sf);
    sqe->addr = target;
    return 0;
}

static int txu_prep_link_timeout(struct txu_ring *r, struct __kernel_timespec *ts,
                                 unsigned timeout_flags, uint64_t ud, unsigned sf)
{
    PREP(r, IORING_OP_LINK_TIMEOUT, -1, ud, sf);
    sqe->addr = ADDR(ts);
    sqe->len = 1;
    sqe->timeout_flags = timeout_flags;
    return 0;
}

/* cancel_flags: IORING_ASYNC_CANCEL_* ; target is user_data, or fd with CANCEL_FD. */
static int txu_prep_cancel(struct txu_ring *r, uint64_t target, int fd, unsigned cancel_flags,
                           uint64_t ud, unsigned sf)
{
    PREP(r, IORING_OP_ASYNC_CANCEL, fd, ud, sf);
    sqe->addr = target;
    sqe->cancel_flags = cancel_flags;
    return 0;
}

static int txu_prep_openat2(struct txu_ring *r, int dfd, const char *path, struct open_how *how,
                            uint64_t ud, unsigned sf)
{
    PREP(r, IORING_OP_OPENAT2, dfd, ud, sf);
    sqe->addr = ADDR(path);
    sqe->len = sizeof(struct open_how);
    sqe->off = ADDR(how);
    return 0;
}

static int txu_prep_close(struct txu_ring *r, int fd, uint64_t ud, unsigned sf)
{
    PREP(r, IORING_OP_CLOSE, fd, ud, sf);
    return 0;
}

static int txu_prep_statx(struct txu_ring *r, int dfd, const char *path, int at_flags,
                          unsigned mask, struct statx *out, uint64_t ud, unsigned sf)
{
    PREP(r, IORING_OP_STATX, dfd, ud, sf);
    sqe->addr = ADDR(path);
    sqe->len = mask;
    sqe->off = ADDR(out);
    sqe->statx_flags = (unsigned)at_flags;
    return 0;
}

static int txu_prep_fallocate(struct txu_ring *r, int fd, int mode, uint64_t off, uint64_t len,
                              uint64_t ud, unsigned sf)
{
    PREP(r, IORING_OP_FALLOCATE, fd, ud, sf);
    sqe->addr = len; /* the kernel takes the length in addr and the mode in len */
    sqe->len = (unsigned)mode;
    sqe->off = off;
    return 0;
}

static int txu_prep_ftruncate(struct txu_ring *r, int fd, uint64_t len, uint64_t ud, unsigned sf)
{
    PREP(r, TXU_OP_FTRUNCATE, fd, ud, sf);
    sqe->off = len;
    return 0;
}

static int txu_prep_renameat(struct txu_ring *r, int olddfd, const char *oldpath, int newdfd,
                             const char *newpath, unsigned flags, uint64_t ud, unsigned sf)
{
    PREP(r, IORING_OP_RENAMEAT, olddfd, ud, sf);
    sqe->addr = ADDR(oldpath);
    sqe->len = (unsigned)newdfd;
    sqe->addr2 = ADDR(newpath);
    sqe->rename_flags = flags;
    return 0;
}

static int txu_prep_unlinkat(struct txu_ring *r, int dfd, const char *path, int flags,
                             uint64_t ud, unsigned sf)
{
    PREP(r, IORING_OP_UNLINKAT, dfd, ud, sf);
    sqe->addr = ADDR(path);
    sqe->unlink_flags = (unsigned)flags;
    return 0;
}

static int txu_prep_mkdirat(struct txu_ring *r, int dfd, const char *path, unsigned mode,
                            uint64_t ud, unsigned sf)
{
    PREP(r, IORING_OP_MKDIRAT, dfd, ud, sf);
    sqe->addr = ADDR(path);
    sqe->len = mode;
    return 0;
}

static int txu_prep_symlinkat(struct txu_ring *r, const char *target, int newdfd,
                              const char *linkpath, uint64_t ud, unsigned sf)
{
    PREP(r, IORING_OP_SYMLINKAT, newdfd, ud, sf);
    sqe->addr = ADDR(target);
    sqe->addr2 = ADDR(linkpath);
    return 0;
}

static int txu_prep_linkat(struct txu_ring *r, int olddfd, const char *oldpath, int newdfd,
                           const char *newpath, int flags, uint64_t ud, unsigned sf)
{
    PREP(r, IORING_OP_LINKAT, olddfd, ud, sf);
    sqe->addr = ADDR(oldpath);
    sqe->len = (unsigned)newdfd;
    sqe->addr2 = ADDR(newpath);
    sqe->hardlink_flags = (unsigned)flags;
    return 0;
}

static int txu_prep_splice(struct txu_ring *r, int fd_in, int64_t off_in, int fd_out,
                           int64_t off_out, unsigned nbytes, unsigned splice_flags,
                           uint64_t ud, unsigned sf)
{
    PREP(r, IORING_OP_SPLICE, fd_out, ud, sf);
    sqe->len = nbytes;
    sqe->off = (uint64_t)off_out;
    sqe->splice_off_in = (uint64_t)off_in;
    sqe->splice_fd_in = fd_in;
    sqe->splice_flags = splice_flags;
    return 0;
}

static int txu_prep_tee(struct txu_ring *r, int fd_in, int fd_out, unsigned nbytes,
                        unsigned splice_flags, uint64_t ud, unsigned sf)
{
    PREP(r, IORING_OP_TEE, fd_out, ud, sf);
    sqe->len = nbytes;
    sqe->splice_fd_in = fd_in;
    sqe->splice_flags = splice_flags;
    return 0;
}

static int txu_prep_socket(struct txu_ring *r, int domain, int type, int protocol,
                           uint64_t ud, unsigned sf)
{
    PREP(r, IORING_OP_SOCKET, domain, ud, sf);
    sqe->off = (uint64_t)type;
    sqe->len = (unsigned)protocol;
    return 0;
}

static int txu_prep_bind(struct txu_ring *r, int fd, const struct sockaddr *addr,
                         unsigned addrlen, uint64_t ud, unsigned sf)
{
    PREP(r, TXU_OP_BIND, fd, ud, sf);
    sqe->addr = ADDR(addr);
    sqe->addr2 = addrlen;
    return 0;
}

static int txu_prep_listen(struct txu_ring *r, int fd, int backlog, uint64_t ud, unsigned sf)
{
    PREP(r, TXU_OP_LISTEN, fd, ud, sf);
    sqe->len = (unsigned)backlog;
    return 0;
}

static int txu_prep_connect(struct txu_ring *r, int fd, const struct sockaddr *addr,
                            unsigned addrlen, uint64_t ud, unsigned sf)
{
    PREP(r, IORING_OP_CONNECT, fd, ud, sf);
    sqe->addr = ADDR(addr);
    sqe->off = addrlen;
    return 0;
}

/* addr/addrlen may be NULL; addrlen is in/out (the kernel writes the peer's length). */
static int txu_prep_accept(struct txu_ring *r, int fd, struct sockaddr *addr,
                           socklen_t *addrlen, int flags, int multishot, uint64_t ud,
                           unsigned sf)
{
    PREP(r, IORING_OP_ACCEPT, fd, ud, sf);
    sqe->addr = ADDR(addr);
    sqe->addr2 = ADDR(addrlen);
    sqe->accept_flags = (unsigned)flags;
    if (multishot)
        sqe->ioprio = IORING_ACCEPT_MULTISHOT;
    return 0;
}

static int txu_prep_shutdown(struct txu_ring *r, int fd, int how, uint64_t ud, unsigned sf)
{
    PREP(r, IORING_OP_SHUTDOWN, fd, ud, sf);
    sqe->len = (unsigned)how;
    return 0;
}

static int txu_prep_send(struct txu_ring *r, int fd, const void *buf, unsigned len, int flags,
                         uint64_t ud, unsigned sf)
{
    PREP(r, IORING_OP_SEND, fd, ud, sf);
    sqe->addr = ADDR(buf);
    sqe->len = len;
    sqe->msg_flags = (unsigned)flags;
    return 0;
}

static int txu_prep_send_zc(struct txu_ring *r, int fd, const void *buf, unsigned len,
                            int flags, unsigned zc_flags, uint64_t ud, unsigned sf)
{
    PREP(r, IORING_OP_SEND_ZC, fd, ud, sf);
    sqe->addr = ADDR(buf);
    sqe->len = len;
    sqe->msg_flags = (unsigned)flags;
    sqe->ioprio = zc_flags;
    return 0;
}

static int txu_prep_recv(struct txu_ring *r, int fd, void *buf, unsigned len, int flags,
                         uint64_t ud, unsigned sf)
{
    PREP(r, IORING_OP_RECV, fd, ud, sf);
    sqe->addr = ADDR(buf);
    sqe->len = len;
    sqe->msg_flags = (unsigned)flags;
    return 0;
}

/* Multishot recv (6.0) into buffers picked from provided-buffer group bgid. */
static int txu_prep_recv_multishot(struct txu_ring *r, int fd, unsigned short bgid, int flags,
                                   uint64_t ud, unsigned sf)
{
    PREP(r, IORING_OP_RECV, fd, ud, sf | IOSQE_BUFFER_SELECT);
    sqe->msg_flags = (unsigned)flags;
    sqe->ioprio = IORING_RECV_MULTISHOT;
    sqe->buf_group = bgid;
    return 0;
}

static int txu_prep_sendmsg(struct txu_ring *r, int fd, const struct msghdr *msg, int flags,
                            uint64_t ud, unsigned sf)
{
    PREP(r, IORING_OP_SENDMSG, fd, ud, sf);
    sqe->addr = ADDR(msg);
    sqe->len = 1;
    sqe->msg_flags = (unsigned)flags;
    return 0;
}

static int txu_prep_recvmsg(struct txu_ring *r, int fd, struct msghdr *msg, int flags,
                            uint64_t ud, unsigned sf)
{
    PREP(r, IORING_OP_RECVMSG, fd, ud, sf);
    sqe->addr = ADDR(msg);
    sqe->len = 1;
    sqe->msg_flags = (unsigned)flags;
    return 0;
}

/* ---- SCM_RIGHTS helpers (the CMSG_* macros are not reachable from Python) ---- */

static size_t txu_cmsg_space_fds(unsigned nfds)
{
    return CMSG_SPACE(nfds * sizeof(int));
}

/* The msg_controllen that lets the kernel install at most nfds fds: CMSG_SPACE pads
 * to 8 bytes, and the kernel fills all the room it is given (scm_detach_fds), so a
 * padded length would let it install one fd more than asked, unannounced (no
 * MSG_CTRUNC). With CMSG_LEN the extra fds are refused and MSG_CTRUNC is set. */
static size_t txu_cmsg_len_fds(unsigned nfds)
{
    return CMSG_LEN(nfds * sizeof(int));
}

/* Lay out one SCM_RIGHTS message carrying fds in msg's control buffer. */
static int txu_cmsg_put_fds(struct msghdr *msg, const int *fds, unsigned nfds)
{
    if (msg->msg_controllen < CMSG_SPACE(nfds * sizeof(int)))
        return -ENOSPC;
    memset(msg->msg_control, 0, msg->msg_controllen);
    msg->msg_controllen = CMSG_SPACE(nfds * sizeof(int));
    struct cmsghdr *c = CMSG_FIRSTHDR(msg);
    c->cmsg_level = SOL_SOCKET;
    c->cmsg_type = SCM_RIGHTS;
    c->cmsg_len = CMSG_LEN(nfds * sizeof(int));
    memcpy(CMSG_DATA(c), fds, nfds * sizeof(int));
    return 0;
}

/* Collect the fds of every SCM_RIGHTS message the kernel wrote; returns the count found
 * (which may exceed max: the caller must then close the ones it could not take). */
static int txu_cmsg_get_fds(struct msghdr *msg, int *out, unsigned max)
{
    unsigned n = 0;
    for (struct cmsghdr *c = CMSG_FIRSTHDR(msg); c; c = CMSG_NXTHDR(msg, c)) {
        if (c->cmsg_level != SOL_SOCKET || c->cmsg_type != SCM_RIGHTS)
            continue;
        unsigned k = (unsigned)((c->cmsg_len - CMSG_LEN(0)) / sizeof(int));
        int *fds = (int *)CMSG_DATA(c);
        for (unsigned i = 0; i < k; i++, n++)
            if (n < max)
                out[n] = fds[i];
    }
    return (int)n;
}

/* ==== lean path for txuring's own transports (txuring/tcp.py) ====
 * These take no Python objects beyond what cffi passes for a `const char *` (a bytes
 * object's own buffer, which the caller keeps alive until the op's final CQE), so a
 * transport prepares its per-message SQEs in one call each, with no cdata built per
 * message. Same contract as the prep functions above (user_data and SQE flags last, so
 * the Ring's overflow queue can prepare them later): 0, or -EBUSY when the SQ is full. */

/* recv into a buffer the kernel picks from provided-buffer group bgid when data
 * arrives. mode: 0 (one CQE per SQE: buffer rings, 5.19), or IORING_RECV_MULTISHOT
 * (6.0), and/or TXU_RECVSEND_BUNDLE (6.10: one CQE may fill several buffers, see
 * txu_bufring_bundle); anything else is -EINVAL. */
static int txu_lean_recv(struct txu_ring *r, int fd, unsigned short bgid, unsigned mode,
                         uint64_t ud, unsigned sf)
{
    if (mode & ~(unsigned)(IORING_RECV_MULTISHOT | TXU_RECVSEND_BUNDLE))
        return -EINVAL;
    PREP(r, IORING_OP_RECV, fd, ud, sf | IOSQE_BUFFER_SELECT);
    sqe->buf_group = bgid;
    sqe->ioprio = (unsigned short)mode;
    return 0;
}

/* send(2) of len bytes from buf + off (buf: a bytes object the caller holds). */
static int txu_lean_send(struct txu_ring *r, int fd, const char *buf, size_t off,
                         unsigned len, uint64_t ud, unsigned sf)
{
    PREP(r, IORING_OP_SEND, fd, ud, sf);
    sqe->addr = ADDR(buf + off);
    sqe->len = len;
    sqe->msg_flags = MSG_NOSIGNAL;
    return 0;
}

/* pread(2) of len bytes into buf at file offset off (buf: a buffer the caller
 * holds until the CQE; txuring.fs's reads of its own buffers). */
static int txu_lean_read(struct txu_ring *r, int fd, char *buf, unsigned len, uint64_t off,
                         uint64_t ud, unsigned sf)
{
    PREP(r, IORING_OP_READ, fd, ud, sf);
    sqe->addr = ADDR(buf);
    sqe->len = len;
    sqe->off = off;
    return 0;
}

/* openat(2) as IORING_OP_OPENAT (5.6): path (NUL-terminated, held by the caller
 * until the SQE is submitted: the kernel copies it then) relative to dfd. Tried
 * inline with a cached lookup (LOOKUP_CACHED, 5.10: no disk I/O in the submitter);
 * only an uncached or creating open goes to an io-wq worker. */
static int txu_lean_open(struct txu_ring *r, int dfd, const char *path, int flags,
                         unsigned mode, uint64_t ud, unsigned sf)
{
    PREP(r, IORING_OP_OPENAT, dfd, ud, sf);
    sqe->addr = ADDR(path);
    sqe->len = mode;
    sqe->open_flags = (unsigned)flags;
    return 0;
}

/* A read of len bytes into buf from offset 0 of fd, then the close of fd, as one
 * chain: IOSQE_IO_HARDLINK (5.5) starts the close once the read has ended, whatever
 * it gave, so the fd is closed after the kernel stopped using it and never before.
 * Both SQEs or neither (-EBUSY): a chain split across two submissions loses its
 * link, and the close could then overtake the read. Two CQEs: the read's (ud),
 * then the close's (close_ud). */
static int txu_lean_read_close(struct txu_ring *r, int fd, char *buf, unsigned len,
                               uint64_t close_ud, uint64_t ud, unsigned sf)
{
    if (txu_sq_space(r) < 2)
        return RING_OK(r) ? -EBUSY : -EBADFD;
    {
        PREP(r, IORING_OP_READ, fd, ud, sf | IOSQE_IO_HARDLINK);
        sqe->addr = ADDR(buf);
        sqe->len = len;
        sqe->off = 0;
    }
    {
        PREP(r, IORING_OP_CLOSE, fd, close_ud, sf);
    }
    return 0;
}

/* The type and size of the file open on fd, from the attributes the kernel already
 * holds: statx(2) (4.11) with AT_STATX_DONT_SYNC, so that on NFS, CIFS, Ceph or FUSE
 * it never waits for a server (a local file system answers from the inode at once).
 * 1 for a regular file, 0 for anything else, or -errno; *size set on success. */
static int txu_fstat_cached(int fd, uint64_t *size)
{
    struct statx stx;
    if (syscall(SYS_statx, fd, "", AT_EMPTY_PATH | AT_STATX_DONT_SYNC,
                STATX_TYPE | STATX_SIZE, &stx) < 0)
        return -errno;
    *size = stx.stx_size;
    return (stx.stx_mask & STATX_TYPE) && (stx.stx_mode & S_IFMT) == S_IFREG;
}

/* openat2(2) made here, not as an op: txuring.web's attempt to open a file whose
 * path the dentry cache already holds (the caller passes RESOLVE_CACHED, 5.12: the
 * kernel fails with EAGAIN rather than look anything up on disk -- the same attempt
 * io_uring makes inline before punting an open to a worker). Returns the fd (always
 * O_CLOEXEC) or -errno. */
static int txu_openat2_now(int dfd, const char *path, uint64_t flags, uint64_t resolve)
{
    struct open_how how;
    long fd;

    memset(&how, 0, sizeof how);
    how.flags = flags | O_CLOEXEC;
    how.resolve = resolve;
    fd = syscall(SYS_openat2, dfd, path, &how, sizeof how);
    return fd < 0 ? -errno : (int)fd;
}

/* Async cancel of the op with user_data target (its own CQE goes to ud). */
static int txu_lean_cancel(struct txu_ring *r, uint64_t target, uint64_t ud, unsigned sf)
{
    PREP(r, IORING_OP_ASYNC_CANCEL, -1, ud, sf);
    sqe->addr = target;
    return 0;
}

/* Hand back buffers the caller copied out of CQEs it was given directly (the lean
 * path: no Handle marked them delivered), in one call per batch: each id is checked
 * (range, not lent, not twice in this call) and published. Returns how many were
 * published, or -EBADFD once the group is closed. */
static int txu_bufring_recycle_many(struct txu_bufring *b, const uint16_t *bids, unsigned n)
{
    if (!b->br)
        return -EBADFD;
    unsigned short tail = b->br->tail;
    unsigned done = 0;
    for (unsigned i = 0; i < n; i++) {
        unsigned bid = bids[i];
        if (bid >= b->entries || b->state[bid] != TXU_BUF_PUBLISHED)
            continue;
        b->state[bid] = TXU_BUF_DELIVERED; /* (marks it taken for the rest of this call) */
        bufring_place(b, (unsigned short)(tail + done), (unsigned short)bid);
        done++;
    }
    for (unsigned i = 0; i < n; i++)
        if (bids[i] < b->entries && b->state[bids[i]] == TXU_BUF_DELIVERED)
            b->state[bids[i]] = TXU_BUF_PUBLISHED;
    __atomic_store_n(&b->br->tail, (unsigned short)(tail + done), __ATOMIC_RELEASE);
    return (int)done;
}

/* The buffers of a bundle CQE (IORING_RECVSEND_BUNDLE, 6.10): res bytes (res > 0) in
 * buffer bid, the first, and the buffers the kernel took from the ring slots that
 * follow it, each filled whole but the last (the kernel consumes a ring's slots in
 * order, whole buffers when the group is not incremental; its CQE names the first).
 * Their ids go to out (room for max) in order. Returns how many (at least 1), ored with
 * TXU_BUNDLE_CONTIGUOUS when they lie one after the other in memory (so the bytes are
 * one run from bid's address); -EBADFD once closed; -EINVAL when bid is out of range,
 * res does not fit, or the chain meets a buffer that is not the kernel's (lent, or
 * seen twice): the CQE does not match this ring, and nothing was changed. */
#define TXU_BUNDLE_CONTIGUOUS (1 << 30)
static int txu_bufring_bundle(struct txu_bufring *b, unsigned bid, int res, uint16_t *out,
                              unsigned max)
{
    if (!b->br)
        return -EBADFD;
    if (bid >= b->entries || res <= 0)
        return -EINVAL;
    unsigned n = (unsigned)(((unsigned long long)res + b->buf_size - 1) / b->buf_size);
    if (n > max || n > b->entries)
        return -EINVAL;
    unsigned cur = bid, k = 0;
    int contiguous = 1, ok = 1;
    for (; k < n; k++) {
        if (cur >= b->entries || b->state[cur] != TXU_BUF_PUBLISHED) {
            ok = 0;
            break;
        }
        b->state[cur] = TXU_BUF_DELIVERED; /* (marks it seen for the rest of this call) */
        out[k] = (uint16_t)cur;
        if (k && cur != out[k - 1] + 1u)
            contiguous = 0;
        cur = b->succ[cur];
    }
    for (unsigned i = 0; i < k; i++)
        b->state[out[i]] = TXU_BUF_PUBLISHED;
    if (!ok)
        return -EINVAL;
    return (int)n | (contiguous ? TXU_BUNDLE_CONTIGUOUS : 0);
}
