#include "view.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "codec.h"
#include "err.h"
#include "init.h"
#include "optimizer.h"

/* Whole blocks of PS_RANGE_ALIGN keys are dealt out first: every piece gets
 * total / n / ALIGN blocks and the first (blocks % n) pieces one more. The
 * tail of fewer than ALIGN keys goes to the last piece, which never got an
 * extra block, so no two pieces differ by more than ALIGN keys. When there
 * are fewer blocks than pieces, the pieces after the last block are empty
 * except the last, which holds the tail. */
int ps_range_split(uint64_t total, uint32_t n, uint64_t *begins) {
  if (n == 0 || begins == NULL) return PS_ERR_INVAL;
  uint64_t blocks = total / PS_RANGE_ALIGN;
  uint64_t per_piece = blocks / n;
  uint64_t extra = blocks % n;
  uint64_t at = 0;
  for (uint32_t i = 0; i < n; i++) {
    begins[i] = at;
    at += (per_piece + (i < extra ? 1 : 0)) * PS_RANGE_ALIGN;
  }
  begins[n] = total;
  return PS_OK;
}

int ps_view_find_range(const ps_view_t *v, uint64_t key) {
  if (v == NULL || v->nranges == 0) return -1;
  /* The last range that begins at or before key: empty ranges share their
   * begin with the next one, so this lands on the range that holds it. */
  size_t lo = 0, hi = v->nranges;
  while (hi - lo > 1) {
    size_t mid = lo + (hi - lo) / 2;
    if (v->ranges[mid].begin <= key)
      lo = mid;
    else
      hi = mid;
  }
  const ps_range_t *r = &v->ranges[lo];
  if (key < r->begin || key >= r->end) return -1;
  return (int)lo;
}

const ps_node_t *ps_view_node(const ps_view_t *v, uint32_t id) {
  if (v == NULL) return NULL;
  for (size_t i = 0; i < v->nnodes; i++)
    if (v->nodes[i].id == id) return &v->nodes[i];
  return NULL;
}

const ps_tensor_spec_t *ps_model_tensor(const ps_model_t *m, const char *name) {
  if (m == NULL || name == NULL) return NULL;
  for (size_t i = 0; i < m->ntensors; i++)
    if (strcmp(m->tensors[i].name, name) == 0) return &m->tensors[i];
  return NULL;
}

static void optimizer_from_pb(const Ps__OptimizerSpec *pb,
                              ps_optimizer_spec_t *o) {
  *o = (ps_optimizer_spec_t){
      .kind = (int)pb->kind,
      .learning_rate = pb->learning_rate,
      .momentum = pb->momentum,
      .beta1 = pb->beta1,
      .beta2 = pb->beta2,
      .epsilon = pb->epsilon,
      .l1 = pb->l1,
      .l2 = pb->l2,
      .ftrl_beta = pb->ftrl_beta,
  };
}

static void optimizer_to_pb(const ps_optimizer_spec_t *o,
                            Ps__OptimizerSpec *pb) {
  ps__optimizer_spec__init(pb);
  pb->kind = (Ps__Optimizer)o->kind;
  pb->learning_rate = o->learning_rate;
  pb->momentum = o->momentum;
  pb->beta1 = o->beta1;
  pb->beta2 = o->beta2;
  pb->epsilon = o->epsilon;
  pb->l1 = o->l1;
  pb->l2 = o->l2;
  pb->ftrl_beta = o->ftrl_beta;
}

