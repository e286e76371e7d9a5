#include <check.h>
#include <stdlib.h>
#include <string.h>

#include "common/err.h"
#include "common/view.h"
#include "tests/check_run.h"

/* ---- ps_range_split ---- */

static void check_split(uint64_t total, uint32_t n) {
  uint64_t *b = malloc((n + 1) * sizeof(*b));
  ck_assert_ptr_nonnull(b);
  ck_assert_int_eq(ps_range_split(total, n, b), PS_OK);
  ck_assert_uint_eq(b[0], 0);
  ck_assert_uint_eq(b[n], total);
  uint64_t min = UINT64_MAX, max = 0;
  for (uint32_t i = 0; i < n; i++) {
    ck_assert_msg(b[i] <= b[i + 1], "total %llu n %u: piece %u runs backwards",
                  (unsigned long long)total, n, i);
    uint64_t len = b[i + 1] - b[i];
    if (len < min) min = len;
    if (len > max) max = len;
    if (i > 0)
      ck_assert_msg(b[i] % PS_RANGE_ALIGN == 0,
                    "total %llu n %u: boundary %llu not aligned",
                    (unsigned long long)total, n, (unsigned long long)b[i]);
    if (total >= (uint64_t)n * PS_RANGE_ALIGN)
      ck_assert_msg(len > 0, "total %llu n %u: piece %u empty",
                    (unsigned long long)total, n, i);
  }
  ck_assert_msg(max - min <= PS_RANGE_ALIGN,
                "total %llu n %u: pieces from %llu to %llu keys",
                (unsigned long long)total, n, (unsigned long long)min,
                (unsigned long long)max);
  free(b);
}

START_TEST(test_split_many_pairs) {
  const uint64_t totals[] = {0,
                             1,
                             15,
                             16,
                             17,
                             31,
                             100,
                             1000,
                             4095,
                             4096,
                             4097,
                             65543,
                             1000003,
                             101770,
                             1000000007ULL,
                             (1ULL << 40) + 9};
  const uint32_t ns[] = {1, 2, 3, 4, 5, 7, 16, 63, 64, 100, 1000};
  for (size_t i = 0; i < sizeof(totals) / sizeof(totals[0]); i++)
    for (size_t j = 0; j < sizeof(ns) / sizeof(ns[0]); j++)
      check_split(totals[i], ns[j]);
}
END_TEST

START_TEST(test_split_exact) {
  /* 1000 keys = 62 blocks + 8: two pieces of 21 blocks, one of 20 plus the
   * tail. */
  uint64_t b[4];
  ck_assert_int_eq(ps_range_split(1000, 3, b), PS_OK);
  ck_assert_uint_eq(b[1], 336);
  ck_assert_uint_eq(b[2], 672);
  ck_assert_uint_eq(b[3], 1000);
  /* Fewer keys than one block per piece: aligned, some pieces empty. */
  uint64_t c[5];
  ck_assert_int_eq(ps_range_split(20, 4, c), PS_OK);
  ck_assert_uint_eq(c[0], 0);
  ck_assert_uint_eq(c[1], 16);
  ck_assert_uint_eq(c[4], 20);
  ck_assert_int_eq(ps_range_split(20, 0, c), PS_ERR_INVAL);
}
END_TEST

/* ---- a hand-built ps.View ---- */

typedef struct {
  Ps__View view;
  Ps__ModelSpec model;
  Ps__TensorSpec tensors[3];
  Ps__TensorSpec *tensor_ptrs[3];
  Ps__NodeInfo nodes[5];
  Ps__NodeInfo *node_ptrs[5];
  Ps__KeyRange ranges[8];
  Ps__KeyRange *range_ptrs[8];
} fixture_t;

/* A scheduler (1), three servers (2, 3, 4) and a worker (5); a model of
 * 600 + 300 + 100 keys cut by ps_range_split among the servers. */
