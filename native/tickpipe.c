/* tickpipe native core: cursors with acquire/release ordering, futex park/wake, a seqlock
   board and a monotonic clock. Everything else (layout checks, naming, policy) is Python.
   Every function takes the segment's base address as an integer so numba can call it
   directly (cffi pointers cannot be numba arguments). */
#define _GNU_SOURCE
#include <stdint.h>
#include <string.h>
#include <time.h>
#include <sched.h>
#include <errno.h>
#include <unistd.h>
#include <limits.h>
#include <sys/syscall.h>
#include <linux/futex.h>
#include "tickpipe.h"

#define TP_MAGIC 0x455049504b434954ULL /* "TICKPIPE" */
#define TP_ABI_VERSION 1u
#define TP_SHAPE_SPSC 1u
#define TP_SHAPE_BROADCAST 2u
#define TP_SHAPE_BOARD 3u
#define TP_SHAPE_BLOB 4u /* plain shared state (control, counters, histograms): no cursors used */
#define TP_MAX_CONSUMERS 32u
#define TP_PAGE 4096u

_Static_assert(sizeof(tp_ring_hdr_t) == 5 * 64, "header must be 5 cache lines");
_Static_assert(sizeof(tp_consumer_t) == 3 * 64, "consumer must be 3 cache lines");
_Static_assert(sizeof(tp_board_entry_t) == 64, "board entry must be one cache line");

#define LOAD_ACQ(p) __atomic_load_n((p), __ATOMIC_ACQUIRE)
#define LOAD_RLX(p) __atomic_load_n((p), __ATOMIC_RELAXED)
#define STORE_REL(p, v) __atomic_store_n((p), (v), __ATOMIC_RELEASE)
#define STORE_RLX(p, v) __atomic_store_n((p), (v), __ATOMIC_RELAXED)

static inline tp_ring_hdr_t *hdr(uint64_t base) { return (tp_ring_hdr_t *)(uintptr_t)base; }

static inline tp_consumer_t *cons(uint64_t base, int32_t ci) {
    return (tp_consumer_t *)(uintptr_t)(base + sizeof(tp_ring_hdr_t)) + ci;
}

static inline void cpu_relax(void) {
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#elif defined(__aarch64__)
    __asm__ __volatile__("yield");
#endif
}

static long futex(uint32_t *addr, int op, uint32_t val, const struct timespec *ts) {
    /* not FUTEX_PRIVATE: waiter and waker are different processes sharing the mapping */
    return syscall(SYS_futex, addr, op, val, ts, NULL, 0);
}

uint64_t tp_data_offset(uint32_t n_consumers) {
    uint64_t meta = sizeof(tp_ring_hdr_t) + (uint64_t)n_consumers * sizeof(tp_consumer_t);
    return (meta + TP_PAGE - 1) / TP_PAGE * TP_PAGE; /* records start page aligned */
}

uint64_t tp_ring_bytes(uint32_t shape, uint32_t slot_size, uint64_t capacity, uint32_t n_consumers) {
    uint64_t per = shape == TP_SHAPE_BOARD ? sizeof(tp_board_entry_t) + slot_size : slot_size;
    uint64_t total = tp_data_offset(n_consumers) + per * capacity;
    return (total + TP_PAGE - 1) / TP_PAGE * TP_PAGE;
}

int32_t tp_ring_init(uint64_t base, uint64_t segment_size, uint32_t shape, uint64_t layout_hash,
                     uint32_t slot_size, uint64_t capacity, uint32_t n_consumers,
                     uint32_t pid, uint64_t start_time) {
    if (shape < TP_SHAPE_SPSC || shape > TP_SHAPE_BLOB) return -1;
    if (slot_size == 0 || slot_size % 64) return -2;
    if (shape <= TP_SHAPE_BROADCAST && (capacity == 0 || (capacity & (capacity - 1)))) return -3;
    if (n_consumers == 0 || n_consumers > TP_MAX_CONSUMERS) return -4;
    if (segment_size < tp_ring_bytes(shape, slot_size, capacity, n_consumers)) return -5;
    tp_ring_hdr_t *h = hdr(base);
    memset(h, 0, tp_data_offset(n_consumers));
    h->abi_version = TP_ABI_VERSION;
    h->shape = shape;
    h->layout_hash = layout_hash;
    h->slot_size = slot_size;
    h->n_consumers = n_consumers;
    h->capacity = capacity;
    h->data_offset = tp_data_offset(n_consumers);
    h->segment_size = segment_size;
    h->creator_pid = pid;
    h->creator_start_time = start_time;
    for (uint32_t i = 0; i < n_consumers; i++) cons(base, (int32_t)i)->active = 1;
    /* magic last, with release: an attacher that sees it sees a complete header */
    STORE_REL(&h->magic, TP_MAGIC);
    return 0;
}