int ps_model_from_pb(const Ps__ModelSpec *pb, ps_model_t *dst, char *err,
                     size_t errlen) {
  memset(dst, 0, sizeof(*dst));
  if (pb == NULL) {
    return ps_errf(err, errlen, PS_ERR_INVAL, "no model");
  }
  ps_optimizer_spec_t def = {
      .kind = (int)pb->optimizer,
      .learning_rate = pb->learning_rate,
      .momentum = pb->momentum,
      .beta1 = pb->beta1,
      .beta2 = pb->beta2,
      .epsilon = pb->epsilon,
      .l1 = pb->l1,
      .l2 = pb->l2,
      .ftrl_beta = pb->ftrl_beta,
  };
  int rc = ps_optimizer_check(&def, "the model's optimizer", err, errlen);
  if (rc != PS_OK) return rc;
  ps_lr_schedule_spec_t sched = {
      .kind = (int)pb->lr_schedule,
      .total_steps = pb->lr_total_steps,
      .warmup_steps = pb->lr_warmup_steps,
      .epochs = pb->lr_epochs,
      .examples_per_epoch = pb->lr_examples_per_epoch,
      .worker_batch = pb->lr_worker_batch};
  rc = ps_lr_schedule_check(&sched, err, errlen);
  if (rc != PS_OK) return rc;
  uint64_t total = 0;
  for (size_t i = 0; i < pb->n_tensors; i++) {
    const Ps__TensorSpec *t = pb->tensors[i];
    const char *name = t->name ? t->name : "";
    size_t len = strlen(name);
    if (len == 0 || len >= PS_NAME_MAX) {
      return ps_errf(err, errlen, PS_ERR_INVAL,
                     "tensor %zu: name \"%s\" must have 1 to %d bytes", i, name,
                     PS_NAME_MAX - 1);
    }
    for (size_t j = 0; j < i; j++) {
      if (strcmp(pb->tensors[j]->name, name) == 0) {
        return ps_errf(err, errlen, PS_ERR_INVAL,
                       "tensor %zu: name \"%s\" is used by tensor %zu", i, name,
                       j);
      }
    }
    if (t->length == 0) {
      return ps_errf(err, errlen, PS_ERR_INVAL, "tensor \"%s\" has length 0",
                     name);
    }
    if (t->offset != total) {
      return ps_errf(
          err, errlen, PS_ERR_INVAL,
          "tensor \"%s\" starts at key %llu, but the tensors before it "
          "end at %llu",
          name, (unsigned long long)t->offset, (unsigned long long)total);
    }
    if (t->length > UINT64_MAX - total) {
      return ps_errf(err, errlen, PS_ERR_INVAL,
                     "tensor \"%s\": key space overflows 64 bits", name);
    }
    if (t->init != PS__INIT__INIT_ZERO && t->init != PS__INIT__INIT_UNIFORM) {
      return ps_errf(err, errlen, PS_ERR_INVAL,
                     "tensor \"%s\": unknown init %d", name, (int)t->init);
    }
    if (!isfinite(t->init_scale) || t->init_scale < 0) {
      return ps_errf(err, errlen, PS_ERR_INVAL,
                     "tensor \"%s\": init scale %g is not a finite number >= 0",
                     name, (double)t->init_scale);
    }
    if (t->push_codec < PS_CODEC_NONE || t->push_codec > PS_CODEC_TOPK)
      return ps_errf(err, errlen, PS_ERR_INVAL,
                     "tensor \"%s\": unknown push codec %d", name,
                     (int)t->push_codec);
    if (t->pull_codec != PS_CODEC_NONE && t->pull_codec != PS_CODEC_FP16 &&
        t->pull_codec != PS_CODEC_INT8)
      return ps_errf(err, errlen, PS_ERR_INVAL,
                     "tensor \"%s\": pull codec %d is not none, fp16 or int8",
                     name, (int)t->pull_codec);
    if (t->push_codec == PS_CODEC_TOPK
            ? !(t->topk_fraction > 0 && t->topk_fraction <= 1)
            : t->topk_fraction != 0)
      return ps_errf(err, errlen, PS_ERR_INVAL,
                     "tensor \"%s\": top-k fraction %g must be in (0, 1] "
                     "with codec topk and 0 otherwise",
                     name, (double)t->topk_fraction);
    if (t->optimizer) {
      char what[PS_NAME_MAX + 16];
      snprintf(what, sizeof(what), "tensor \"%s\"", name);
      ps_optimizer_spec_t o;
      optimizer_from_pb(t->optimizer, &o);
      rc = ps_optimizer_check(&o, what, err, errlen);
      if (rc != PS_OK) return rc;
    }
    total += t->length;
  }
  for (size_t i = 0; i < pb->n_sparse_tables; i++) {
    const Ps__SparseTableSpec *t = pb->sparse_tables[i];
    const char *name = t->name ? t->name : "";
    size_t len = strlen(name);
    if (len == 0 || len >= PS_NAME_MAX) {
      return ps_errf(err, errlen, PS_ERR_INVAL,
                     "sparse table %zu: name \"%s\" must have 1 to %d bytes", i,
                     name, PS_NAME_MAX - 1);
    }
    for (size_t j = 0; j < i; j++) {
      const char *other = pb->sparse_tables[j]->name;
      if (other && strcmp(other, name) == 0) {
        return ps_errf(
            err, errlen, PS_ERR_INVAL,
            "sparse table %zu: name \"%s\" is used by sparse table %zu", i,
            name, j);
      }
    }
    if (t->dim == 0 || t->dim > PS_SPARSE_DIM_MAX) {
      return ps_errf(err, errlen, PS_ERR_INVAL,
                     "sparse table \"%s\": dim %u is not in 1..%d", name,
                     t->dim, PS_SPARSE_DIM_MAX);
    }
    if (t->init != PS__INIT__INIT_ZERO && t->init != PS__INIT__INIT_UNIFORM) {
      return ps_errf(err, errlen, PS_ERR_INVAL,
                     "sparse table \"%s\": unknown init %d", name,
                     (int)t->init);
    }
    if (!isfinite(t->init_scale) || t->init_scale < 0) {
      return ps_errf(
          err, errlen, PS_ERR_INVAL,
          "sparse table \"%s\": init scale %g is not a finite number >= 0",
          name, (double)t->init_scale);
    }
    if (t->optimizer) {
      char what[PS_NAME_MAX + 16];
      snprintf(what, sizeof(what), "sparse table \"%s\"", name);
      ps_optimizer_spec_t o;
      optimizer_from_pb(t->optimizer, &o);
      rc = ps_optimizer_check(&o, what, err, errlen);
      if (rc != PS_OK) return rc;
      if (o.kind == PS_OPTIMIZER_ADD)
        return ps_errf(err, errlen, PS_ERR_INVAL,
                       "sparse table \"%s\": optimizer add is for dense "
                       "counters only",
                       name);
    }
  }
  if (pb->n_sparse_tables > 0) {
    dst->sparse = calloc(pb->n_sparse_tables, sizeof(*dst->sparse));
    if (dst->sparse == NULL) {
      return ps_errf(err, errlen, PS_ERR_NOMEM, "out of memory");
    }
    for (size_t i = 0; i < pb->n_sparse_tables; i++) {
      const Ps__SparseTableSpec *t = pb->sparse_tables[i];
      ps_sparse_spec_t *d = &dst->sparse[i];
      snprintf(d->name, sizeof(d->name), "%s", t->name);
      d->dim = t->dim;
      d->init = (int)t->init;
      d->init_scale = t->init_scale;
      d->salt = ps_sparse_salt(d->name);
      if (t->optimizer) {
        d->has_optimizer = 1;
        optimizer_from_pb(t->optimizer, &d->optimizer);
      }
    }
    dst->nsparse = pb->n_sparse_tables;
  }
  if (pb->n_tensors > 0) {
    dst->tensors = calloc(pb->n_tensors, sizeof(*dst->tensors));
    if (dst->tensors == NULL) {
      ps_model_clear(dst);
      return ps_errf(err, errlen, PS_ERR_NOMEM, "out of memory");
    }
  }
  for (size_t i = 0; i < pb->n_tensors; i++) {
    const Ps__TensorSpec *t = pb->tensors[i];
    ps_tensor_spec_t *d = &dst->tensors[i];
    snprintf(d->name, sizeof(d->name), "%s", t->name);
    d->offset = t->offset;
    d->length = t->length;
    d->init = (int)t->init;
    d->init_scale = t->init_scale;
    d->push_codec = (int)t->push_codec;
    d->pull_codec = (int)t->pull_codec;
    d->topk_fraction = t->topk_fraction;
    if (t->optimizer) {
      d->has_optimizer = 1;
      optimizer_from_pb(t->optimizer, &d->optimizer);
    }
  }
  dst->ntensors = pb->n_tensors;
  dst->total = total;
  dst->optimizer = (int)pb->optimizer;
  dst->learning_rate = pb->learning_rate;
  dst->momentum = pb->momentum;
  dst->seed = pb->seed;
  dst->beta1 = pb->beta1;
  dst->beta2 = pb->beta2;
  dst->epsilon = pb->epsilon;
  dst->l1 = pb->l1;
  dst->l2 = pb->l2;
  dst->ftrl_beta = pb->ftrl_beta;
  dst->lr_schedule = sched;
  return PS_OK;
}