static void fixture_init(fixture_t *f) {
  memset(f, 0, sizeof(*f));
  ps__view__init(&f->view);
  ps__model_spec__init(&f->model);
  static const char *names[] = {"fc1.weight", "fc1.bias", "fc2.weight"};
  const uint64_t lengths[] = {600, 300, 100};
  uint64_t offset = 0;
  for (int i = 0; i < 3; i++) {
    ps__tensor_spec__init(&f->tensors[i]);
    f->tensors[i].name = (char *)names[i];
    f->tensors[i].offset = offset;
    f->tensors[i].length = lengths[i];
    f->tensors[i].init = i == 1 ? PS__INIT__INIT_ZERO : PS__INIT__INIT_UNIFORM;
    f->tensors[i].init_scale = 0.05f;
    f->tensor_ptrs[i] = &f->tensors[i];
    offset += lengths[i];
  }
  f->model.n_tensors = 3;
  f->model.tensors = f->tensor_ptrs;
  f->model.learning_rate = 0.1f;
  f->model.momentum = 0.9f;
  f->model.seed = 77;
  const Ps__Role roles[] = {PS__ROLE__ROLE_SCHEDULER, PS__ROLE__ROLE_SERVER,
                            PS__ROLE__ROLE_SERVER, PS__ROLE__ROLE_SERVER,
                            PS__ROLE__ROLE_WORKER};
  static const char *addrs[] = {"tcp://127.0.0.1:7000", "tcp://127.0.0.1:7001",
                                "tcp://127.0.0.1:7002", "tcp://127.0.0.1:7003",
                                ""};
  for (int i = 0; i < 5; i++) {
    ps__node_info__init(&f->nodes[i]);
    f->nodes[i].id = (uint32_t)i + 1;
    f->nodes[i].role = roles[i];
    f->nodes[i].address = (char *)addrs[i];
    f->nodes[i].state = PS__NODE_STATE__NODE_STATE_ALIVE;
    f->node_ptrs[i] = &f->nodes[i];
  }
  uint64_t b[4];
  ck_assert_int_eq(ps_range_split(1000, 3, b), PS_OK);
  for (int i = 0; i < 3; i++) {
    ps__key_range__init(&f->ranges[i]);
    f->ranges[i].begin = b[i];
    f->ranges[i].end = b[i + 1];
    f->ranges[i].server_id = (uint32_t)i + 2;
    f->range_ptrs[i] = &f->ranges[i];
  }
  f->view.epoch = 4;
  f->view.n_nodes = 5;
  f->view.nodes = f->node_ptrs;
  f->view.n_ranges = 3;
  f->view.ranges = f->range_ptrs;
  f->view.model = &f->model;
  f->view.mode = PS__CONSISTENCY_MODE__MODE_ASP;
  f->view.live_workers = 1;
}

/* The view must be refused, with a reason that contains want. */
static void expect_refused(const fixture_t *f, const char *want) {
  char err[256] = "";
  ps_view_t *v = ps_view_from_pb(&f->view, err, sizeof(err));
  ck_assert_ptr_null(v);
  ck_assert_msg(strstr(err, want) != NULL, "reason \"%s\" lacks \"%s\"", err,
                want);
}

START_TEST(test_from_pb_copies_everything) {
  fixture_t f;
  fixture_init(&f);
  char err[256] = "";
  ps_view_t *v = ps_view_from_pb(&f.view, err, sizeof(err));
  ck_assert_msg(v != NULL, "refused: %s", err);
  /* Scribble on the source: the view must not point into it. */
  memset(&f, 0xab, sizeof(f));
  ck_assert_uint_eq(v->epoch, 4);
  ck_assert_int_eq(v->mode, PS__CONSISTENCY_MODE__MODE_ASP);
  ck_assert_uint_eq(v->live_workers, 1);
  ck_assert_uint_eq(v->nnodes, 5);
  ck_assert_uint_eq(v->nranges, 3);
  ck_assert_uint_eq(v->ranges[1].begin, 336);
  ck_assert_uint_eq(v->ranges[1].server_id, 3);
  const ps_node_t *n = ps_view_node(v, 4);
  ck_assert_ptr_nonnull(n);
  ck_assert_str_eq(n->address, "tcp://127.0.0.1:7003");
  ck_assert_int_eq(n->role, PS__ROLE__ROLE_SERVER);
  ck_assert_ptr_null(ps_view_node(v, 9));
  ck_assert_uint_eq(v->model.total, 1000);
  ck_assert_uint_eq(v->model.seed, 77);
  const ps_tensor_spec_t *t = ps_model_tensor(&v->model, "fc1.bias");
  ck_assert_ptr_nonnull(t);
  ck_assert_uint_eq(t->offset, 600);
  ck_assert_uint_eq(t->length, 300);
  ck_assert_int_eq(t->init, PS__INIT__INIT_ZERO);
  ck_assert_ptr_null(ps_model_tensor(&v->model, "fc3.weight"));
  ps_view_destroy(&v);
  ck_assert_ptr_null(v);
  ps_view_destroy(&v);
}
END_TEST