void tp_prefault(uint64_t base, uint64_t size) {
    /* touch every page for writing so the first records never take a page fault */
    volatile uint8_t *p = (volatile uint8_t *)(uintptr_t)base;
    for (uint64_t off = 0; off < size; off += TP_PAGE) p[off] = p[off];
}

/* ---- wake helpers: a waker bumps the bell then wakes; a parker sleeps only if the bell
        still holds the value it read before announcing itself (no lost wake-up) ---- */
static inline void ring_bell(uint32_t *bell) {
    __atomic_fetch_add(bell, 1, __ATOMIC_SEQ_CST);
    futex(bell, FUTEX_WAKE, INT_MAX, NULL);
}

static int32_t sleep_on(uint32_t *bell, uint32_t seen, int64_t timeout_ns) {
    struct timespec ts, *tsp = NULL;
    if (timeout_ns >= 0) {
        ts.tv_sec = timeout_ns / 1000000000LL;
        ts.tv_nsec = timeout_ns % 1000000000LL;
        tsp = &ts;
    }
    long r = futex(bell, FUTEX_WAIT, seen, tsp);
    return r == 0 ? 1 : (errno == ETIMEDOUT ? 0 : 1);
}

/* ---- producer ---- */
static inline void wake_parked_consumers(uint64_t base, tp_ring_hdr_t *h) {
    if (LOAD_RLX(&h->park_enabled)) {
        /* store-load fence pairs with the parker's RMW: either we see its flag or it sees pos */
        __atomic_thread_fence(__ATOMIC_SEQ_CST);
        uint32_t w = LOAD_RLX(&h->waiters);
        while (w) {
            int32_t ci = __builtin_ctz(w);
            w &= w - 1;
            ring_bell(&cons(base, ci)->bell);
        }
    }
}

static uint64_t min_consumer_pos(uint64_t base, tp_ring_hdr_t *h, uint64_t pos) {
    uint64_t m = pos;
    for (uint32_t i = 0; i < h->n_consumers; i++) {
        tp_consumer_t *c = cons(base, (int32_t)i);
        if (!LOAD_RLX(&c->active)) continue;
        uint64_t p = LOAD_ACQ(&c->pos);
        if (p < m) m = p;
    }
    return m;
}

int64_t tp_claim(uint64_t base, int64_t n) {
    tp_ring_hdr_t *h = hdr(base);
    uint64_t pos = LOAD_RLX(&h->pos);
    uint64_t cap = h->capacity;
    if (n <= 0) return 0;
    if ((uint64_t)n > cap) n = (int64_t)cap;
    /* the cached minimum is refreshed only when it says "full": no cross-core read otherwise */
    if (pos + (uint64_t)n - h->cached_min > cap) {
        h->cached_min = min_consumer_pos(base, h, pos);
        uint64_t free_slots = cap - (pos - h->cached_min);
        if ((uint64_t)n > free_slots) n = (int64_t)free_slots;
    }
    return n;
}

static inline uint64_t *slot_seq(uint64_t base, tp_ring_hdr_t *h, uint64_t pos) {
    /* every record starts with its u64 seq (the common header): the ring stamps it at publish */
    return (uint64_t *)(uintptr_t)(base + h->data_offset + (pos & (h->capacity - 1)) * h->slot_size);
}

void tp_publish(uint64_t base, int64_t n) {
    tp_ring_hdr_t *h = hdr(base);
    uint64_t pos = LOAD_RLX(&h->pos);
    /* seq = position + 1, stored with release, is the commit a consumer polls: in a steady
       stream only the slot's own cache line moves between cores, not the cursor's too.
       Stamped last slot first: once a consumer sees the first slot of the batch committed, the
       whole batch is, so it never trails the stamping loop line by line. */
    for (int64_t i = n - 1; i >= 0; i--) STORE_REL(slot_seq(base, h, pos + (uint64_t)i), pos + (uint64_t)i + 1);
    STORE_REL(&h->pos, pos + (uint64_t)n);
    wake_parked_consumers(base, h);
}

uint64_t tp_prod_pos(uint64_t base) { return LOAD_RLX(&hdr(base)->pos); }