void ps_model_to_pb(const ps_model_t *m, Ps__ModelSpec *pb,
                    Ps__TensorSpec *tensors_pb, Ps__TensorSpec **tensor_ptrs,
                    Ps__OptimizerSpec *opts_pb) {
  ps__model_spec__init(pb);
  for (size_t i = 0; i < m->ntensors; i++) {
    const ps_tensor_spec_t *t = &m->tensors[i];
    ps__tensor_spec__init(&tensors_pb[i]);
    /* protobuf-c wants char * but only reads it while packing. */
    tensors_pb[i].name = (char *)t->name;
    tensors_pb[i].offset = t->offset;
    tensors_pb[i].length = t->length;
    tensors_pb[i].init = (Ps__Init)t->init;
    tensors_pb[i].init_scale = t->init_scale;
    tensors_pb[i].push_codec = (Ps__Codec)t->push_codec;
    tensors_pb[i].pull_codec = (Ps__Codec)t->pull_codec;
    tensors_pb[i].topk_fraction = t->topk_fraction;
    if (t->has_optimizer) {
      optimizer_to_pb(&t->optimizer, &opts_pb[i]);
      tensors_pb[i].optimizer = &opts_pb[i];
    }
    tensor_ptrs[i] = &tensors_pb[i];
  }
  pb->n_tensors = m->ntensors;
  pb->tensors = m->ntensors > 0 ? tensor_ptrs : NULL;
  pb->optimizer = (Ps__Optimizer)m->optimizer;
  pb->learning_rate = m->learning_rate;
  pb->momentum = m->momentum;
  pb->seed = m->seed;
  pb->beta1 = m->beta1;
  pb->beta2 = m->beta2;
  pb->epsilon = m->epsilon;
  pb->l1 = m->l1;
  pb->l2 = m->l2;
  pb->ftrl_beta = m->ftrl_beta;
  pb->lr_schedule = (Ps__LrSchedule)m->lr_schedule.kind;
  pb->lr_total_steps = m->lr_schedule.total_steps;
  pb->lr_warmup_steps = m->lr_schedule.warmup_steps;
  pb->lr_epochs = m->lr_schedule.epochs;
  pb->lr_examples_per_epoch = m->lr_schedule.examples_per_epoch;
  pb->lr_worker_batch = m->lr_schedule.worker_batch;
}