START_TEST(test_find_range_boundaries) {
  fixture_t f;
  fixture_init(&f);
  ps_view_t *v = ps_view_from_pb(&f.view, NULL, 0);
  ck_assert_ptr_nonnull(v);
  const struct {
    uint64_t key;
    int range;
  } cases[] = {{0, 0},   {1, 0},   {335, 0},   {336, 1},        {671, 1},
               {672, 2}, {999, 2}, {1000, -1}, {UINT64_MAX, -1}};
  for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++)
    ck_assert_msg(ps_view_find_range(v, cases[i].key) == cases[i].range,
                  "key %llu: range %d, want %d",
                  (unsigned long long)cases[i].key,
                  ps_view_find_range(v, cases[i].key), cases[i].range);
  ps_view_destroy(&v);
}
END_TEST

/* A split with empty pieces must still be a valid view, and lookups must
 * skip the empty ranges. */
START_TEST(test_find_range_with_empty_ranges) {
  fixture_t f;
  fixture_init(&f);
  f.tensors[0].length = 10;
  f.tensors[1].offset = 10;
  f.tensors[1].length = 5;
  f.tensors[2].offset = 15;
  f.tensors[2].length = 5;
  uint64_t b[4];
  ck_assert_int_eq(ps_range_split(20, 3, b), PS_OK);
  for (int i = 0; i < 3; i++) {
    f.ranges[i].begin = b[i];
    f.ranges[i].end = b[i + 1];
  }
  char err[256] = "";
  ps_view_t *v = ps_view_from_pb(&f.view, err, sizeof(err));
  ck_assert_msg(v != NULL, "refused: %s", err);
  for (uint64_t key = 0; key < 20; key++) {
    int r = ps_view_find_range(v, key);
    ck_assert_int_ge(r, 0);
    ck_assert(v->ranges[r].begin <= key && key < v->ranges[r].end);
  }
  ck_assert_int_eq(ps_view_find_range(v, 20), -1);
  ps_view_destroy(&v);
}
END_TEST

START_TEST(test_from_pb_refuses_gap) {
  fixture_t f;
  fixture_init(&f);
  f.ranges[1].begin += PS_RANGE_ALIGN;
  expect_refused(&f, "gap");
}
END_TEST

START_TEST(test_from_pb_refuses_overlap) {
  fixture_t f;
  fixture_init(&f);
  f.ranges[2].begin -= 1;
  expect_refused(&f, "overlaps");
}
END_TEST

START_TEST(test_from_pb_refuses_unsorted) {
  fixture_t f;
  fixture_init(&f);
  f.range_ptrs[0] = &f.ranges[1];
  f.range_ptrs[1] = &f.ranges[0];
  expect_refused(&f, "range 0");
}
END_TEST

START_TEST(test_from_pb_refuses_wrong_total) {
  fixture_t f;
  fixture_init(&f);
  f.ranges[2].end = 999;
  expect_refused(&f, "model has 1000 keys");
  f.ranges[2].end = 1001;
  expect_refused(&f, "model has 1000 keys");
  f.view.n_ranges = 0;
  expect_refused(&f, "no key ranges");
}
END_TEST

START_TEST(test_from_pb_refuses_backwards_range) {
  fixture_t f;
  fixture_init(&f);
  f.ranges[1].end = f.ranges[1].begin - 1;
  expect_refused(&f, "ends before it begins");
}
END_TEST

START_TEST(test_from_pb_refuses_owner_not_server) {
  fixture_t f;
  fixture_init(&f);
  f.ranges[1].server_id = 5; /* the worker */
  expect_refused(&f, "owner 5 is not a server");
  f.ranges[1].server_id = 1; /* the scheduler */
  expect_refused(&f, "owner 1 is not a server");
}
END_TEST

START_TEST(test_from_pb_refuses_unknown_owner) {
  fixture_t f;
  fixture_init(&f);
  f.ranges[0].server_id = 42;
  expect_refused(&f, "owner 42 is not a node");
}
END_TEST

START_TEST(test_from_pb_refuses_duplicate_node) {
  fixture_t f;
  fixture_init(&f);
  f.nodes[4].id = 2;
  expect_refused(&f, "node id 2 appears twice");
}
END_TEST