int32_t tp_prod_park(uint64_t base, int64_t timeout_ns) {
    tp_ring_hdr_t *h = hdr(base);
    uint32_t seen = LOAD_ACQ(&h->prod_bell);
    for (uint32_t i = 0; i < h->n_consumers; i++)
        __atomic_store_n(&cons(base, (int32_t)i)->prod_waiting, 1u, __ATOMIC_SEQ_CST);
    __atomic_thread_fence(__ATOMIC_SEQ_CST);
    uint64_t pos = LOAD_RLX(&h->pos);
    int32_t r = 1;
    if (pos - min_consumer_pos(base, h, pos) >= h->capacity) r = sleep_on(&h->prod_bell, seen, timeout_ns);
    for (uint32_t i = 0; i < h->n_consumers; i++) STORE_RLX(&cons(base, (int32_t)i)->prod_waiting, 0u);
    return r;
}

/* Copy a record into a slot without its first word: `seq` is the slot's commit flag and only
   tp_publish may write it (a record forwarded from another ring carries a seq that could equal
   this slot's commit value and publish it early). */
static inline void copy_payload(char *dst, const char *src, uint32_t size) {
    if (size > 8) memcpy(dst + 8, src + 8, size - 8);
}

int32_t tp_offer(uint64_t base, const char *src, uint32_t size) {
    /* claim one, copy, publish: one call from plain Python instead of three */
    tp_ring_hdr_t *h = hdr(base);
    if (tp_claim(base, 1) != 1) return 0;
    uint64_t pos = LOAD_RLX(&h->pos);
    copy_payload((char *)(uintptr_t)(base + h->data_offset + (pos & (h->capacity - 1)) * h->slot_size), src,
                 size < h->slot_size ? size : h->slot_size);
    tp_publish(base, 1);
    return 1;
}

int64_t tp_write(uint64_t base, uint64_t src, int64_t n, uint32_t src_stride) {
    /* claim up to n, copy them (handling the wrap, skipping seq), publish: returns the count */
    tp_ring_hdr_t *h = hdr(base);
    int64_t k = tp_claim(base, n);
    if (k <= 0) return 0;
    uint64_t pos = LOAD_RLX(&h->pos);
    uint32_t size = src_stride < h->slot_size ? src_stride : h->slot_size;
    for (int64_t i = 0; i < k; i++)
        copy_payload((char *)(uintptr_t)(base + h->data_offset + ((pos + (uint64_t)i) & (h->capacity - 1)) * h->slot_size),
                     (const char *)(uintptr_t)(src + (uint64_t)i * src_stride), size);
    tp_publish(base, k);
    return k;
}

/* ---- consumer ---- */
int64_t tp_peek(uint64_t base, int32_t ci, int64_t n) {
    tp_consumer_t *c = cons(base, ci);
    tp_ring_hdr_t *h = hdr(base);
    uint64_t pos = LOAD_RLX(&c->pos);
    if (n <= 0) return 0;
    uint64_t seen = c->cached_prod;
    if (seen - pos >= (uint64_t)n) return n;
    /* idle polling touches only the next slot's commit word: the line that carries the data */
    if (LOAD_ACQ(slot_seq(base, h, seen)) != seen + 1) return (int64_t)(seen - pos);
    seen++;
    /* more wanted: the cursor gives the batch's extent in one read (scanning slots instead would
       trail the producer line by line; measured 6x slower at batch 256) */
    if (seen - pos < (uint64_t)n) {
        uint64_t p = LOAD_ACQ(&h->pos);
        if (p > seen) seen = p;
    }
    c->cached_prod = seen;
    return seen - pos < (uint64_t)n ? (int64_t)(seen - pos) : n;
}

void tp_release(uint64_t base, int32_t ci, int64_t n) {
    tp_consumer_t *c = cons(base, ci);
    STORE_REL(&c->pos, LOAD_RLX(&c->pos) + (uint64_t)n);
    tp_ring_hdr_t *h = hdr(base);
    if (LOAD_RLX(&h->park_enabled)) {
        __atomic_thread_fence(__ATOMIC_SEQ_CST);
        if (LOAD_RLX(&c->prod_waiting)) ring_bell(&h->prod_bell);
    }
}

int32_t tp_poll(uint64_t base, int32_t ci, char *dst, uint32_t size) {
    tp_ring_hdr_t *h = hdr(base);
    if (tp_peek(base, ci, 1) != 1) return 0;
    uint64_t pos = LOAD_RLX(&cons(base, ci)->pos);
    memcpy(dst, (const void *)(uintptr_t)(base + h->data_offset + (pos & (h->capacity - 1)) * h->slot_size),
           size < h->slot_size ? size : h->slot_size);
    tp_release(base, ci, 1);
    return 1;
}