void ps_model_sparse_to_pb(const ps_model_t *m, Ps__ModelSpec *pb,
                           Ps__SparseTableSpec *specs_pb,
                           Ps__SparseTableSpec **ptrs,
                           Ps__OptimizerSpec *opts_pb) {
  for (size_t i = 0; i < m->nsparse; i++) {
    const ps_sparse_spec_t *t = &m->sparse[i];
    ps__sparse_table_spec__init(&specs_pb[i]);
    specs_pb[i].name = (char *)t->name;
    specs_pb[i].dim = t->dim;
    specs_pb[i].init = (Ps__Init)t->init;
    specs_pb[i].init_scale = t->init_scale;
    if (t->has_optimizer) {
      optimizer_to_pb(&t->optimizer, &opts_pb[i]);
      specs_pb[i].optimizer = &opts_pb[i];
    }
    ptrs[i] = &specs_pb[i];
  }
  pb->n_sparse_tables = m->nsparse;
  pb->sparse_tables = m->nsparse > 0 ? ptrs : NULL;
}

int ps_model_copy(ps_model_t *dst, const ps_model_t *src) {
  *dst = *src;
  dst->tensors = NULL;
  dst->sparse = NULL;
  if (src->ntensors > 0) {
    dst->tensors = malloc(src->ntensors * sizeof(*dst->tensors));
    if (dst->tensors == NULL) goto nomem;
    memcpy(dst->tensors, src->tensors, src->ntensors * sizeof(*dst->tensors));
  }
  if (src->nsparse > 0) {
    dst->sparse = malloc(src->nsparse * sizeof(*dst->sparse));
    if (dst->sparse == NULL) goto nomem;
    memcpy(dst->sparse, src->sparse, src->nsparse * sizeof(*dst->sparse));
    /* A hand-built model may leave salt 0: derive it here. */
    for (size_t i = 0; i < src->nsparse; i++)
      dst->sparse[i].salt = ps_sparse_salt(dst->sparse[i].name);
  }
  return PS_OK;
nomem:
  ps_model_clear(dst);
  return PS_ERR_NOMEM;
}

const ps_sparse_spec_t *ps_model_sparse(const ps_model_t *m, const char *name) {
  if (m == NULL || name == NULL) return NULL;
  for (size_t i = 0; i < m->nsparse; i++)
    if (strcmp(m->sparse[i].name, name) == 0) return &m->sparse[i];
  return NULL;
}

/* FNV-1a over the name, then mixed: table names are short and similar
 * ("emb0", "emb1"), and the salt must still differ in every bit. */
uint64_t ps_sparse_salt(const char *name) {
  uint64_t h = 0xcbf29ce484222325ULL;
  for (const unsigned char *p = (const unsigned char *)name; *p; p++) {
    h ^= *p;
    h *= 0x100000001b3ULL;
  }
  return ps_mix64(h);
}

uint32_t ps_sparse_part_of(uint64_t salt, uint64_t id, uint32_t nparts) {
  uint64_t h = ps_mix64(id ^ salt) >> 32;
  return (uint32_t)((h * (uint64_t)nparts) >> 32);
}

int64_t ps_view_sparse_range(const ps_view_t *v, uint64_t salt, uint64_t id) {
  if (v == NULL || v->nsparse_parts == 0) return -1;
  return v->sparse_parts[ps_sparse_part_of(salt, id,
                                           (uint32_t)v->nsparse_parts)];
}

int64_t ps_view_sparse_owner(const ps_view_t *v, uint64_t salt, uint64_t id) {
  int64_t r = ps_view_sparse_range(v, salt, id);
  return r < 0 ? -1 : (int64_t)v->ranges[r].server_id;
}

int ps_model_equal(const ps_model_t *a, const ps_model_t *b) {
  if (a->nsparse != b->nsparse) return 0;
  for (size_t i = 0; i < a->nsparse; i++) {
    const ps_sparse_spec_t *x = &a->sparse[i], *y = &b->sparse[i];
    if (strcmp(x->name, y->name) != 0 || x->dim != y->dim ||
        x->init != y->init || x->init_scale != y->init_scale ||
        x->has_optimizer != y->has_optimizer ||
        (x->has_optimizer && !ps_optimizer_equal(&x->optimizer, &y->optimizer)))
      return 0;
  }
  ps_optimizer_spec_t da, db;
  ps_model_default_optimizer(a, &da);
  ps_model_default_optimizer(b, &db);
  if (!ps_optimizer_equal(&da, &db) ||
      !ps_lr_schedule_equal(&a->lr_schedule, &b->lr_schedule))
    return 0;
  if (a->ntensors != b->ntensors || a->total != b->total ||
      a->optimizer != b->optimizer || a->learning_rate != b->learning_rate ||
      a->momentum != b->momentum || a->seed != b->seed)
    return 0;
  for (size_t i = 0; i < a->ntensors; i++) {
    const ps_tensor_spec_t *x = &a->tensors[i], *y = &b->tensors[i];
    if (strcmp(x->name, y->name) != 0 || x->offset != y->offset ||
        x->length != y->length || x->init != y->init ||
        x->init_scale != y->init_scale || x->push_codec != y->push_codec ||
        x->pull_codec != y->pull_codec ||
        x->topk_fraction != y->topk_fraction ||
        x->has_optimizer != y->has_optimizer ||
        (x->has_optimizer && !ps_optimizer_equal(&x->optimizer, &y->optimizer)))
      return 0;
  }
  return 1;
}

