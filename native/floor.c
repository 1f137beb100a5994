/* The C-only floor: the same ring functions driven from C with no Python or numba, so the
   benchmark can show what the interpreter and the cffi call layer cost on top.
   Build: cc -O2 -o floor native/floor.c native/tickpipe.c -Inative   (bench_rings.py does it)
   Usage: floor rtt N CPU_A CPU_B  |  floor tput N BATCH CPU_A CPU_B     (prints one JSON line) */
#define _GNU_SOURCE
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sched.h>
#include <unistd.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include "tickpipe.h"

#define SLOT 64u
#define CAP 1024u

static void pin(int cpu) {
    cpu_set_t set;
    CPU_ZERO(&set);
    CPU_SET(cpu, &set);
    if (sched_setaffinity(0, sizeof(set), &set) != 0) perror("sched_setaffinity");
}

static uint64_t make_ring(void) {
    uint64_t size = tp_ring_bytes(1, SLOT, CAP, 1);
    void *p = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS | MAP_POPULATE, -1, 0);
    if (p == MAP_FAILED) { perror("mmap"); exit(2); }
    tp_ring_init((uint64_t)(uintptr_t)p, size, 1, 0, SLOT, CAP, 1, (uint32_t)getpid(), 0);
    return (uint64_t)(uintptr_t)p;
}

static inline uint64_t *slot(uint64_t ring, uint64_t pos) {
    /* the payload word of a tp_bench_t: word 0 is the seq that tp_publish stamps */
    tp_ring_hdr_t *h = (tp_ring_hdr_t *)(uintptr_t)ring;
    return (uint64_t *)(uintptr_t)(ring + h->data_offset + (pos & (CAP - 1)) * SLOT) + 4;
}

static int cmp_i64(const void *a, const void *b) {
    int64_t x = *(const int64_t *)a, y = *(const int64_t *)b;
    return (x > y) - (x < y);
}

static int rtt(long n, int cpu_a, int cpu_b) {
    uint64_t ab = make_ring(), ba = make_ring();
    long warm = n / 10 + 1000;
    pid_t child = fork();
    if (child == 0) {
        pin(cpu_b);
        for (long i = 0; i < n + warm; i++) {
            while (tp_peek(ab, 0, 1) == 0) tp_pause();
            uint64_t v = *slot(ab, tp_cons_pos(ab, 0));
            tp_release(ab, 0, 1);
            while (tp_claim(ba, 1) == 0) tp_pause();
            *slot(ba, tp_prod_pos(ba)) = v;
            tp_publish(ba, 1);
        }
        _exit(0);
    }
    pin(cpu_a);
    int64_t *s = malloc(sizeof(int64_t) * (size_t)n);
    for (long i = 0; i < n + warm; i++) {
        int64_t t0 = tp_now_ns();
        while (tp_claim(ab, 1) == 0) tp_pause();
        *slot(ab, tp_prod_pos(ab)) = (uint64_t)i;
        tp_publish(ab, 1);
        while (tp_peek(ba, 0, 1) == 0) tp_pause();
        uint64_t v = *slot(ba, tp_cons_pos(ba, 0));
        tp_release(ba, 0, 1);
        int64_t t1 = tp_now_ns();
        if (v != (uint64_t)i) { fprintf(stderr, "echo mismatch %lu != %ld\n", v, i); return 1; }
        if (i >= warm) s[i - warm] = t1 - t0;
    }
    waitpid(child, NULL, 0);
    qsort(s, (size_t)n, sizeof(int64_t), cmp_i64);
    printf("{\"rtt_ns\": {\"p50\": %ld, \"p99\": %ld, \"p99.9\": %ld, \"max\": %ld}, \"n\": %ld}\n",
           s[n / 2], s[(long)(n * 0.99)], s[(long)(n * 0.999)], s[n - 1], n);
    return 0;
}

static int tput(long n, long batch, int cpu_a, int cpu_b) {
    uint64_t r = make_ring();
    pid_t child = fork();
    if (child == 0) {
        pin(cpu_b);
        long expect = 0;
        while (expect < n) {
            int64_t k = tp_peek(r, 0, batch);
            if (k == 0) { tp_pause(); continue; }
            uint64_t pos = tp_cons_pos(r, 0);
            for (int64_t i = 0; i < k; i++) {
                if (*slot(r, pos + (uint64_t)i) != (uint64_t)expect) _exit(3);
                expect++;
            }
            tp_release(r, 0, k);
        }
        _exit(0);
    }
    pin(cpu_a);
    int64_t t0 = tp_now_ns();
    long seq = 0;
    while (seq < n) {
        int64_t k = tp_claim(r, (n - seq) < batch ? (n - seq) : batch);
        if (k == 0) { tp_pause(); continue; }
        uint64_t pos = tp_prod_pos(r);
        for (int64_t i = 0; i < k; i++) *slot(r, pos + (uint64_t)i) = (uint64_t)seq++;
        tp_publish(r, k);
    }
    int st = 0;
    waitpid(child, &st, 0);
    int64_t dt = tp_now_ns() - t0;
    if (!WIFEXITED(st) || WEXITSTATUS(st) != 0) { fprintf(stderr, "consumer saw a bad sequence\n"); return 1; }
    printf("{\"throughput_per_s\": %.0f, \"n\": %ld, \"batch\": %ld}\n", (double)n * 1e9 / (double)dt, n, batch);
    return 0;
}

int main(int argc, char **argv) {
    if (argc == 5 && strcmp(argv[1], "rtt") == 0) return rtt(atol(argv[2]), atoi(argv[3]), atoi(argv[4]));
    if (argc == 6 && strcmp(argv[1], "tput") == 0)
        return tput(atol(argv[2]), atol(argv[3]), atoi(argv[4]), atoi(argv[5]));
    fprintf(stderr, "usage: %s rtt N CPU_A CPU_B | %s tput N BATCH CPU_A CPU_B\n", argv[0], argv[0]);
    return 2;
}