START_TEST(test_from_pb_refuses_bad_model) {
  fixture_t f;
  fixture_init(&f);
  f.view.model = NULL;
  expect_refused(&f, "no model");
  fixture_init(&f);
  f.tensors[1].offset = 601;
  expect_refused(&f, "\"fc1.bias\" starts at key 601");
  fixture_init(&f);
  f.tensors[2].name = "fc1.weight";
  expect_refused(&f, "is used by tensor 0");
  fixture_init(&f);
  f.tensors[0].name = "";
  expect_refused(&f, "name");
  fixture_init(&f);
  f.tensors[2].length = 0;
  expect_refused(&f, "length 0");
  fixture_init(&f);
  f.tensors[0].init = (Ps__Init)9;
  expect_refused(&f, "unknown init 9");
  fixture_init(&f);
  f.view.mode = (Ps__ConsistencyMode)7;
  expect_refused(&f, "consistency mode 7");
  /* Codecs (issue #15). */
  fixture_init(&f);
  f.tensors[0].push_codec = (Ps__Codec)4;
  expect_refused(&f, "unknown push codec 4");
  fixture_init(&f);
  f.tensors[1].pull_codec = PS__CODEC__CODEC_TOPK;
  expect_refused(&f, "pull codec 3 is not none, fp16 or int8");
  fixture_init(&f);
  f.tensors[1].push_codec = PS__CODEC__CODEC_TOPK;
  expect_refused(&f, "top-k fraction 0 must be in (0, 1]");
  f.tensors[1].topk_fraction = 1.5f;
  expect_refused(&f, "top-k fraction 1.5");
  fixture_init(&f);
  f.tensors[1].topk_fraction = 0.5f; /* without topk */
  expect_refused(&f, "top-k fraction 0.5");
}
END_TEST

/* ---- models ---- */

static void load_model(ps_model_t *m) {
  fixture_t f;
  fixture_init(&f);
  char err[256] = "";
  ck_assert_msg(ps_model_from_pb(&f.model, m, err, sizeof(err)) == PS_OK,
                "refused: %s", err);
}

START_TEST(test_model_round_trip) {
  ps_model_t m, back;
  load_model(&m);
  Ps__ModelSpec pb;
  Ps__TensorSpec tensors[3];
  Ps__TensorSpec *ptrs[3];
  Ps__OptimizerSpec opts[3];
  ps_model_to_pb(&m, &pb, tensors, ptrs, opts);
  size_t len = ps__model_spec__get_packed_size(&pb);
  uint8_t *buf = malloc(len + 64); /* room for the codecs below */
  ck_assert_ptr_nonnull(buf);
  ps__model_spec__pack(&pb, buf);
  Ps__ModelSpec *un = ps__model_spec__unpack(NULL, len, buf);
  ck_assert_ptr_nonnull(un);
  ck_assert_int_eq(ps_model_from_pb(un, &back, NULL, 0), PS_OK);
  ck_assert(ps_model_equal(&m, &back));
  ck_assert_str_eq(back.tensors[2].name, "fc2.weight");
  ck_assert_float_eq(back.momentum, 0.9f);
  ps__model_spec__free_unpacked(un, NULL);
  /* The codecs travel too. */
  m.tensors[1].push_codec = PS_CODEC_TOPK;
  m.tensors[1].topk_fraction = 0.25f;
  m.tensors[2].pull_codec = PS_CODEC_INT8;
  ps_model_to_pb(&m, &pb, tensors, ptrs, opts);
  ck_assert_uint_le(ps__model_spec__get_packed_size(&pb), len + 64);
  len = ps__model_spec__pack(&pb, buf);
  un = ps__model_spec__unpack(NULL, len, buf);
  ck_assert_ptr_nonnull(un);
  ps_model_clear(&back);
  ck_assert_int_eq(ps_model_from_pb(un, &back, NULL, 0), PS_OK);
  ck_assert(ps_model_equal(&m, &back));
  ck_assert_int_eq(back.tensors[1].push_codec, PS_CODEC_TOPK);
  ck_assert_float_eq(back.tensors[1].topk_fraction, 0.25f);
  ck_assert_int_eq(back.tensors[2].pull_codec, PS_CODEC_INT8);
  ps__model_spec__free_unpacked(un, NULL);
  free(buf);
  ps_model_clear(&back);
  ck_assert_ptr_null(back.tensors);
  ck_assert_uint_eq(back.ntensors, 0);
  ps_model_clear(&m);
}
END_TEST

