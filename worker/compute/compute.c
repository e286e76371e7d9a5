#include "worker/compute/compute.h"

#include <errno.h>
#include <glob.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "common/err.h"
#include "common/invariant.h"

struct ps_compute_s {
  const ps_compute_ops_t *ops;
  void *state;
  int loss_started; /* a softmax_xent_start not finished yet */
  double loss;      /* its loss, for backends without the two halves */
};

struct ps_dbuf_s {
  ps_compute_t *owner;
  ps_dtype_t dtype;
  size_t n;
  void *mem;
};

static size_t dtype_size(ps_dtype_t t) {
  return t == PS_DTYPE_U8 ? 1 : 4;
}

const ps_compute_ops_t *ps_compute_find(const char *name) {
  static const ps_compute_ops_t *const all[] = {
      &ps_compute_cpu_ops,
#ifdef PS_HAVE_CUDA
      &ps_compute_cuda_ops,
#endif
  };
  for (size_t i = 0; i < sizeof(all) / sizeof(all[0]); i++)
    if (strcmp(all[i]->name, name) == 0) return all[i];
  return NULL;
}

#ifdef PS_HAVE_CUDA
/* In worker/compute/cuda/compute_cuda.c. */
int ps__compute_cuda_devices(char *why, size_t whylen);
void ps__compute_cuda_versions(int *driver, int *runtime);
int ps__compute_cuda_blas(char *where, size_t wherelen);
#endif

int ps_compute_cuda_devices(char *why, size_t whylen) {
#ifdef PS_HAVE_CUDA
  return ps__compute_cuda_devices(why, whylen);
#else
  snprintf(why, whylen,
           "this build has no CUDA backend (configured with "
           "-DPS_WITH_CUDA=OFF or without nvcc)");
  return -1;
#endif
}

/* A GPU's device node, or a GPU that nvidia-smi lists: the machine has one
 * whatever the CUDA runtime says. nvidia-smi is asked only when no node is
 * seen (a container given the GPU has the nodes). */
static int gpu_seen(char *how, size_t howlen) {
  glob_t g;
  int found = 0;
  if (glob("/dev/nvidia[0-9]*", 0, NULL, &g) == 0 && g.gl_pathc > 0) {
    snprintf(how, howlen, "%s", g.gl_pathv[0]);
    found = 1;
  }
  globfree(&g);
  if (found) return 1;
  /* A driver in a bad state can make nvidia-smi hang: bounded. */
  FILE *f = popen("{ timeout 10 nvidia-smi -L; } 2>/dev/null", "r");
  if (f == NULL) return 0;
  char line[256];
  while (fgets(line, sizeof(line), f) != NULL) {
    if (!found && strncmp(line, "GPU ", 4) == 0) {
      line[strcspn(line, "\n")] = '\0';
      snprintf(how, howlen, "nvidia-smi: %.100s", line);
      found = 1;
    }
  }
  pclose(f);
  return found;
}

void ps_compute_cuda_probe(ps_cuda_probe_t *p) {
  memset(p, 0, sizeof(*p));
  p->gpu_present = gpu_seen(p->present_how, sizeof(p->present_how));
  p->devices = ps_compute_cuda_devices(p->why, sizeof(p->why));
#ifdef PS_HAVE_CUDA
  ps__compute_cuda_versions(&p->driver_version, &p->runtime_version);
  /* Where a GPU is, which cuBLAS (or why none) is worth a line too. */
  if (p->gpu_present || p->devices > 0)
    ps__compute_cuda_blas(p->cublas, sizeof(p->cublas));
#else
  snprintf(p->cublas, sizeof(p->cublas), "none (built without CUDA)");
#endif
}

/* 13000 -> "13.0"; 0 -> "none". */
static void cuda_version(char *out, size_t outlen, int v) {
  if (v <= 0)
    snprintf(out, outlen, "none");
  else
    snprintf(out, outlen, "%d.%d", v / 1000, (v % 1000) / 10);
}