void ps_model_clear(ps_model_t *m) {
  if (m == NULL) return;
  free(m->tensors);
  free(m->sparse);
  memset(m, 0, sizeof(*m));
}

int ps_node_from_pb(const Ps__NodeInfo *n, ps_node_t *d, char *err,
                    size_t errlen) {
  memset(d, 0, sizeof(*d));
  const char *address = n->address ? n->address : "";
  if (strlen(address) >= PS_ADDR_MAX) {
    return ps_errf(err, errlen, PS_ERR_INVAL,
                   "node %u: address longer than %d bytes", n->id,
                   PS_ADDR_MAX - 1);
  }
  d->id = n->id;
  d->role = (int)n->role;
  d->state = (int)n->state;
  d->join_clock = n->join_clock;
  d->joining = n->joining ? 1 : 0;
  d->rank = n->rank;
  d->leave_clock = n->leave_clock;
  snprintf(d->address, sizeof(d->address), "%s", address);
  const char *tok = n->token ? n->token : "";
  if (tok[0] != '\0' && strlen(tok) != PS_AUTH_TOKEN_HEX)
    return ps_errf(err, errlen, PS_ERR_INVAL,
                   "node %u: a token of %zu characters, not %d", n->id,
                   strlen(tok), PS_AUTH_TOKEN_HEX);
  snprintf(d->token, sizeof(d->token), "%s", tok);
  const char *ck = n->curve_key ? n->curve_key : "";
  if (ck[0] != '\0' && strlen(ck) != PS_KEY_Z85_LEN)
    return ps_errf(err, errlen, PS_ERR_INVAL,
                   "node %u: a CURVE key of %zu characters, not %d", n->id,
                   strlen(ck), PS_KEY_Z85_LEN);
  snprintf(d->curve_key, sizeof(d->curve_key), "%s", ck);
  return PS_OK;
}

int ps_node_equal(const ps_node_t *a, const ps_node_t *b) {
  return a->id == b->id && a->role == b->role && a->state == b->state &&
         a->join_clock == b->join_clock && a->joining == b->joining &&
         a->rank == b->rank && a->leave_clock == b->leave_clock &&
         strcmp(a->address, b->address) == 0 &&
         strcmp(a->token, b->token) == 0 &&
         strcmp(a->curve_key, b->curve_key) == 0;
}

int ps_range_equal(const ps_range_t *a, const ps_range_t *b) {
  if (a->begin != b->begin || a->end != b->end ||
      a->server_id != b->server_id || a->nbackups != b->nbackups ||
      a->syncing_mask != b->syncing_mask)
    return 0;
  for (uint32_t k = 0; k < a->nbackups && k < PS_MAX_REPLICAS - 1; k++)
    if (a->backups[k] != b->backups[k]) return 0;
  return 1;
}

/* The view's nodes: pb's, or for a delta (pb->base_epoch != 0) base's with
 * pb's replacing those of the same id and the new ones after them. */
static int copy_nodes(ps_view_t *v, const Ps__View *pb, const ps_view_t *base,
                      char *err, size_t errlen) {
  size_t nbase = 0;
  if (pb->base_epoch != 0) {
    if (pb->base_epoch >= pb->epoch)
      return ps_errf(err, errlen, PS_ERR_INVAL,
                     "a delta of epoch %llu against the later epoch %llu",
                     (unsigned long long)pb->epoch,
                     (unsigned long long)pb->base_epoch);
    if (base == NULL || base->epoch != pb->base_epoch)
      return ps_errf(err, errlen, PS_ERR_INVAL,
                     "a delta against epoch %llu, but the view held is of "
                     "epoch %llu",
                     (unsigned long long)pb->base_epoch,
                     base ? (unsigned long long)base->epoch : 0ull);
    nbase = base->nnodes;
  }
  if (nbase + pb->n_nodes == 0) return PS_OK;
  v->nodes = calloc(nbase + pb->n_nodes, sizeof(*v->nodes));
  if (v->nodes == NULL) {
    return ps_errf(err, errlen, PS_ERR_NOMEM, "out of memory");
  }
  if (nbase) memcpy(v->nodes, base->nodes, nbase * sizeof(*v->nodes));
  v->nnodes = nbase;
  for (size_t i = 0; i < pb->n_nodes; i++) {
    const Ps__NodeInfo *n = pb->nodes[i];
    /* Lookups by id must not depend on which duplicate comes first: a node
     * this list added already, or a base node it replaced already (the
     * scan over the earlier entries runs for a delta's few only). */
    ps_node_t *d = (ps_node_t *)ps_view_node(v, n->id);
    int twice = d != NULL && (size_t)(d - v->nodes) >= nbase;
    for (size_t j = 0; d != NULL && !twice && j < i; j++)
      twice = pb->nodes[j]->id == n->id;
    if (twice)
      return ps_errf(err, errlen, PS_ERR_INVAL, "node id %u appears twice",
                     n->id);
    if (d == NULL) d = &v->nodes[v->nnodes++];
    int rc = ps_node_from_pb(n, d, err, errlen);
    if (rc != PS_OK) return rc;
  }
  return PS_OK;
}