START_TEST(test_model_equal_unequal) {
  ps_model_t a, b;
  load_model(&a);
  load_model(&b);
  ck_assert(ps_model_equal(&a, &b));
  for (int field = 0; field < 12; field++) {
    ps_model_clear(&b);
    load_model(&b);
    switch (field) {
      case 0:
        b.learning_rate = 0.2f;
        break;
      case 1:
        b.momentum = 0.0f;
        break;
      case 2:
        b.seed = 78;
        break;
      case 3:
        b.tensors[1].name[0] = 'g';
        break;
      case 4:
        b.tensors[1].length = 301;
        break;
      case 5:
        b.tensors[1].offset = 599;
        break;
      case 6:
        b.tensors[0].init = PS__INIT__INIT_ZERO;
        break;
      case 7:
        b.tensors[2].init_scale = 0.5f;
        break;
      case 8:
        b.ntensors = 2;
        b.total = 900;
        break;
      case 9:
        b.tensors[0].push_codec = PS_CODEC_FP16;
        break;
      case 10:
        b.tensors[0].pull_codec = PS_CODEC_FP16;
        break;
      case 11:
        b.tensors[0].push_codec = PS_CODEC_TOPK;
        b.tensors[0].topk_fraction = 0.01f;
        break;
    }
    ck_assert_msg(!ps_model_equal(&a, &b), "change %d not seen", field);
    ck_assert_msg(!ps_model_equal(&b, &a), "change %d not seen", field);
  }
  ps_model_clear(&a);
  ps_model_clear(&b);
}
END_TEST

/* ---- deltas (View.base_epoch, issue #16) ---- */

/* A delta of epoch 5 against the fixture's epoch 4: server 3 died (range 1
 * moved to server 4) and worker 6 joined; nodes 1, 2, 4 and 5 unlisted. */
START_TEST(test_delta_applies_to_its_base) {
  fixture_t f;
  fixture_init(&f);
  f.nodes[3].curve_key = "rq:rM>}U?@Lns47E1%kR.o@n%FcmmsL/@{H8]yf7";
  char err[256] = "";
  ps_view_t *base = ps_view_from_pb(&f.view, err, sizeof(err));
  ck_assert_msg(base != NULL, "%s", err);

  fixture_t d;
  fixture_init(&d);
  d.nodes[3].curve_key = f.nodes[3].curve_key;
  d.view.epoch = 5;
  d.view.base_epoch = 4;
  d.view.live_workers = 2;
  d.ranges[1].server_id = 4;
  d.nodes[2].state = PS__NODE_STATE__NODE_STATE_DEAD;
  Ps__NodeInfo joined;
  ps__node_info__init(&joined);
  joined.id = 6;
  joined.role = PS__ROLE__ROLE_WORKER;
  joined.state = PS__NODE_STATE__NODE_STATE_ALIVE;
  joined.rank = 1;
  joined.join_clock = 40;
  joined.joining = 1;
  Ps__NodeInfo *listed[] = {&joined, &d.nodes[2]};
  d.view.nodes = listed;
  d.view.n_nodes = 2;

  /* Without its base, or against another epoch, it is refused. */
  ck_assert_ptr_null(ps_view_from_pb(&d.view, err, sizeof(err)));
  ck_assert_msg(strstr(err, "delta against epoch 4") != NULL, "%s", err);
  base->epoch = 3;
  ck_assert_ptr_null(ps_view_from_pb_base(&d.view, base, err, sizeof(err)));
  ck_assert_msg(strstr(err, "view held is of epoch 3") != NULL, "%s", err);
  base->epoch = 4;

  ps_view_t *v = ps_view_from_pb_base(&d.view, base, err, sizeof(err));
  ck_assert_msg(v != NULL, "%s", err);
  ck_assert_uint_eq(v->epoch, 5);
  ck_assert_uint_eq(v->live_workers, 2);
  ck_assert_uint_eq(v->nnodes, 6);
  /* The base's order, the new node last. */
  for (size_t i = 0; i < 6; i++) ck_assert_uint_eq(v->nodes[i].id, i + 1);
  ck_assert_int_eq(v->nodes[2].state, PS__NODE_STATE__NODE_STATE_DEAD);
  ck_assert_str_eq(v->nodes[2].address, "tcp://127.0.0.1:7002");
  /* Unlisted nodes are the base's, whole. */
  ck_assert_int_eq(v->nodes[3].state, PS__NODE_STATE__NODE_STATE_ALIVE);
  ck_assert_str_eq(v->nodes[3].curve_key, f.nodes[3].curve_key);
  ck_assert_str_eq(v->nodes[1].address, "tcp://127.0.0.1:7001");
  const ps_node_t *w = ps_view_node(v, 6);
  ck_assert_ptr_nonnull(w);
  ck_assert_uint_eq(w->rank, 1);
  ck_assert_uint_eq(w->join_clock, 40);
  ck_assert_int_eq(w->joining, 1);
  ck_assert_uint_eq(v->ranges[1].server_id, 4);
  /* The same as the whole view of epoch 5. */
  Ps__NodeInfo *all[6];
  for (int i = 0; i < 5; i++) all[i] = &d.nodes[i];
  all[5] = &joined;
  d.view.nodes = all;
  d.view.n_nodes = 6;
  d.view.base_epoch = 0;
  ps_view_t *whole = ps_view_from_pb(&d.view, err, sizeof(err));
  ck_assert_msg(whole != NULL, "%s", err);
  ck_assert_uint_eq(whole->nnodes, v->nnodes);
  for (size_t i = 0; i < v->nnodes; i++)
    ck_assert_msg(ps_node_equal(&whole->nodes[i], &v->nodes[i]),
                  "node %zu differs", i);
  /* The result owns its nodes: the base may go first. */
  ps_view_destroy(&base);
  ck_assert_str_eq(v->nodes[0].address, "tcp://127.0.0.1:7000");
  ps_view_destroy(&whole);
  ps_view_destroy(&v);
}
END_TEST

