/* tickpipe native core: declarations shared by the C source and the cffi cdef.
   No preprocessor lines: cffi parses this file as its declarations.
   Layout: every struct below is a whole number of 64-byte cache lines and every field
   written by one side sits on a line of its own (see the comment on each line). */

typedef struct {
    /* line 0: immutable after tp_ring_init */
    uint64_t magic;
    uint32_t abi_version;
    uint32_t shape;
    uint64_t layout_hash;
    uint32_t slot_size;
    uint32_t n_consumers;
    uint64_t capacity;
    uint64_t data_offset;
    uint64_t segment_size;
    uint8_t _pad0[8];
    /* line 1: creator identity and run state (written at create/close only) */
    uint32_t state;
    uint32_t park_enabled;
    uint32_t creator_pid;
    uint32_t _pad1;
    uint64_t creator_start_time;
    uint8_t _pad1b[40];
    /* line 2: producer hot line: written by the producer on every publish */
    uint64_t pos;
    uint32_t waiters;
    uint32_t prod_bell;
    uint8_t _pad2[48];
    /* line 3: producer private: cached minimum consumer position */
    uint64_t cached_min;
    uint8_t _pad3[56];
    /* line 4: producer liveness */
    uint32_t prod_pid;
    uint32_t _pad4;
    uint64_t prod_start_time;
    int64_t prod_heartbeat_ns;
    uint8_t _pad4b[40];
} tp_ring_hdr_t;

typedef struct {
    /* line A: consumer hot line: written by the consumer on every release */
    uint64_t pos;
    uint32_t prod_waiting;
    uint32_t bell;
    uint8_t _padA[48];
    /* line B: consumer private: cached producer position */
    uint64_t cached_prod;
    uint32_t active;
    uint32_t _padB;
    uint8_t _padB2[48];
    /* line C: consumer liveness */
    uint32_t pid;
    uint32_t _padC;
    uint64_t start_time;
    int64_t heartbeat_ns;
    uint8_t _padC2[40];
} tp_consumer_t;

typedef struct {
    /* one per board key, followed by the record slot: seqlock word and its own line */
    uint64_t seq;
    uint8_t _pad[56];
} tp_board_entry_t;

/* sizes and setup */
uint64_t tp_ring_bytes(uint32_t shape, uint32_t slot_size, uint64_t capacity, uint32_t n_consumers);
uint64_t tp_data_offset(uint32_t n_consumers);
int32_t tp_ring_init(uint64_t base, uint64_t segment_size, uint32_t shape, uint64_t layout_hash,
                     uint32_t slot_size, uint64_t capacity, uint32_t n_consumers,
                     uint32_t pid, uint64_t start_time);
void tp_prefault(uint64_t base, uint64_t size);

/* producer */
int64_t tp_claim(uint64_t base, int64_t n);
void tp_publish(uint64_t base, int64_t n);
uint64_t tp_prod_pos(uint64_t base);
int32_t tp_prod_park(uint64_t base, int64_t timeout_ns);
int32_t tp_offer(uint64_t base, const char *src, uint32_t size);
int64_t tp_write(uint64_t base, uint64_t src, int64_t n, uint32_t src_stride);

/* consumer */
int64_t tp_peek(uint64_t base, int32_t ci, int64_t n);
void tp_release(uint64_t base, int32_t ci, int64_t n);
uint64_t tp_cons_pos(uint64_t base, int32_t ci);
int64_t tp_lag(uint64_t base, int32_t ci);
int32_t tp_cons_park(uint64_t base, int32_t ci, int64_t timeout_ns);
void tp_set_active(uint64_t base, int32_t ci, uint32_t active);
void tp_enable_park(uint64_t base);
int32_t tp_poll(uint64_t base, int32_t ci, char *dst, uint32_t size);

/* conflated board */
uint64_t tp_board_begin(uint64_t base, uint32_t key);
void tp_board_commit(uint64_t base, uint32_t key);
int64_t tp_board_read(uint64_t base, uint32_t key, uint64_t dst);
int64_t tp_board_updates(uint64_t base, uint32_t key);

/* liveness, time, waiting */
void tp_heartbeat(uint64_t base, int32_t who, int64_t now_ns);
int64_t tp_now_ns(void);
uint64_t tp_rdtsc(void);
void tp_pause(void);
void tp_yield(void);
int32_t tp_futex_wait(uint64_t addr, uint32_t expected, int64_t timeout_ns);
int32_t tp_futex_wake(uint64_t addr, int32_t n);