/* Validates and copies n ranges (in key order) into v. */
static int copy_range_list(ps_view_t *v, Ps__KeyRange *const *ranges, size_t n,
                           char *err, size_t errlen) {
  if (n == 0) {
    if (v->model.total == 0) return PS_OK;
    return ps_errf(err, errlen, PS_ERR_INVAL,
                   "no key ranges, but the model has %llu keys",
                   (unsigned long long)v->model.total);
  }
  v->ranges = calloc(n, sizeof(*v->ranges));
  if (v->ranges == NULL) {
    return ps_errf(err, errlen, PS_ERR_NOMEM, "out of memory");
  }
  uint64_t expect = 0;
  for (size_t i = 0; i < n; i++) {
    const Ps__KeyRange *r = ranges[i];
    unsigned long long b = r->begin, e = r->end;
    if (b > e) {
      return ps_errf(err, errlen, PS_ERR_INVAL,
                     "range %zu [%llu, %llu) ends before it begins", i, b, e);
    }
    if (b < expect) {
      return ps_errf(err, errlen, PS_ERR_INVAL,
                     "range %zu [%llu, %llu) overlaps the keys before %llu", i,
                     b, e, (unsigned long long)expect);
    }
    if (b > expect) {
      return ps_errf(err, errlen, PS_ERR_INVAL,
                     "keys [%llu, %llu) are in no range (gap before "
                     "range %zu)",
                     (unsigned long long)expect, b, i);
    }
    const ps_node_t *owner = ps_view_node(v, r->server_id);
    if (owner == NULL) {
      return ps_errf(err, errlen, PS_ERR_INVAL,
                     "range %zu [%llu, %llu): owner %u is not a node "
                     "of the view",
                     i, b, e, r->server_id);
    }
    if (owner->role != PS__ROLE__ROLE_SERVER) {
      return ps_errf(err, errlen, PS_ERR_INVAL,
                     "range %zu [%llu, %llu): owner %u is not a "
                     "server (role %d)",
                     i, b, e, r->server_id, owner->role);
    }
    ps_range_t *d = &v->ranges[i];
    *d = (ps_range_t){
        .begin = r->begin, .end = r->end, .server_id = r->server_id};
    if (r->n_backups > PS_MAX_REPLICAS - 1) {
      return ps_errf(err, errlen, PS_ERR_INVAL,
                     "range %zu [%llu, %llu): %zu backups, at most %d", i, b, e,
                     r->n_backups, PS_MAX_REPLICAS - 1);
    }
    for (size_t j = 0; j < r->n_backups; j++) {
      uint32_t id = r->backups[j];
      const ps_node_t *bn = ps_view_node(v, id);
      if (bn == NULL || bn->role != PS__ROLE__ROLE_SERVER ||
          id == r->server_id || ps_range_has_backup(d, id)) {
        return ps_errf(
            err, errlen, PS_ERR_INVAL,
            "range %zu [%llu, %llu): backup %u is not a server of the "
            "view, is the primary, or is listed twice",
            i, b, e, id);
      }
      d->backups[d->nbackups++] = id;
    }
    for (size_t j = 0; j < r->n_syncing; j++) {
      uint32_t bit = 0;
      for (uint32_t k = 0; k < d->nbackups; k++)
        if (d->backups[k] == r->syncing[j]) bit = 1u << k;
      if (bit == 0) {
        return ps_errf(
            err, errlen, PS_ERR_INVAL,
            "range %zu [%llu, %llu): syncing node %u is not a backup", i, b, e,
            r->syncing[j]);
      }
      d->syncing_mask |= bit;
    }
    expect = r->end;
  }
  v->nranges = n;
  if (expect != v->model.total) {
    return ps_errf(err, errlen, PS_ERR_INVAL,
                   "ranges end at key %llu, but the model has %llu keys",
                   (unsigned long long)expect,
                   (unsigned long long)v->model.total);
  }
  return PS_OK;
}

/* The view's ranges: pb's, or for a delta with ranges_delta base's with
 * pb's in place of those range_index names. Validated as a whole. */