/* A delta is validated like a whole view, over the merged nodes: a range
 * whose owner the delta made a worker, a node listed twice, or a base
 * epoch not before its own are refused. */
START_TEST(test_delta_refusals) {
  fixture_t f;
  fixture_init(&f);
  char err[256] = "";
  ps_view_t *base = ps_view_from_pb(&f.view, err, sizeof(err));
  ck_assert_ptr_nonnull(base);
  fixture_t d;
  fixture_init(&d);
  d.view.epoch = 5;
  d.view.base_epoch = 4;
  d.nodes[1].role = PS__ROLE__ROLE_WORKER; /* owns range 0 */
  Ps__NodeInfo *listed[] = {&d.nodes[1], &d.nodes[1]};
  d.view.nodes = listed;
  d.view.n_nodes = 1;
  ck_assert_ptr_null(ps_view_from_pb_base(&d.view, base, err, sizeof(err)));
  ck_assert_msg(strstr(err, "not a server") != NULL, "%s", err);
  d.nodes[1].role = PS__ROLE__ROLE_SERVER;
  d.view.n_nodes = 2;
  ck_assert_ptr_null(ps_view_from_pb_base(&d.view, base, err, sizeof(err)));
  ck_assert_msg(strstr(err, "appears twice") != NULL, "%s", err);
  d.view.n_nodes = 1;
  d.view.base_epoch = 5;
  ck_assert_ptr_null(ps_view_from_pb_base(&d.view, base, err, sizeof(err)));
  ck_assert_msg(strstr(err, "later epoch") != NULL, "%s", err);
  d.view.base_epoch = 4;
  ps_view_t *v = ps_view_from_pb_base(&d.view, base, err, sizeof(err));
  ck_assert_msg(v != NULL, "%s", err);
  ps_view_destroy(&v);
  ps_view_destroy(&base);
}
END_TEST

/* A delta's ranges (ranges_delta): range 1 moved to server 4 with server 2
 * as a syncing backup; the others are the base's. Indices beyond the base's
 * ranges, listed twice, or fewer than the ranges are refused. */