ps_cuda_state_t ps_compute_cuda_verdict(const ps_cuda_probe_t *p, char *msg,
                                        size_t msglen) {
  char drv[16], rt[16];
  cuda_version(drv, sizeof(drv), p->driver_version);
  cuda_version(rt, sizeof(rt), p->runtime_version);
  if (p->devices > 0) {
    snprintf(msg, msglen, "%d CUDA device%s (driver %s, runtime %s%s%.160s)",
             p->devices, p->devices == 1 ? "" : "s", drv, rt,
             p->cublas[0] ? ", cuBLAS " : "", p->cublas);
    return PS_CUDA_USABLE;
  }
  if (!p->gpu_present) {
    snprintf(msg, msglen, "no GPU on this machine: %s", p->why);
    return PS_CUDA_ABSENT;
  }
  const char *hint = "";
  if (p->runtime_version == 0)
    hint = "; this build has no CUDA backend";
  else if (p->driver_version == 0)
    hint = "; the driver (libcuda.so.1) cannot be loaded";
  else if (p->driver_version < p->runtime_version)
    hint = "; the driver is older than the runtime";
  snprintf(msg, msglen,
           "a GPU is present (%.100s) but CUDA cannot use it: %s; driver "
           "%s, runtime %s%s",
           p->present_how, p->why, drv, rt, hint);
  return PS_CUDA_BROKEN;
}

int ps_compute_pick_gpu(int ndevices, long local_rank, const char *rank_from,
                        const char *visible, char *why, size_t whylen) {
  char vis[160] = "";
  if (visible != NULL)
    snprintf(vis, sizeof(vis), ", CUDA_VISIBLE_DEVICES=%.100s", visible);
  if (ndevices <= 0) ndevices = 1; /* a caller's bug; GPU 0 is harmless */
  if (local_rank < 0) {
    snprintf(why, whylen, "GPU 0 of %d (no local rank known%s)", ndevices, vis);
    return 0;
  }
  int d = (int)(local_rank % ndevices);
  snprintf(why, whylen, "GPU %d of %d by local rank %ld (%s%s)%s", d, ndevices,
           local_rank, rank_from ? rank_from : "given", vis,
           local_rank >= ndevices && ndevices > 1
               ? ", more local ranks than GPUs: some share one"
               : "");
  return d;
}

long ps_compute_local_rank(long hint, const char **from) {
  static const char *const vars[] = {
      "PS_LOCAL_RANK", "LOCAL_RANK", "SLURM_LOCALID",
      "OMPI_COMM_WORLD_LOCAL_RANK", "MPI_LOCALRANKID"};
  for (size_t i = 0; i < sizeof(vars) / sizeof(vars[0]); i++) {
    const char *v = getenv(vars[i]);
    if (v == NULL || *v == '\0') continue;
    char *end;
    errno = 0;
    long r = strtol(v, &end, 10);
    if (errno != 0 || *end != '\0' || r < 0 || r >= (1L << 20)) continue;
    *from = vars[i];
    return r;
  }
  if (hint >= 0) {
    *from = "--rank";
    return hint;
  }
  *from = "none";
  return -1;
}

/* "cuda" is GPU 0, "cuda:N" GPU N; anything else is not a CUDA spec. */
static int parse_cuda(const char *spec, int *device) {
  if (strcmp(spec, "cuda") == 0) {
    *device = 0;
    return 1;
  }
  if (strncmp(spec, "cuda:", 5) != 0) return 0;
  const char *p = spec + 5;
  if (*p < '0' || *p > '9') return 0;
  long v = 0;
  for (; *p >= '0' && *p <= '9'; p++) {
    v = v * 10 + (*p - '0');
    if (v > 1023) return 0;
  }
  if (*p != '\0') return 0;
  *device = (int)v;
  return 1;
}

ps_compute_t *ps_compute_open(const char *device, const ps_compute_opts_t *o,
                              char *note, size_t notelen, int *rc, char *err,
                              size_t errlen) {
  int unusable = 0;
  return ps_compute_open_probed(device, o, NULL, note, notelen, &unusable, rc,
                                err, errlen);
}

