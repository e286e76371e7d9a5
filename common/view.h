/* Key ranges and the cluster view.
 *
 * Dense tensors are laid end to end in one key space [0, total); each key is
 * one float32. The scheduler cuts that space into one contiguous range per
 * server, balanced by bytes, and publishes it with the members of the cluster
 * as a view; every change publishes a new view with epoch + 1.
 *
 * ps_view_t is the validated, plain-C form of ps.View that servers and
 * clients keep: ps_view_from_pb refuses a view whose ranges do not cover the
 * key space exactly, overlap, or name an owner that is not a server of the
 * view. Objects here are immutable after creation; any thread may read them.
 */
#ifndef PS_VIEW_H
#define PS_VIEW_H

#include <stddef.h>
#include <stdint.h>

#include "common/auth.h"
#include "common/keys.h"
#include "proto/ps.pb-c.h"
/* The model types and the opaque view of the public API; the struct is
 * defined below, under the tag ps/view.h names. */
#include "ps/model.h"
#include "ps/view.h"

#define PS_ADDR_MAX 256
/* Ranges start on multiples of this many keys (64 bytes), so every server's
 * slice is cache-line aligned and vectorizes without a scalar head. */
#define PS_RANGE_ALIGN 16

/* Most copies of a range (primary included): the replication factor's
 * upper bound. */
#define PS_MAX_REPLICAS 4

typedef struct {
  uint64_t begin, end;
  uint32_t server_id; /* the primary */
  /* Replication (issue #4): the backups in chain order, and which of them
   * (bit i: backups[i]) are still being filled by a snapshot. */
  uint32_t nbackups;
  uint32_t backups[PS_MAX_REPLICAS - 1];
  uint32_t syncing_mask;
} ps_range_t;

/* 1 if node id is a backup of r (any state) / a backup still syncing. */
int ps_range_has_backup(const ps_range_t *r, uint32_t id);
int ps_range_backup_syncing(const ps_range_t *r, uint32_t id);

typedef struct {
  uint32_t id;
  int role;  /* PS__ROLE__* */
  int state; /* PS__NODE_STATE__* */
  char address[PS_ADDR_MAX];
  /* Workers: the first BSP step it contributes to (0: from the start), and
   * whether the servers have yet to confirm it (proto NodeInfo). */
  uint64_t join_clock;
  int joining;
  /* Workers (issue #16): the rank, and the first step it no longer
   * contributes to (psctl remove-worker; 0: none). */
  uint32_t rank;
  uint64_t leave_clock;
  /* The node's session token (common/auth.h), or "": only servers' views
   * carry them. */
  char token[PS_AUTH_TOKEN_HEX + 1];
  /* A server's CURVE public key (Z85), or "" (plaintext). */
  char curve_key[PS_KEY_Z85_LEN + 1];
} ps_node_t;

/* The largest SSP staleness bound: a server keeps staleness + 1 gradient
 * sums of each range it holds. */
#define PS_SSP_STALENESS_MAX 64

struct ps_view_s {
  uint64_t epoch;
  int mode; /* PS__CONSISTENCY_MODE__* */
  uint32_t staleness; /* MODE_SSP's bound; 0 otherwise */
  uint32_t live_workers;
  size_t nnodes;
  ps_node_t *nodes;
  size_t nranges;
  ps_range_t *ranges; /* sorted by begin, covering [0, model.total) */
  ps_model_t model;
  uint64_t start_clock; /* the step the job starts from (0, or a restore's) */
  uint32_t replication; /* configured copies per range (1: none) */
  uint32_t servers;     /* servers the job started with; 0: not said */
  char *restore_dir;    /* restored job: the checkpoint directory; else NULL */
  /* The sparse partitions (ps_view_sparse_part): the indices into ranges
   * of the non-empty ranges, in range order. A sparse row lives in one of
   * them, with the range's primary and backups. */
  size_t nsparse_parts;
  uint32_t *sparse_parts;
};

/* Cuts [0, total) into n ranges of near-equal size whose inner boundaries are
 * multiples of PS_RANGE_ALIGN (when total allows). begins must hold n + 1
 * entries: range i is [begins[i], begins[i+1]). Returns PS_ERR_INVAL if n is
 * 0. Pieces may be empty only when total < n * PS_RANGE_ALIGN. */
int ps_range_split(uint64_t total, uint32_t n, uint64_t *begins);

/* Index of the range that holds key, or -1. Binary search. */
int ps_view_find_range(const ps_view_t *v, uint64_t key);

/* The node with this id, or NULL. */
const ps_node_t *ps_view_node(const ps_view_t *v, uint32_t id);