START_TEST(test_delta_ranges) {
  fixture_t f;
  fixture_init(&f);
  uint32_t b0[] = {3};
  f.ranges[0].backups = b0;
  f.ranges[0].n_backups = 1;
  char err[256] = "";
  ps_view_t *base = ps_view_from_pb(&f.view, err, sizeof(err));
  ck_assert_msg(base != NULL, "%s", err);
  fixture_t d;
  fixture_init(&d);
  d.view.epoch = 5;
  d.view.base_epoch = 4;
  d.view.n_nodes = 0;
  uint32_t b1[] = {2}, s1[] = {2};
  d.ranges[1].server_id = 4;
  d.ranges[1].backups = b1;
  d.ranges[1].n_backups = 1;
  d.ranges[1].syncing = s1;
  d.ranges[1].n_syncing = 1;
  Ps__KeyRange *changed[] = {&d.ranges[1], &d.ranges[1]};
  uint32_t index[] = {1, 1};
  d.view.ranges = changed;
  d.view.n_ranges = 1;
  d.view.range_index = index;
  d.view.n_range_index = 1;
  d.view.ranges_delta = 1;
  ps_view_t *v = ps_view_from_pb_base(&d.view, base, err, sizeof(err));
  ck_assert_msg(v != NULL, "%s", err);
  ck_assert_uint_eq(v->nranges, 3);
  ck_assert_uint_eq(v->nnodes, 5);
  ck_assert(ps_range_equal(&v->ranges[0], &base->ranges[0]));
  ck_assert_uint_eq(v->ranges[0].nbackups, 1);
  ck_assert_uint_eq(v->ranges[0].backups[0], 3);
  ck_assert(ps_range_equal(&v->ranges[2], &base->ranges[2]));
  ck_assert_uint_eq(v->ranges[1].server_id, 4);
  ck_assert_uint_eq(v->ranges[1].begin, 336);
  ck_assert(ps_range_backup_syncing(&v->ranges[1], 2));
  ck_assert(!ps_range_equal(&v->ranges[1], &base->ranges[1]));
  ck_assert_uint_eq(ps_view_find_range(v, 400), 1);
  ps_view_destroy(&v);

  index[0] = 3;
  ck_assert_ptr_null(ps_view_from_pb_base(&d.view, base, err, sizeof(err)));
  ck_assert_msg(strstr(err, "beyond the 3 ranges or listed twice"), "%s", err);
  index[0] = 1;
  d.view.n_ranges = 2;
  d.view.n_range_index = 2;
  ck_assert_ptr_null(ps_view_from_pb_base(&d.view, base, err, sizeof(err)));
  ck_assert_msg(strstr(err, "listed twice"), "%s", err);
  d.view.n_range_index = 1;
  ck_assert_ptr_null(ps_view_from_pb_base(&d.view, base, err, sizeof(err)));
  ck_assert_msg(strstr(err, "2 ranges with 1 indices"), "%s", err);
  /* A merged cut is validated whole: the changed range may not overlap. */
  d.view.n_ranges = 1;
  d.ranges[1].begin = 300;
  ck_assert_ptr_null(ps_view_from_pb_base(&d.view, base, err, sizeof(err)));
  ck_assert_msg(strstr(err, "overlaps"), "%s", err);
  ps_view_destroy(&base);
}
END_TEST

START_TEST(test_view_copy_is_deep) {
  fixture_t f;
  fixture_init(&f);
  f.view.restore_dir = "/ckpt/ckpt-40";
  ps_view_t *v = ps_view_from_pb(&f.view, NULL, 0);
  ck_assert_ptr_nonnull(v);
  ps_view_t *c = ps_view_copy(v);
  ck_assert_ptr_nonnull(c);
  ck_assert_ptr_ne(c->nodes, v->nodes);
  ck_assert_ptr_ne(c->ranges, v->ranges);
  ck_assert_ptr_ne(c->model.tensors, v->model.tensors);
  ck_assert_uint_eq(c->nnodes, 5);
  ck_assert_uint_eq(c->nsparse_parts, v->nsparse_parts);
  ps_view_destroy(&v);
  ck_assert_str_eq(c->restore_dir, "/ckpt/ckpt-40");
  ck_assert_str_eq(c->nodes[3].address, "tcp://127.0.0.1:7003");
  ck_assert_uint_eq(c->ranges[2].end, 1000);
  ck_assert_str_eq(c->model.tensors[2].name, "fc2.weight");
  ck_assert_int_eq(ps_view_find_range(c, 700), 2);
  ps_view_destroy(&c);
}
END_TEST

/* ---- the public API's view (ps/view.h) and constants (ps/model.h) ---- */