ps_compute_t *ps_compute_open_probed(const char *device,
                                     const ps_compute_opts_t *o,
                                     const ps_cuda_probe_t *probe, char *note,
                                     size_t notelen, int *gpu_unusable, int *rc,
                                     char *err, size_t errlen) {
  ps_compute_opts_t opts = {.rank_hint = -1};
  if (o) opts = *o;
  char scratch[8];
  if (note == NULL) {
    note = scratch;
    notelen = sizeof(scratch);
  }
  note[0] = '\0';
  *rc = PS_OK;
  *gpu_unusable = 0;
  int index = 0;
  if (device == NULL || strcmp(device, "cpu") == 0) {
    ps_compute_t *c = ps_compute_new(&ps_compute_cpu_ops, &opts, err, errlen);
    if (c == NULL) *rc = PS_ERR_CONFIG;
    return c;
  }
  int is_auto = strcmp(device, "auto") == 0;
  if (!is_auto && !parse_cuda(device, &index)) {
    snprintf(err, errlen,
             "device %s is none of auto, cpu, cuda, cuda:N (N in [0, 1023])",
             device);
    *rc = PS_ERR_CONFIG;
    return NULL;
  }
  ps_cuda_probe_t mine;
  if (probe == NULL) {
    ps_compute_cuda_probe(&mine);
    probe = &mine;
  }
  char verdict[512];
  ps_cuda_state_t st = ps_compute_cuda_verdict(probe, verdict, sizeof(verdict));
  const ps_compute_ops_t *cuda = ps_compute_find("cuda");
  int n = probe->devices;
  if (is_auto) {
    if (st == PS_CUDA_USABLE && cuda != NULL) {
      const char *from = "none";
      long lr = ps_compute_local_rank(opts.rank_hint, &from);
      char pick[256];
      opts.device = ps_compute_pick_gpu(
          n, lr, from, getenv("CUDA_VISIBLE_DEVICES"), pick, sizeof(pick));
      char cerr[256];
      ps_compute_t *c = ps_compute_new(cuda, &opts, cerr, sizeof(cerr));
      if (c != NULL) {
        snprintf(note, notelen, "%s; %s", verdict, pick);
        return c;
      }
      /* Listed but not usable (no code for its architecture, no memory). */
      snprintf(verdict, sizeof(verdict),
               "a GPU is present (%d listed) but CUDA cannot use GPU %d: %s", n,
               opts.device, cerr);
      st = PS_CUDA_BROKEN;
    } else if (st == PS_CUDA_USABLE) {
      snprintf(verdict, sizeof(verdict),
               "%d CUDA device(s) but this build has no CUDA backend", n);
      st = PS_CUDA_BROKEN;
    }
    if (st == PS_CUDA_BROKEN) *gpu_unusable = 1;
    snprintf(note, notelen, "%s", verdict);
    opts.device = 0;
    ps_compute_t *c = ps_compute_new(&ps_compute_cpu_ops, &opts, err, errlen);
    if (c == NULL) *rc = PS_ERR_CONFIG;
    return c;
  }
  if (n < 0 || cuda == NULL) {
    snprintf(err, errlen, "device %s: no usable GPU: %s", device,
             st == PS_CUDA_BROKEN ? verdict : probe->why);
    *rc = PS_ERR_UNSUPPORTED;
    return NULL;
  }
  if (index >= n) {
    snprintf(err, errlen, "device %s: there %s only %d CUDA device%s", device,
             n == 1 ? "is" : "are", n, n == 1 ? "" : "s");
    *rc = PS_ERR_UNSUPPORTED;
    return NULL;
  }
  opts.device = index;
  ps_compute_t *c = ps_compute_new(cuda, &opts, err, errlen);
  if (c == NULL) *rc = PS_ERR_UNSUPPORTED;
  return c;
}

ps_compute_t *ps_compute_new(const ps_compute_ops_t *ops,
                             const ps_compute_opts_t *o, char *err,
                             size_t errlen) {
  ps_compute_t *c = calloc(1, sizeof(*c));
  if (c == NULL) {
    snprintf(err, errlen, "compute: out of memory");
    return NULL;
  }
  c->ops = ops;
  ps_compute_opts_t defaults = {0};
  if (ops->init(c, o ? o : &defaults, err, errlen) != PS_OK) {
    free(c);
    return NULL;
  }
  return c;
}

void ps_compute_destroy(ps_compute_t **c_p) {
  if (c_p == NULL || *c_p == NULL) return;
  ps_compute_t *c = *c_p;
  if (c->ops->fini) c->ops->fini(c);
  free(c);
  *c_p = NULL;
}

const char *ps_compute_name(const ps_compute_t *c) {
  return c->ops->name;
}
const char *ps_compute_describe(ps_compute_t *c) {
  return c->ops->describe ? c->ops->describe(c) : c->ops->name;
}
int ps_compute_is_async(const ps_compute_t *c) {
  return c->ops->async;
}
const char *ps_compute_error(ps_compute_t *c) {
  return c->ops->error ? c->ops->error(c) : NULL;
}
void *ps_compute_state(ps_compute_t *c) {
  return c->state;
}
void ps_compute_set_state(ps_compute_t *c, void *state) {
  c->state = state;
}