/* The tensor with this name, or NULL. */
const ps_tensor_spec_t *ps_model_tensor(const ps_model_t *m, const char *name);

/* The sparse table with this name, or NULL. */
const ps_sparse_spec_t *ps_model_sparse(const ps_model_t *m, const char *name);

/* The salt of a sparse table: a 64-bit hash of its name. */
uint64_t ps_sparse_salt(const char *name);

/* The index into v->ranges of the range that holds row id of the table
 * with this salt, or -1 if the view has no non-empty range. Rows are
 * hash-partitioned over the non-empty ranges:
 *   part = ((ps_mix64(id ^ salt) >> 32) * nparts) >> 32
 * into v->sparse_parts: a multiply-shift that maps the top 32 hash bits
 * evenly onto the parts without a division. The ranges of a job never
 * change (failover and handover change their servers only), so a row stays
 * in its range for the job's life and moves, replicates and fails over
 * with it. Every node computes the same range from the same view. */
int64_t ps_view_sparse_range(const ps_view_t *v, uint64_t salt, uint64_t id);

/* The part index (0..nparts) of row id for nparts partitions: the formula
 * above, for callers that hold no view (a checkpoint's restore). */
uint32_t ps_sparse_part_of(uint64_t salt, uint64_t id, uint32_t nparts);

/* The node id of the primary of ps_view_sparse_range, or -1. */
int64_t ps_view_sparse_owner(const ps_view_t *v, uint64_t salt, uint64_t id);

/* Validates and copies pb. Returns NULL and fills err on a bad view. Caller
 * owns the result (ps_view_destroy). A delta (pb->base_epoch != 0) is
 * refused: it needs its base. */
ps_view_t *ps_view_from_pb(const Ps__View *pb, char *err, size_t errlen);

/* The same, where pb may be a delta (View.base_epoch, issue #16): its nodes
 * replace base's of the same id or come after them, its ranges (with
 * ranges_delta) replace base's at range_index, the rest is pb's. base
 * must be the view of epoch pb->base_epoch (else refused); NULL or ignored
 * for a whole view. The result shares nothing with base. */
ps_view_t *ps_view_from_pb_base(const Ps__View *pb, const ps_view_t *base,
                                char *err, size_t errlen);

/* Validates and copies one node (d is cleared first). PS_OK, or
 * PS_ERR_INVAL with err. */
int ps_node_from_pb(const Ps__NodeInfo *n, ps_node_t *d, char *err,
                    size_t errlen);

/* 1 if a view would show the two nodes alike (every field of ps_node_t). */
int ps_node_equal(const ps_node_t *a, const ps_node_t *b);

/* 1 if the two ranges have the same keys, servers and syncing backups. */
int ps_range_equal(const ps_range_t *a, const ps_range_t *b);

/* A deep copy of v, or NULL without memory. */
ps_view_t *ps_view_copy(const ps_view_t *v);

void ps_view_destroy(ps_view_t **v_p);

/* Validates and copies a model spec (tensors contiguous from 0, names unique
 * and non-empty, lengths > 0; sparse tables with unique non-empty names and
 * 0 < dim <= PS_SPARSE_DIM_MAX). Returns PS_OK or PS_ERR_INVAL with err. dst
 * owns its tensors afterwards (ps_model_clear). */
int ps_model_from_pb(const Ps__ModelSpec *pb, ps_model_t *dst, char *err,
                     size_t errlen);

/* Fills pb (and tensors_pb, an array of m->ntensors entries, tensor_ptrs,
 * its pointer array, and opts_pb, m->ntensors entries for the tensors'
 * own optimizers) to describe m. Nothing is allocated: pb points into m and
 * into the arrays, so they must outlive pb's packing. */
void ps_model_to_pb(const ps_model_t *m, Ps__ModelSpec *pb,
                    Ps__TensorSpec *tensors_pb, Ps__TensorSpec **tensor_ptrs,
                    Ps__OptimizerSpec *opts_pb);

/* Fills pb->sparse_tables from m (specs_pb and ptrs: m->nsparse entries
 * each), after ps_model_to_pb; like it, nothing is allocated. */
void ps_model_sparse_to_pb(const ps_model_t *m, Ps__ModelSpec *pb,
                           Ps__SparseTableSpec *specs_pb,
                           Ps__SparseTableSpec **ptrs,
                           Ps__OptimizerSpec *opts_pb);

/* Copies src into dst (dst owns its arrays afterwards). */
int ps_model_copy(ps_model_t *dst, const ps_model_t *src);

/* 1 if the two specs describe the same model and optimizer, else 0. */
int ps_model_equal(const ps_model_t *a, const ps_model_t *b);

void ps_model_clear(ps_model_t *m);

#endif
