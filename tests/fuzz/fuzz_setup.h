/* What the harnesses and the corpus generator (gen_corpus.c) agree on: the
 * server harness's node id and the model of the generator's views, the
 * scheduler harness's configuration byte, the limits a harness keeps to.
 * A seed made for other values still runs, only less deep. */
#ifndef PS_FUZZ_SETUP_H
#define PS_FUZZ_SETUP_H

/* fuzz_server: the server under test is node 1; the generator's views have
 * server 2 (the primary of the range node 1 backs up) and workers 3, 4. */
#define FUZZ_SERVER_ID 1
#define FUZZ_PEER_ID 2
#define FUZZ_WORKER_A 3
#define FUZZ_WORKER_B 4

/* A view whose model has more keys is not adopted by fuzz_server, and a
 * checkpoint of more is not loaded whole by fuzz_checkpoint: the size of a
 * model is the scheduler's (and a worker's) to choose, not an input's. */
#define FUZZ_MAX_KEYS (1u << 16)

/* The generator's model: two dense tensors and one sparse table. */
#define FUZZ_MODEL_W 1000
#define FUZZ_MODEL_B 600
#define FUZZ_MODEL_TOTAL (FUZZ_MODEL_W + FUZZ_MODEL_B)
#define FUZZ_RANGE_SPLIT 800 /* [0, 800): node 1; [800, 1600): node 2 */
#define FUZZ_SPARSE_DIM 8

/* fuzz_scheduler: an input's first byte configures the scheduler. */
#define FUZZ_SCHED_SERVERS(b) (1u + ((b)&3u) % 3u)     /* 1..3 */
#define FUZZ_SCHED_WORKERS(b) (1u + (((b) >> 2) & 1u)) /* 1..2 */
#define FUZZ_SCHED_ASP(b) (((b) >> 3) & 1u)            /* else bsp */
#define FUZZ_SCHED_REPLICATION(b) (((b) >> 4) & 3u)    /* 0: default */
#define FUZZ_SCHED_REBALANCE(b) (((b) >> 6) & 1u)
#define FUZZ_SCHED_CHECKPOINTS(b) (((b) >> 7) & 1u) /* a dir, every 4 steps */
#define FUZZ_SCHED_CKPT_EVERY 4
#define FUZZ_SCHED_HEARTBEAT_TIMEOUT_MS 1000
/* 2 servers, 2 workers, BSP, 2 copies, rebalance, checkpoints. */
#define FUZZ_SCHED_DEFAULT_CONFIG 0xe5u
/* fuzz_scheduler's control record op k > 0: node k has been silent for
 * arg * FUZZ_SCHED_SILENCE_UNIT_MS more, then the periodic check runs. */
#define FUZZ_SCHED_SILENCE_UNIT_MS 16

#endif