ps_dbuf_t *ps_dbuf_new(ps_compute_t *c, ps_dtype_t dtype, size_t n) {
  ps_dbuf_t *b = calloc(1, sizeof(*b));
  if (b == NULL) return NULL;
  size_t esz = dtype_size(dtype);
  if (n > SIZE_MAX / esz) {
    free(b);
    return NULL;
  }
  b->owner = c;
  b->dtype = dtype;
  b->n = n;
  /* Zero-sized requests still get a distinct, freeable allocation. */
  b->mem = c->ops->alloc(c, n ? n * esz : esz);
  if (b->mem == NULL) {
    free(b);
    return NULL;
  }
  if (dtype == PS_DTYPE_F32) {
    c->ops->fill(c, b->mem, n, 0.0f);
  } else {
    unsigned char zero[256] = {0};
    for (size_t done = 0; done < n; done += sizeof(zero)) {
      size_t len = n - done < sizeof(zero) ? n - done : sizeof(zero);
      c->ops->upload(c, (unsigned char *)b->mem + done, zero, len);
    }
  }
  return b;
}

void ps_dbuf_destroy(ps_dbuf_t **b_p) {
  if (b_p == NULL || *b_p == NULL) return;
  ps_dbuf_t *b = *b_p;
  b->owner->ops->free(b->owner, b->mem);
  free(b);
  *b_p = NULL;
}

size_t ps_dbuf_size(const ps_dbuf_t *b) {
  return b->n;
}

/* The address of p, after checking that n elements of dtype fit there. */
static void *at(ps_compute_t *c, ps_dptr_t p, ps_dtype_t dtype, size_t n) {
  PS_ASSERT(p.buf != NULL);
  PS_ASSERT(p.buf->owner == c);
  PS_ASSERT(p.buf->dtype == dtype);
  PS_ASSERT(p.off <= p.buf->n && n <= p.buf->n - p.off);
  return (unsigned char *)p.buf->mem + p.off * dtype_size(dtype);
}

/* Elements spanned by a row-major rows x cols matrix with leading dim ld. */
static size_t extent(size_t rows, size_t cols, size_t ld) {
  PS_ASSERT(ld >= cols);
  return rows == 0 || cols == 0 ? 0 : (rows - 1) * ld + cols;
}

void *ps_compute_host_view(ps_compute_t *c, ps_dptr_t p, size_t n) {
  void *h = at(c, p, p.buf->dtype, n);
  return c->ops->host_memory ? h : NULL;
}

void ps_compute_upload(ps_compute_t *c, ps_dptr_t dst, const void *src,
                       size_t n) {
  void *d = at(c, dst, dst.buf->dtype, n);
  if (n && d != src) c->ops->upload(c, d, src, n * dtype_size(dst.buf->dtype));
}

void ps_compute_download(ps_compute_t *c, void *dst, ps_dptr_t src, size_t n) {
  void *s = at(c, src, src.buf->dtype, n);
  if (n && s != dst)
    c->ops->download(c, dst, s, n * dtype_size(src.buf->dtype));
}

void *ps_compute_host_alloc(ps_compute_t *c, size_t bytes) {
  return c->ops->host_alloc(c, bytes ? bytes : 1);
}

void ps_compute_host_free(ps_compute_t *c, void *mem) {
  if (mem != NULL) c->ops->host_free(c, mem);
}

uint64_t ps_compute_download_async(ps_compute_t *c, void *dst, ps_dptr_t src,
                                   size_t n) {
  void *s = at(c, src, src.buf->dtype, n);
  if (n == 0 || s == dst) return 0;
  size_t bytes = n * dtype_size(src.buf->dtype);
  if (c->ops->download_async == NULL) {
    c->ops->download(c, dst, s, bytes);
    return 0;
  }
  return c->ops->download_async(c, dst, s, bytes);
}

void ps_compute_wait(ps_compute_t *c, uint64_t fence) {
  if (fence != 0 && c->ops->wait) c->ops->wait(c, fence);
}

void ps_compute_fill(ps_compute_t *c, ps_dptr_t x, size_t n, float value) {
  float *p = at(c, x, PS_DTYPE_F32, n);
  if (n) c->ops->fill(c, p, n, value);
}