static int copy_ranges(ps_view_t *v, const Ps__View *pb, const ps_view_t *base,
                       char *err, size_t errlen) {
  if (pb->base_epoch == 0 || !pb->ranges_delta)
    return copy_range_list(v, pb->ranges, pb->n_ranges, err, errlen);
  if (base == NULL || pb->n_range_index != pb->n_ranges)
    return ps_errf(err, errlen, PS_ERR_INVAL,
                   "a delta of %zu ranges with %zu indices", pb->n_ranges,
                   pb->n_range_index);
  size_t n = base->nranges;
  Ps__KeyRange *krs = calloc(n + 1, sizeof(*krs));
  Ps__KeyRange **ptrs = calloc(n + 1, sizeof(*ptrs));
  uint32_t *syncing = calloc((n + 1) * (PS_MAX_REPLICAS - 1), sizeof(*syncing));
  int rc = PS_OK;
  if (krs == NULL || ptrs == NULL || syncing == NULL) {
    rc = ps_errf(err, errlen, PS_ERR_NOMEM, "out of memory");
    goto out;
  }
  for (size_t i = 0; i < n; i++) {
    const ps_range_t *r = &base->ranges[i];
    ps__key_range__init(&krs[i]);
    krs[i].begin = r->begin;
    krs[i].end = r->end;
    krs[i].server_id = r->server_id;
    krs[i].backups = (uint32_t *)r->backups;
    krs[i].n_backups = r->nbackups;
    krs[i].syncing = &syncing[i * (PS_MAX_REPLICAS - 1)];
    for (uint32_t k = 0; k < r->nbackups; k++)
      if ((r->syncing_mask >> k) & 1u)
        krs[i].syncing[krs[i].n_syncing++] = r->backups[k];
    ptrs[i] = &krs[i];
  }
  for (size_t j = 0; j < pb->n_ranges; j++) {
    uint32_t at = pb->range_index[j];
    if (at >= n || ptrs[at] != &krs[at]) {
      rc = ps_errf(err, errlen, PS_ERR_INVAL,
                   "delta range index %u: beyond the %zu ranges or listed "
                   "twice",
                   at, n);
      goto out;
    }
    ptrs[at] = pb->ranges[j];
  }
  rc = copy_range_list(v, ptrs, n, err, errlen);
out:
  free(krs);
  free(ptrs);
  free(syncing);
  return rc;
}

int ps_range_has_backup(const ps_range_t *r, uint32_t id) {
  for (uint32_t k = 0; k < r->nbackups; k++)
    if (r->backups[k] == id) return 1;
  return 0;
}

int ps_range_backup_syncing(const ps_range_t *r, uint32_t id) {
  for (uint32_t k = 0; k < r->nbackups; k++)
    if (r->backups[k] == id) return (r->syncing_mask >> k) & 1u;
  return 0;
}

/* The non-empty ranges, the partitions of ps_view_sparse_range. */
static int sparse_parts(ps_view_t *v) {
  v->sparse_parts = calloc(v->nranges + 1, sizeof(*v->sparse_parts));
  if (v->sparse_parts == NULL) return PS_ERR_NOMEM;
  for (size_t i = 0; i < v->nranges; i++)
    if (v->ranges[i].begin < v->ranges[i].end)
      v->sparse_parts[v->nsparse_parts++] = (uint32_t)i;
  return PS_OK;
}

ps_view_t *ps_view_from_pb(const Ps__View *pb, char *err, size_t errlen) {
  return ps_view_from_pb_base(pb, NULL, err, errlen);
}

ps_view_t *ps_view_from_pb_base(const Ps__View *pb, const ps_view_t *base,
                                char *err, size_t errlen) {
  if (pb == NULL) {
    ps_errf(err, errlen, PS_ERR_INVAL, "no view");
    return NULL;
  }
  if (pb->mode != PS__CONSISTENCY_MODE__MODE_BSP &&
      pb->mode != PS__CONSISTENCY_MODE__MODE_ASP &&
      pb->mode != PS__CONSISTENCY_MODE__MODE_SSP) {
    ps_errf(err, errlen, PS_ERR_INVAL, "unknown consistency mode %d",
            (int)pb->mode);
    return NULL;
  }
  if (pb->staleness > PS_SSP_STALENESS_MAX ||
      (pb->staleness > 0 && pb->mode != PS__CONSISTENCY_MODE__MODE_SSP)) {
    ps_errf(err, errlen, PS_ERR_INVAL,
            "staleness %u: only ssp has one, from 0 to %d", pb->staleness,
            PS_SSP_STALENESS_MAX);
    return NULL;
  }
  ps_view_t *v = calloc(1, sizeof(*v));
  if (v == NULL) {
    ps_errf(err, errlen, PS_ERR_NOMEM, "out of memory");
    return NULL;
  }
  v->epoch = pb->epoch;
  v->mode = (int)pb->mode;
  v->staleness = pb->staleness;
  v->live_workers = pb->live_workers;
  v->start_clock = pb->start_clock;
  v->replication = pb->replication ? pb->replication : 1;
  v->servers = pb->servers;
  if (pb->restore_dir && pb->restore_dir[0]) {
    v->restore_dir = strdup(pb->restore_dir);
    if (v->restore_dir == NULL) {
      ps_errf(err, errlen, PS_ERR_NOMEM, "out of memory");
      goto fail;
    }
  }
  char why[256] = "";
  if (pb->model == NULL) {
    ps_errf(err, errlen, PS_ERR_INVAL, "view has no model");
    goto fail;
  }
  if (ps_model_from_pb(pb->model, &v->model, why, sizeof(why)) != PS_OK) {
    ps_errf(err, errlen, PS_ERR_INVAL, "model: %s", why);
    goto fail;
  }
  if (copy_nodes(v, pb, base, err, errlen) != PS_OK) goto fail;
  if (copy_ranges(v, pb, base, err, errlen) != PS_OK) goto fail;
  if (sparse_parts(v) != PS_OK) {
    ps_errf(err, errlen, PS_ERR_NOMEM, "out of memory");
    goto fail;
  }
  return v;
fail:
  ps_view_destroy(&v);
  return NULL;
}