START_TEST(test_public_accessors) {
  fixture_t f;
  fixture_init(&f);
  ps_view_t *v = ps_view_from_pb(&f.view, NULL, 0);
  ck_assert_ptr_nonnull(v);
  ck_assert_uint_eq(ps_view_epoch(v), 4);
  ck_assert_uint_eq(ps_view_live_workers(v), 1);
  ck_assert_uint_eq(ps_view_num_ranges(v), 3);
  uint64_t begin = 0, end = 0;
  uint32_t server = 0;
  ck_assert_int_eq(ps_view_range(v, 1, &begin, &end, &server), PS_OK);
  ck_assert_uint_eq(begin, 336);
  ck_assert_uint_eq(end, 672);
  ck_assert_uint_eq(server, 3);
  ck_assert_int_eq(ps_view_range(v, 2, NULL, &end, NULL), PS_OK);
  ck_assert_uint_eq(end, 1000);
  begin = 7;
  ck_assert_int_eq(ps_view_range(v, 3, &begin, NULL, NULL), PS_ERR_INVAL);
  ck_assert_uint_eq(begin, 7);
  ps_view_destroy(&v);
}
END_TEST

/* common/view.c checks that each public constant equals its generated
 * value; this checks that none is missing: a value added to ps.proto's
 * Init or Optimizer needs its PS_INIT_* / PS_OPTIMIZER_* too. */
START_TEST(test_public_constants_cover_the_proto) {
  for (unsigned i = 0; i < ps__init__descriptor.n_values; i++) {
    const ProtobufCEnumValue *e = &ps__init__descriptor.values[i];
    ck_assert_msg(e->value == PS_INIT_ZERO || e->value == PS_INIT_UNIFORM,
                  "Init %s (%d) has no PS_INIT_ constant", e->name, e->value);
  }
  for (unsigned i = 0; i < ps__optimizer__descriptor.n_values; i++) {
    const ProtobufCEnumValue *e = &ps__optimizer__descriptor.values[i];
    ck_assert_msg(
        e->value == PS_OPTIMIZER_SGD || e->value == PS_OPTIMIZER_ADD ||
            e->value == PS_OPTIMIZER_ADAGRAD || e->value == PS_OPTIMIZER_ADAM ||
            e->value == PS_OPTIMIZER_FTRL,
        "Optimizer %s (%d) has no PS_OPTIMIZER_ constant", e->name, e->value);
  }
  for (unsigned i = 0; i < ps__lr_schedule__descriptor.n_values; i++) {
    const ProtobufCEnumValue *e = &ps__lr_schedule__descriptor.values[i];
    ck_assert_msg(e->value == PS_LR_SCHEDULE_CONSTANT ||
                      e->value == PS_LR_SCHEDULE_COSINE,
                  "LrSchedule %s (%d) has no PS_LR_SCHEDULE_ constant", e->name,
                  e->value);
  }
}
END_TEST

int main(void) {
  Suite *s = suite_create("view");
  TCase *split = tcase_create("split");
  tcase_add_test(split, test_split_many_pairs);
  tcase_add_test(split, test_split_exact);
  suite_add_tcase(s, split);
  TCase *view = tcase_create("view");
  tcase_add_test(view, test_from_pb_copies_everything);
  tcase_add_test(view, test_find_range_boundaries);
  tcase_add_test(view, test_find_range_with_empty_ranges);
  tcase_add_test(view, test_from_pb_refuses_gap);
  tcase_add_test(view, test_from_pb_refuses_overlap);
  tcase_add_test(view, test_from_pb_refuses_unsorted);
  tcase_add_test(view, test_from_pb_refuses_wrong_total);
  tcase_add_test(view, test_from_pb_refuses_backwards_range);
  tcase_add_test(view, test_from_pb_refuses_owner_not_server);
  tcase_add_test(view, test_from_pb_refuses_unknown_owner);
  tcase_add_test(view, test_from_pb_refuses_duplicate_node);
  tcase_add_test(view, test_from_pb_refuses_bad_model);
  suite_add_tcase(s, view);
  TCase *delta = tcase_create("delta");
  tcase_add_test(delta, test_delta_applies_to_its_base);
  tcase_add_test(delta, test_delta_refusals);
  tcase_add_test(delta, test_delta_ranges);
  tcase_add_test(delta, test_view_copy_is_deep);
  suite_add_tcase(s, delta);

  TCase *model = tcase_create("model");
  tcase_add_test(model, test_model_round_trip);
  tcase_add_test(model, test_model_equal_unequal);
  suite_add_tcase(s, model);
  TCase *pub = tcase_create("public");
  tcase_add_test(pub, test_public_accessors);
  tcase_add_test(pub, test_public_constants_cover_the_proto);
  suite_add_tcase(s, pub);
  return ps_check_run(s);
}