void ps_compute_gemm(ps_compute_t *c, ps_trans_t ta, ps_trans_t tb, size_t m,
                     size_t n, size_t k, float alpha, ps_dptr_t a, size_t lda,
                     ps_dptr_t b, size_t ldb, float beta, ps_dptr_t cm,
                     size_t ldc) {
  size_t a_ext = ta == PS_NO_TRANS ? extent(m, k, lda) : extent(k, m, lda);
  size_t b_ext = tb == PS_NO_TRANS ? extent(k, n, ldb) : extent(n, k, ldb);
  const float *pa = at(c, a, PS_DTYPE_F32, a_ext);
  const float *pb = at(c, b, PS_DTYPE_F32, b_ext);
  float *pc = at(c, cm, PS_DTYPE_F32, extent(m, n, ldc));
  if (m == 0 || n == 0) return;
  c->ops->gemm(c, ta, tb, m, n, k, alpha, pa, lda, pb, ldb, beta, pc, ldc);
}

void ps_compute_add_bias(ps_compute_t *c, ps_dptr_t y, ps_dptr_t bias,
                         size_t rows, size_t cols) {
  float *py = at(c, y, PS_DTYPE_F32, rows * cols);
  const float *pb = at(c, bias, PS_DTYPE_F32, cols);
  if (rows && cols) c->ops->add_bias(c, py, pb, rows, cols);
}

void ps_compute_relu(ps_compute_t *c, ps_dptr_t x, ps_dptr_t y, size_t n) {
  const float *px = at(c, x, PS_DTYPE_F32, n);
  float *py = at(c, y, PS_DTYPE_F32, n);
  if (n) c->ops->relu(c, px, py, n);
}

void ps_compute_relu_backward(ps_compute_t *c, ps_dptr_t y, ps_dptr_t dy,
                              ps_dptr_t dx, size_t n) {
  const float *py = at(c, y, PS_DTYPE_F32, n);
  const float *pdy = at(c, dy, PS_DTYPE_F32, n);
  float *pdx = at(c, dx, PS_DTYPE_F32, n);
  if (n) c->ops->relu_backward(c, py, pdy, pdx, n);
}

double ps_compute_softmax_xent(ps_compute_t *c, ps_dptr_t logits,
                               ps_dptr_t labels, size_t rows, size_t cols,
                               ps_dptr_t grad, float grad_scale) {
  PS_ASSERT(cols > 0);
  PS_ASSERT(!c->loss_started);
  const float *pl = at(c, logits, PS_DTYPE_F32, rows * cols);
  const uint8_t *py = at(c, labels, PS_DTYPE_U8, rows);
  float *pg = grad.buf ? at(c, grad, PS_DTYPE_F32, rows * cols) : NULL;
  if (rows == 0) return 0.0;
  return c->ops->softmax_xent(c, pl, py, rows, cols, pg, grad_scale);
}

void ps_compute_softmax_xent_start(ps_compute_t *c, ps_dptr_t logits,
                                   ps_dptr_t labels, size_t rows, size_t cols,
                                   ps_dptr_t grad, float grad_scale) {
  PS_ASSERT(cols > 0);
  PS_ASSERT(!c->loss_started);
  const float *pl = at(c, logits, PS_DTYPE_F32, rows * cols);
  const uint8_t *py = at(c, labels, PS_DTYPE_U8, rows);
  float *pg = grad.buf ? at(c, grad, PS_DTYPE_F32, rows * cols) : NULL;
  c->loss_started = 1;
  c->loss = 0.0;
  if (rows == 0) return;
  if (c->ops->softmax_xent_start == NULL) {
    c->loss = c->ops->softmax_xent(c, pl, py, rows, cols, pg, grad_scale);
    return;
  }
  c->ops->softmax_xent_start(c, pl, py, rows, cols, pg, grad_scale);
  c->loss_started = 2; /* the backend's to finish */
}

double ps_compute_softmax_xent_finish(ps_compute_t *c) {
  PS_ASSERT(c->loss_started);
  int backend = c->loss_started == 2;
  c->loss_started = 0;
  return backend ? c->ops->softmax_xent_finish(c) : c->loss;
}

void ps_compute_col_sum(ps_compute_t *c, ps_dptr_t x, size_t rows, size_t cols,
                        float alpha, float beta, ps_dptr_t out) {
  const float *px = at(c, x, PS_DTYPE_F32, rows * cols);
  float *po = at(c, out, PS_DTYPE_F32, cols);
  if (cols) c->ops->col_sum(c, px, rows, cols, alpha, beta, po);
}