ps_view_t *ps_view_copy(const ps_view_t *src) {
  ps_view_t *v = calloc(1, sizeof(*v));
  if (v == NULL) return NULL;
  *v = *src;
  v->nodes = NULL;
  v->ranges = NULL;
  v->restore_dir = NULL;
  v->sparse_parts = NULL;
  memset(&v->model, 0, sizeof(v->model));
  if (src->nnodes) {
    v->nodes = malloc(src->nnodes * sizeof(*v->nodes));
    if (v->nodes == NULL) goto fail;
    memcpy(v->nodes, src->nodes, src->nnodes * sizeof(*v->nodes));
  }
  if (src->nranges) {
    v->ranges = malloc(src->nranges * sizeof(*v->ranges));
    if (v->ranges == NULL) goto fail;
    memcpy(v->ranges, src->ranges, src->nranges * sizeof(*v->ranges));
  }
  v->sparse_parts = malloc((src->nsparse_parts + 1) * sizeof(*v->sparse_parts));
  if (v->sparse_parts == NULL) goto fail;
  if (src->nsparse_parts)
    memcpy(v->sparse_parts, src->sparse_parts,
           src->nsparse_parts * sizeof(*v->sparse_parts));
  if (src->restore_dir && (v->restore_dir = strdup(src->restore_dir)) == NULL)
    goto fail;
  if (ps_model_copy(&v->model, &src->model) != PS_OK) goto fail;
  return v;
fail:
  ps_view_destroy(&v);
  return NULL;
}

void ps_view_destroy(ps_view_t **v_p) {
  if (v_p == NULL || *v_p == NULL) return;
  ps_view_t *v = *v_p;
  free(v->nodes);
  free(v->ranges);
  free(v->restore_dir);
  free(v->sparse_parts);
  ps_model_clear(&v->model);
  free(v);
  *v_p = NULL;
}

/* ---- the public view (ps/view.h) and model constants (ps/model.h) ---- */

/* ps/model.h spells the generated enums' values without including the
 * generated header; they must stay the same numbers. */
_Static_assert(PS_INIT_ZERO == PS__INIT__INIT_ZERO, "PS_INIT_ZERO");
_Static_assert(PS_INIT_UNIFORM == PS__INIT__INIT_UNIFORM, "PS_INIT_UNIFORM");
_Static_assert(PS_OPTIMIZER_SGD == PS__OPTIMIZER__OPT_SGD, "PS_OPTIMIZER_SGD");
_Static_assert(PS_OPTIMIZER_ADD == PS__OPTIMIZER__OPT_ADD, "PS_OPTIMIZER_ADD");
_Static_assert(PS_OPTIMIZER_ADAGRAD == PS__OPTIMIZER__OPT_ADAGRAD,
               "PS_OPTIMIZER_ADAGRAD");
_Static_assert(PS_OPTIMIZER_ADAM == PS__OPTIMIZER__OPT_ADAM,
               "PS_OPTIMIZER_ADAM");
_Static_assert(PS_OPTIMIZER_FTRL == PS__OPTIMIZER__OPT_FTRL,
               "PS_OPTIMIZER_FTRL");
_Static_assert(PS_LR_SCHEDULE_CONSTANT == PS__LR_SCHEDULE__LR_CONSTANT,
               "PS_LR_SCHEDULE_CONSTANT");
_Static_assert(PS_LR_SCHEDULE_COSINE == PS__LR_SCHEDULE__LR_COSINE,
               "PS_LR_SCHEDULE_COSINE");

_Static_assert(PS_MODE_BSP == PS__CONSISTENCY_MODE__MODE_BSP, "PS_MODE_BSP");
_Static_assert(PS_MODE_ASP == PS__CONSISTENCY_MODE__MODE_ASP, "PS_MODE_ASP");
_Static_assert(PS_MODE_SSP == PS__CONSISTENCY_MODE__MODE_SSP, "PS_MODE_SSP");

uint64_t ps_view_epoch(const ps_view_t *v) {
  return v->epoch;
}

int ps_view_mode(const ps_view_t *v) {
  return v->mode;
}

uint32_t ps_view_staleness(const ps_view_t *v) {
  return v->staleness;
}

uint32_t ps_view_live_workers(const ps_view_t *v) {
  return v->live_workers;
}

size_t ps_view_num_ranges(const ps_view_t *v) {
  return v->nranges;
}

int ps_view_range(const ps_view_t *v, size_t i, uint64_t *begin, uint64_t *end,
                  uint32_t *server) {
  if (i >= v->nranges) return PS_ERR_INVAL;
  if (begin != NULL) *begin = v->ranges[i].begin;
  if (end != NULL) *end = v->ranges[i].end;
  if (server != NULL) *server = v->ranges[i].server_id;
  return PS_OK;
}