uint64_t tp_cons_pos(uint64_t base, int32_t ci) { return LOAD_ACQ(&cons(base, ci)->pos); }

int64_t tp_lag(uint64_t base, int32_t ci) {
    return (int64_t)(LOAD_ACQ(&hdr(base)->pos) - LOAD_ACQ(&cons(base, ci)->pos));
}

int32_t tp_cons_park(uint64_t base, int32_t ci, int64_t timeout_ns) {
    tp_ring_hdr_t *h = hdr(base);
    tp_consumer_t *c = cons(base, ci);
    uint32_t bit = 1u << ci;
    uint32_t seen = LOAD_ACQ(&c->bell);
    __atomic_fetch_or(&h->waiters, bit, __ATOMIC_SEQ_CST);
    int32_t r = 1;
    if (LOAD_ACQ(&h->pos) == LOAD_RLX(&c->pos)) r = sleep_on(&c->bell, seen, timeout_ns);  /* pos: set before the wake fence */
    __atomic_fetch_and(&h->waiters, ~bit, __ATOMIC_SEQ_CST);
    return r;
}

void tp_set_active(uint64_t base, int32_t ci, uint32_t active) {
    __atomic_store_n(&cons(base, ci)->active, active, __ATOMIC_SEQ_CST);
}

void tp_enable_park(uint64_t base) {
    __atomic_store_n(&hdr(base)->park_enabled, 1u, __ATOMIC_SEQ_CST);
}

/* ---- conflated board: one seqlock per key; the header's pos counts updates of all keys ---- */
static inline tp_board_entry_t *entry(uint64_t base, uint32_t key) {
    tp_ring_hdr_t *h = hdr(base);
    return (tp_board_entry_t *)(uintptr_t)(base + h->data_offset +
                                           (uint64_t)key * (sizeof(tp_board_entry_t) + h->slot_size));
}

static void board_bump(uint64_t base) {
    tp_ring_hdr_t *h = hdr(base);
    STORE_REL(&h->pos, LOAD_RLX(&h->pos) + 1);
    wake_parked_consumers(base, h);
}

uint64_t tp_board_begin(uint64_t base, uint32_t key) {
    tp_board_entry_t *e = entry(base, key);
    STORE_RLX(&e->seq, LOAD_RLX(&e->seq) + 1); /* odd: write in progress */
    __atomic_thread_fence(__ATOMIC_RELEASE);     /* record stores may not move above the odd seq */
    return (uint64_t)(uintptr_t)(e + 1);
}

void tp_board_commit(uint64_t base, uint32_t key) {
    tp_board_entry_t *e = entry(base, key);
    STORE_REL(&e->seq, LOAD_RLX(&e->seq) + 1);
    board_bump(base);
}

int64_t tp_board_read(uint64_t base, uint32_t key, uint64_t dst) {
    tp_board_entry_t *e = entry(base, key);
    uint32_t size = hdr(base)->slot_size;
    for (;;) {
        uint64_t s1 = LOAD_ACQ(&e->seq);
        if (s1 & 1) { cpu_relax(); continue; }
        if (s1 == 0) return 0;
        memcpy((void *)(uintptr_t)dst, (const void *)(e + 1), size);
        __atomic_thread_fence(__ATOMIC_ACQUIRE); /* the copy's loads complete before the re-check */
        if (LOAD_RLX(&e->seq) == s1) return (int64_t)(s1 >> 1);
    }
}

int64_t tp_board_updates(uint64_t base, uint32_t key) {
    return (int64_t)(LOAD_ACQ(&entry(base, key)->seq) >> 1);
}

/* ---- liveness, time, waiting ---- */
void tp_heartbeat(uint64_t base, int32_t who, int64_t now_ns) {
    if (who < 0) STORE_REL(&hdr(base)->prod_heartbeat_ns, now_ns);
    else STORE_REL(&cons(base, who)->heartbeat_ns, now_ns);
}

int64_t tp_now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

uint64_t tp_rdtsc(void) {
#if defined(__x86_64__) || defined(__i386__)
    return __builtin_ia32_rdtsc();
#else
    return (uint64_t)tp_now_ns();
#endif
}

void tp_pause(void) { cpu_relax(); }

void tp_yield(void) { sched_yield(); }

int32_t tp_futex_wait(uint64_t addr, uint32_t expected, int64_t timeout_ns) {
    return sleep_on((uint32_t *)(uintptr_t)addr, expected, timeout_ns);
}

int32_t tp_futex_wake(uint64_t addr, int32_t n) {
    return (int32_t)futex((uint32_t *)(uintptr_t)addr, FUTEX_WAKE, (uint32_t)n, NULL);
}