size_t ps_compute_count_correct(ps_compute_t *c, ps_dptr_t logits,
                                ps_dptr_t labels, size_t rows, size_t cols) {
  PS_ASSERT(cols > 0);
  const float *pl = at(c, logits, PS_DTYPE_F32, rows * cols);
  const uint8_t *py = at(c, labels, PS_DTYPE_U8, rows);
  if (rows == 0) return 0;
  return c->ops->count_correct(c, pl, py, rows, cols);
}

void ps_compute_sync(ps_compute_t *c) {
  if (c->ops->sync) c->ops->sync(c);
}

int ps_conv_geom(ps_conv_geom_t *g, size_t n, size_t h, size_t w, size_t ch,
                 size_t k, size_t pad, size_t stride) {
  memset(g, 0, sizeof(*g));
  /* Bounds keep every product below well inside size_t. */
  const size_t big = (size_t)1 << 20;
  if (n == 0 || h == 0 || w == 0 || ch == 0 || k == 0 || stride == 0 ||
      n > big || h > big || w > big || ch > big || k > big || pad > big ||
      stride > big)
    return PS_ERR_INVAL;
  if (h + 2 * pad < k || w + 2 * pad < k) return PS_ERR_INVAL;
  g->n = n;
  g->h = h;
  g->w = w;
  g->ch = ch;
  g->kh = g->kw = k;
  g->pad = pad;
  g->stride = stride;
  g->oh = (h + 2 * pad - k) / stride + 1;
  g->ow = (w + 2 * pad - k) / stride + 1;
  return PS_OK;
}

static void check_geom(const ps_conv_geom_t *g) {
  PS_ASSERT(g->n > 0 && g->h > 0 && g->w > 0 && g->ch > 0);
  PS_ASSERT(g->kh > 0 && g->kw > 0 && g->stride > 0);
  PS_ASSERT(g->h + 2 * g->pad >= g->kh && g->w + 2 * g->pad >= g->kw);
  PS_ASSERT(g->oh == (g->h + 2 * g->pad - g->kh) / g->stride + 1);
  PS_ASSERT(g->ow == (g->w + 2 * g->pad - g->kw) / g->stride + 1);
}

/* Pooling windows that do not overlap and never leave the image, so every
 * input pixel gets at most one gradient and backward needs no atomics. */
static void check_pool(const ps_conv_geom_t *g) {
  check_geom(g);
  PS_ASSERT(g->pad == 0 && g->stride >= g->kh && g->stride >= g->kw);
}

void ps_compute_im2col(ps_compute_t *c, const ps_conv_geom_t *g, ps_dptr_t x,
                       ps_dptr_t col) {
  check_geom(g);
  const float *px = at(c, x, PS_DTYPE_F32, g->n * g->h * g->w * g->ch);
  float *pc =
      at(c, col, PS_DTYPE_F32, g->n * g->oh * g->ow * g->kh * g->kw * g->ch);
  c->ops->im2col(c, g, px, pc);
}

void ps_compute_col2im(ps_compute_t *c, const ps_conv_geom_t *g, ps_dptr_t col,
                       ps_dptr_t dx) {
  check_geom(g);
  const float *pc =
      at(c, col, PS_DTYPE_F32, g->n * g->oh * g->ow * g->kh * g->kw * g->ch);
  float *pd = at(c, dx, PS_DTYPE_F32, g->n * g->h * g->w * g->ch);
  c->ops->col2im(c, g, pc, pd);
}

void ps_compute_maxpool(ps_compute_t *c, const ps_conv_geom_t *g, ps_dptr_t x,
                        ps_dptr_t y) {
  check_pool(g);
  const float *px = at(c, x, PS_DTYPE_F32, g->n * g->h * g->w * g->ch);
  float *py = at(c, y, PS_DTYPE_F32, g->n * g->oh * g->ow * g->ch);
  c->ops->maxpool(c, g, px, py);
}

void ps_compute_maxpool_backward(ps_compute_t *c, const ps_conv_geom_t *g,
                                 ps_dptr_t x, ps_dptr_t dy, ps_dptr_t dx) {
  check_pool(g);
  const float *px = at(c, x, PS_DTYPE_F32, g->n * g->h * g->w * g->ch);
  const float *pdy = at(c, dy, PS_DTYPE_F32, g->n * g->oh * g->ow * g->ch);
  float *pdx = at(c, dx, PS_DTYPE_F32, g->n * g->h * g->w * g->ch);
  c->ops->maxpool_backward(c, g, px, pdy, pdx);
}
