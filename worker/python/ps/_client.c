/* ps._client: the CPython extension under the `ps` package, a thin layer
 * over libps-client (<ps/client.h>).
 *
 * Values go straight between the caller's memory and the library through
 * the buffer protocol: a push hands the library the address of the array's
 * own bytes, a pull makes the library write into them; nothing is copied
 * in Python or here. A buffer must be float32, C-contiguous and (for a
 * pull) writable, or the call is refused before anything is sent. Every
 * call that may wait (connect, push, pull, wait, sparse, barrier, close)
 * releases the GIL meanwhile.
 *
 * libps-client requires that one thread make all calls on a client; the
 * GIL no longer guarantees that while a call waits, so each client
 * remembers the thread that created it and refuses calls from any other
 * (RuntimeError).
 *
 * Failures of the library raise ps.Error (this module's Error) carrying
 * .code (a PS_ERR_* value, negative), .name ("ERR_TIMEOUT") and .message
 * (ps_client_errmsg). Bad arguments raise TypeError (not a float32 buffer)
 * or ValueError (not contiguous, wrong size, negative id); a tensor or
 * table the model does not have raises ps.Error with ERR_UNKNOWN_KEY, the
 * code the library gives for an unknown table.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <ps/client.h>
#include <pythread.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

static PyObject *ps_error_type; /* ps._client.Error */

/* ---- errors -------------------------------------------------------------
 */

/* Raises Error(code, message) and returns NULL. */
static PyObject *raise_code(int code, const char *message) {
  const char *name = ps_err_name(code);
  PyObject *text = PyUnicode_FromFormat(
      "%s: %s", name, message && message[0] ? message : ps_strerror(code));
  if (text == NULL) return NULL;
  PyObject *exc = PyObject_CallOneArg(ps_error_type, text);
  Py_DECREF(text);
  if (exc == NULL) return NULL;
  PyObject *pcode = PyLong_FromLong(code);
  PyObject *pname = PyUnicode_FromString(name);
  PyObject *pmsg = PyUnicode_FromString(message ? message : "");
  if (pcode && pname && pmsg &&
      PyObject_SetAttrString(exc, "code", pcode) == 0 &&
      PyObject_SetAttrString(exc, "name", pname) == 0 &&
      PyObject_SetAttrString(exc, "message", pmsg) == 0)
    PyErr_SetObject(ps_error_type, exc);
  Py_XDECREF(pcode);
  Py_XDECREF(pname);
  Py_XDECREF(pmsg);
  Py_DECREF(exc);
  return NULL;
}

static PyObject *raise_codef(int code, const char *fmt, ...) {
  char msg[512];
  va_list ap;
  va_start(ap, fmt);
  PyOS_vsnprintf(msg, sizeof(msg), fmt, ap);
  va_end(ap);
  return raise_code(code, msg);
}

/* ---- buffers ------------------------------------------------------------
 */

/* The buffer's one-letter struct format without a native byte-order
 * prefix, or "" for one that names another order or several items. */
static const char *plain_format(const Py_buffer *b) {
  const char *f = b->format ? b->format : "B";
  if (f[0] == '@' || f[0] == '=' || (f[0] == '<' && PY_LITTLE_ENDIAN) ||
      (f[0] == '>' && PY_BIG_ENDIAN))
    f++;
  return f[0] != '\0' && f[1] == '\0' ? f : "";
}

/* A PyTorch CPU tensor has no buffer protocol, but tensor.detach().numpy()
 * is an array over the same memory (no copy; the array keeps the storage
 * alive). Returns a new reference, or NULL with an exception set. */
static PyObject *torch_as_array(PyObject *obj, const char *what) {
  PyObject *is_cuda = PyObject_GetAttrString(obj, "is_cuda");
  if (is_cuda == NULL) return NULL;
  int cuda = PyObject_IsTrue(is_cuda);
  Py_DECREF(is_cuda);
  if (cuda) {
    PyErr_Format(PyExc_ValueError,
                 "%s is a CUDA tensor: the library reads and writes host "
                 "memory; ps.torch stages CUDA tensors through pinned host "
                 "buffers",
                 what);
    return NULL;
  }
  PyObject *detached = PyObject_CallMethod(obj, "detach", NULL);
  if (detached == NULL) return NULL;
  PyObject *arr = PyObject_CallMethod(detached, "numpy", NULL);
  Py_DECREF(detached);
  return arr;
}

static int looks_like_torch_tensor(PyObject *obj) {
  PyObject *mod =
      PyObject_GetAttrString((PyObject *)Py_TYPE(obj), "__module__");
  if (mod == NULL) {
    PyErr_Clear();
    return 0;
  }
  const char *m = PyUnicode_Check(mod) ? PyUnicode_AsUTF8(mod) : NULL;
  int yes = m != NULL && strncmp(m, "torch", 5) == 0 &&
            PyObject_HasAttrString(obj, "detach");
  if (m == NULL) PyErr_Clear();
  Py_DECREF(mod);
  return yes;
}

static int acquire(PyObject *obj, Py_buffer *b, int writable,
                   const char *what) {
  int flags = PyBUF_STRIDES | PyBUF_FORMAT | (writable ? PyBUF_WRITABLE : 0);
  if (PyObject_GetBuffer(obj, b, flags) == 0) return 0;
  if (PyErr_ExceptionMatches(PyExc_TypeError) && looks_like_torch_tensor(obj)) {
    PyErr_Clear();
    PyObject *arr = torch_as_array(obj, what);
    if (arr == NULL) return -1;
    int rc = acquire(arr, b, writable, what);
    Py_DECREF(arr);
    return rc;
  }
  PyErr_Clear();
  if (writable && PyObject_GetBuffer(obj, b, PyBUF_STRIDES) == 0) {
    PyBuffer_Release(b);
    PyErr_Format(PyExc_ValueError,
                 "%s is read-only: a pull needs a "
                 "writable array",
                 what);
    return -1;
  }
  PyErr_Format(PyExc_TypeError,
               "%s must support the buffer protocol (a NumPy array, or a "
               "tensor through ps.torch), got %.200s",
               what, Py_TYPE(obj)->tp_name);
  return -1;
}

static int check_contiguous(Py_buffer *b, const char *what) {
  if (PyBuffer_IsContiguous(b, 'C')) return 0;
  PyErr_Format(PyExc_ValueError,
               "%s is not C-contiguous: values travel straight from and "
               "into the array's memory, so it must be one dense block "
               "(use numpy.ascontiguousarray or tensor.contiguous())",
               what);
  return -1;
}

/* A float32, C-contiguous buffer of obj; *count its number of floats. */
static int get_floats(PyObject *obj, Py_buffer *b, int writable,
                      const char *what, uint64_t *count) {
  if (acquire(obj, b, writable, what) < 0) return -1;
  const char *f = plain_format(b);
  if (strcmp(f, "f") != 0 || b->itemsize != 4) {
    PyErr_Format(PyExc_TypeError,
                 "%s must be float32, got buffer format '%s' (itemsize %zd)",
                 what, b->format ? b->format : "B", b->itemsize);
    goto fail;
  }
  if (check_contiguous(b, what) < 0) goto fail;
  if (((uintptr_t)b->buf & 3u) != 0) {
    PyErr_Format(PyExc_ValueError, "%s is not aligned for float32", what);
    goto fail;
  }
  *count = (uint64_t)(b->len / 4);
  return 0;
fail:
  PyBuffer_Release(b);
  return -1;
}

/* 64-bit integer ids, signed (checked >= 0) or unsigned. */
static int get_ids(PyObject *obj, Py_buffer *b, size_t *n) {
  if (acquire(obj, b, 0, "ids") < 0) return -1;
  const char *f = plain_format(b);
  int is_signed = strchr("qln", f[0]) != NULL && f[0] != '\0';
  int is_unsigned = strchr("QLN", f[0]) != NULL && f[0] != '\0';
  if ((!is_signed && !is_unsigned) || b->itemsize != 8) {
    PyErr_Format(PyExc_TypeError,
                 "ids must be 64-bit integers (int64 or uint64), got buffer "
                 "format '%s' (itemsize %zd)",
                 b->format ? b->format : "B", b->itemsize);
    goto fail;
  }
  if (check_contiguous(b, "ids") < 0) goto fail;
  *n = (size_t)(b->len / 8);
  if (is_signed) {
    const int64_t *v = b->buf;
    for (size_t i = 0; i < *n; i++) {
      if (v[i] >= 0) continue;
      PyErr_Format(PyExc_ValueError, "ids[%zu] is %lld: ids are >= 0", i,
                   (long long)v[i]);
      goto fail;
    }
  }
  return 0;
fail:
  PyBuffer_Release(b);
  return -1;
}

/* ---- the client ---------------------------------------------------------
 */

typedef struct {
  PyObject_HEAD ps_client_t *c;
  unsigned long thread; /* the creating thread: the only one allowed */
  ps_model_t model;     /* our copy: names, offsets and lengths to check */
  PyObject *pending;    /* dict ticket -> Call: the buffers they hold */
  int done;             /* done or leave sent */
} ClientObject;

/* A started push or pull: holds the caller's buffer until it is waited
 * for (or the client closes), so the array stays alive and unresized
 * while the library reads or writes it. */
typedef struct {
  PyObject_HEAD ClientObject *client; /* borrowed (the client's pending
                                       * dict holds us); NULL once done */
  uint64_t ticket;
  Py_buffer buf;
  int has_buf;
  int is_push;
} CallObject;

static PyTypeObject CallType;

static int client_usable(ClientObject *self) {
  if (self->c == NULL) {
    PyErr_SetString(PyExc_ValueError, "the client is closed");
    return 0;
  }
  if (PyThread_get_thread_ident() != self->thread) {
    PyErr_SetString(PyExc_RuntimeError,
                    "a ps.Client must be used from the thread that created "
                    "it (libps-client's rule)");
    return 0;
  }
  return 1;
}

static PyObject *client_error(ClientObject *self, int rc) {
  return raise_code(rc, ps_client_errmsg(self->c));
}

static void model_free(ps_model_t *m) {
  PyMem_Free(m->tensors);
  PyMem_Free(m->sparse);
  memset(m, 0, sizeof(*m));
}

/* Reads attr of obj as a C value; -1 with an exception set on failure. */
static int attr_u64(PyObject *obj, const char *attr, uint64_t *out) {
  PyObject *v = PyObject_GetAttrString(obj, attr);
  if (v == NULL) return -1;
  *out = PyLong_AsUnsignedLongLong(v);
  Py_DECREF(v);
  return PyErr_Occurred() ? -1 : 0;
}

static int attr_int(PyObject *obj, const char *attr, int *out) {
  PyObject *v = PyObject_GetAttrString(obj, attr);
  if (v == NULL) return -1;
  long x = PyLong_AsLong(v);
  Py_DECREF(v);
  if (x == -1 && PyErr_Occurred()) return -1;
  if (x < INT32_MIN || x > INT32_MAX) {
    PyErr_Format(PyExc_OverflowError, "%s: %ld does not fit an int", attr, x);
    return -1;
  }
  *out = (int)x;
  return 0;
}

static int attr_float(PyObject *obj, const char *attr, float *out) {
  PyObject *v = PyObject_GetAttrString(obj, attr);
  if (v == NULL) return -1;
  double x = PyFloat_AsDouble(v);
  Py_DECREF(v);
  if (x == -1.0 && PyErr_Occurred()) return -1;
  *out = (float)x;
  return 0;
}

static int attr_name(PyObject *obj, char name[PS_NAME_MAX]) {
  PyObject *v = PyObject_GetAttrString(obj, "name");
  if (v == NULL) return -1;
  Py_ssize_t len = 0;
  const char *s = PyUnicode_Check(v) ? PyUnicode_AsUTF8AndSize(v, &len) : NULL;
  if (s == NULL) {
    if (!PyErr_Occurred())
      PyErr_SetString(PyExc_TypeError, "a tensor or table name must be str");
    Py_DECREF(v);
    return -1;
  }
  if (len == 0 || len >= PS_NAME_MAX) {
    PyErr_Format(PyExc_ValueError, "name '%s' must have 1 to %d bytes", s,
                 PS_NAME_MAX - 1);
    Py_DECREF(v);
    return -1;
  }
  memcpy(name, s, (size_t)len + 1);
  Py_DECREF(v);
  return 0;
}

/* The optional settings of issue #14 (optimizers, schedule): an object
 * without the attribute leaves the field 0, as a ps.Model from before. */
static int opt_float(PyObject *obj, const char *name, float *out) {
  if (!PyObject_HasAttrString(obj, name)) return 0;
  return attr_float(obj, name, out);
}
static int opt_u64(PyObject *obj, const char *name, uint64_t *out) {
  if (!PyObject_HasAttrString(obj, name)) return 0;
  return attr_u64(obj, name, out);
}
static int opt_int(PyObject *obj, const char *name, int *out) {
  if (!PyObject_HasAttrString(obj, name)) return 0;
  return attr_int(obj, name, out);
}

/* A tensor's or table's own optimizer (its "optimizer" attribute, a
 * ps.Optimizer), if it has one: *has 1 and spec filled; None or no such
 * attribute leaves *has 0. -1 with an exception set on failure. */
static int own_optimizer(PyObject *obj, int *has, ps_optimizer_spec_t *spec) {
  *has = 0;
  if (!PyObject_HasAttrString(obj, "optimizer")) return 0;
  PyObject *o = PyObject_GetAttrString(obj, "optimizer");
  if (o == NULL) return -1;
  int rc = 0;
  if (o != Py_None) {
    memset(spec, 0, sizeof(*spec));
    rc = attr_int(o, "kind", &spec->kind) < 0 ||
                 attr_float(o, "learning_rate", &spec->learning_rate) < 0 ||
                 attr_float(o, "momentum", &spec->momentum) < 0 ||
                 attr_float(o, "beta1", &spec->beta1) < 0 ||
                 attr_float(o, "beta2", &spec->beta2) < 0 ||
                 attr_float(o, "epsilon", &spec->epsilon) < 0 ||
                 attr_float(o, "l1", &spec->l1) < 0 ||
                 attr_float(o, "l2", &spec->l2) < 0 ||
                 attr_float(o, "ftrl_beta", &spec->ftrl_beta) < 0
             ? -1
             : 0;
    *has = rc == 0;
  }
  Py_DECREF(o);
  return rc;
}

/* Copies a ps.Model (tensors, sparse, optimizer and its settings, schedule,
 * seed, and the tensors' and tables' own optimizers) into m; tensors are
 * laid end to end from key 0 in order. */
static int model_from_py(PyObject *py, ps_model_t *m) {
  memset(m, 0, sizeof(*m));
  PyObject *tensors = NULL, *sparse = NULL;
  PyObject *t = PyObject_GetAttrString(py, "tensors");
  if (t == NULL) goto fail;
  tensors = PySequence_Fast(t, "model.tensors must be a sequence");
  Py_DECREF(t);
  PyObject *s = tensors ? PyObject_GetAttrString(py, "sparse") : NULL;
  if (s == NULL) goto fail;
  sparse = PySequence_Fast(s, "model.sparse must be a sequence");
  Py_DECREF(s);
  if (sparse == NULL) goto fail;
  m->ntensors = (size_t)PySequence_Fast_GET_SIZE(tensors);
  m->nsparse = (size_t)PySequence_Fast_GET_SIZE(sparse);
  m->tensors = PyMem_Calloc(m->ntensors + 1, sizeof(*m->tensors));
  m->sparse = PyMem_Calloc(m->nsparse + 1, sizeof(*m->sparse));
  if (m->tensors == NULL || m->sparse == NULL) {
    PyErr_NoMemory();
    goto fail;
  }
  uint64_t off = 0;
  for (size_t i = 0; i < m->ntensors; i++) {
    PyObject *o = PySequence_Fast_GET_ITEM(tensors, i);
    ps_tensor_spec_t *ts = &m->tensors[i];
    if (attr_name(o, ts->name) < 0 || attr_u64(o, "length", &ts->length) < 0 ||
        attr_int(o, "init", &ts->init) < 0 ||
        attr_float(o, "init_scale", &ts->init_scale) < 0 ||
        own_optimizer(o, &ts->has_optimizer, &ts->optimizer) < 0)
      goto fail;
    ts->offset = off;
    off += ts->length;
  }
  m->total = off;
  for (size_t i = 0; i < m->nsparse; i++) {
    PyObject *o = PySequence_Fast_GET_ITEM(sparse, i);
    ps_sparse_spec_t *ss = &m->sparse[i];
    uint64_t dim = 0;
    if (attr_name(o, ss->name) < 0 || attr_u64(o, "dim", &dim) < 0 ||
        attr_int(o, "init", &ss->init) < 0 ||
        attr_float(o, "init_scale", &ss->init_scale) < 0 ||
        own_optimizer(o, &ss->has_optimizer, &ss->optimizer) < 0)
      goto fail;
    if (dim == 0 || dim > PS_SPARSE_DIM_MAX) {
      PyErr_Format(PyExc_ValueError,
                   "sparse table '%s': dim %llu not in [1, %d]", ss->name,
                   (unsigned long long)dim, PS_SPARSE_DIM_MAX);
      goto fail;
    }
    ss->dim = (uint32_t)dim;
  }
  uint64_t seed = 0;
  if (attr_int(py, "optimizer", &m->optimizer) < 0 ||
      attr_float(py, "learning_rate", &m->learning_rate) < 0 ||
      attr_float(py, "momentum", &m->momentum) < 0 ||
      attr_u64(py, "seed", &seed) < 0 ||
      opt_float(py, "beta1", &m->beta1) < 0 ||
      opt_float(py, "beta2", &m->beta2) < 0 ||
      opt_float(py, "epsilon", &m->epsilon) < 0 ||
      opt_float(py, "l1", &m->l1) < 0 || opt_float(py, "l2", &m->l2) < 0 ||
      opt_float(py, "ftrl_beta", &m->ftrl_beta) < 0 ||
      opt_int(py, "lr_schedule", &m->lr_schedule.kind) < 0 ||
      opt_u64(py, "lr_total_steps", &m->lr_schedule.total_steps) < 0 ||
      opt_u64(py, "lr_warmup_steps", &m->lr_schedule.warmup_steps) < 0)
    goto fail;
  m->seed = seed;
  Py_DECREF(tensors);
  Py_DECREF(sparse);
  return 0;
fail:
  Py_XDECREF(tensors);
  Py_XDECREF(sparse);
  model_free(m);
  return -1;
}

/* The client options Python may set, one row each: a new field of
 * ps_client_opts_t is one more row here. Strings point
 * into the Python objects, kept alive until ps_client_new returns (the
 * library copies what it keeps). */
typedef enum { OPT_INT, OPT_I64, OPT_U64, OPT_STR } opt_type_t;
static const struct {
  const char *name;
  opt_type_t type;
  size_t offset;
} client_opts[] = {
    {"timeout_ms", OPT_INT, offsetof(ps_client_opts_t, timeout_ms)},
    {"connect_timeout_ms", OPT_INT,
     offsetof(ps_client_opts_t, connect_timeout_ms)},
    {"heartbeat_ms", OPT_INT, offsetof(ps_client_opts_t, heartbeat_ms)},
    {"rank", OPT_I64, offsetof(ps_client_opts_t, rank)},
    {"window", OPT_INT, offsetof(ps_client_opts_t, window)},
    {"chunk_bytes", OPT_U64, offsetof(ps_client_opts_t, chunk_bytes)},
    {"resend_ms", OPT_INT, offsetof(ps_client_opts_t, resend_ms)},
    {"keys_dir", OPT_STR, offsetof(ps_client_opts_t, keys_dir)},
    {"key_file", OPT_STR, offsetof(ps_client_opts_t, key_file)},
    {"join_new_rank", OPT_INT, offsetof(ps_client_opts_t, join_new_rank)},
};
#define NOPTS (sizeof(client_opts) / sizeof(client_opts[0]))

static int set_opt(ps_client_opts_t *o, PyObject *key, PyObject *val,
                   PyObject *keep) {
  const char *k = PyUnicode_AsUTF8(key);
  if (k == NULL) return -1;
  size_t i = 0;
  while (i < NOPTS && strcmp(client_opts[i].name, k) != 0) i++;
  if (i == NOPTS) {
    char known[512] = "";
    for (size_t j = 0; j < NOPTS; j++) {
      if (j) strncat(known, ", ", sizeof(known) - strlen(known) - 1);
      strncat(known, client_opts[j].name, sizeof(known) - strlen(known) - 1);
    }
    PyErr_Format(PyExc_TypeError, "unknown client option '%s' (known: %s)", k,
                 known);
    return -1;
  }
  char *field = (char *)o + client_opts[i].offset;
  switch (client_opts[i].type) {
    case OPT_INT: {
      long x = PyLong_AsLong(val);
      if (x == -1 && PyErr_Occurred()) return -1;
      if (x < INT32_MIN || x > INT32_MAX) {
        PyErr_Format(PyExc_ValueError, "option %s: %ld does not fit an int", k,
                     x);
        return -1;
      }
      *(int *)field = (int)x;
      return 0;
    }
    case OPT_I64: {
      long long x = PyLong_AsLongLong(val);
      if (x == -1 && PyErr_Occurred()) return -1;
      *(int64_t *)field = x;
      return 0;
    }
    case OPT_U64: {
      unsigned long long x = PyLong_AsUnsignedLongLong(val);
      if (PyErr_Occurred()) return -1;
      *(uint64_t *)field = x;
      return 0;
    }
    case OPT_STR: {
      const char *s = val == Py_None ? NULL : PyUnicode_AsUTF8(val);
      if (s == NULL && val != Py_None) return -1;
      if (PyList_Append(keep, val) < 0) return -1;
      *(const char **)field = s;
      return 0;
    }
  }
  return 0;
}

static int Client_init(ClientObject *self, PyObject *args, PyObject *kwds) {
  if (self->c != NULL) {
    PyErr_SetString(PyExc_RuntimeError, "a ps.Client is initialised once");
    return -1;
  }
  const char *scheduler = NULL;
  PyObject *model_py = NULL;
  if (!PyArg_ParseTuple(args, "sO:Client", &scheduler, &model_py)) return -1;
  ps_client_opts_t o;
  ps_client_opts_init(&o);
  o.scheduler = scheduler;
  PyObject *keep = PyList_New(0);
  if (keep == NULL) return -1;
  if (kwds != NULL) {
    PyObject *key, *val;
    Py_ssize_t pos = 0;
    while (PyDict_Next(kwds, &pos, &key, &val)) {
      if (set_opt(&o, key, val, keep) < 0) {
        Py_DECREF(keep);
        return -1;
      }
    }
  }
  if (model_from_py(model_py, &self->model) < 0) {
    Py_DECREF(keep);
    return -1;
  }
  self->pending = PyDict_New();
  if (self->pending == NULL) {
    Py_DECREF(keep);
    return -1;
  }
  int err = PS_OK;
  char msg[512] = "";
  ps_client_t *c;
  Py_BEGIN_ALLOW_THREADS c =
      ps_client_new(&o, &self->model, &err, msg, sizeof(msg));
  Py_END_ALLOW_THREADS Py_DECREF(keep);
  if (c == NULL) {
    raise_code(err, msg);
    return -1;
  }
  self->c = c;
  self->thread = PyThread_get_thread_ident();
  return 0;
}

/* Drops the buffers of every call not waited for; the library has let go
 * of them (the client is destroyed). */
static void release_pending(ClientObject *self) {
  if (self->pending == NULL) return;
  PyObject *key, *val;
  Py_ssize_t pos = 0;
  while (PyDict_Next(self->pending, &pos, &key, &val)) {
    CallObject *call = (CallObject *)val;
    if (call->has_buf) PyBuffer_Release(&call->buf);
    call->has_buf = 0;
    call->client = NULL;
  }
  PyDict_Clear(self->pending);
}

static void client_close(ClientObject *self) {
  if (self->c == NULL) return;
  ps_client_t *c = self->c;
  Py_BEGIN_ALLOW_THREADS ps_client_destroy(&c);
  Py_END_ALLOW_THREADS self->c = NULL;
  release_pending(self);
}

static void Client_dealloc(ClientObject *self) {
  /* From another thread too: the last reference may go anywhere, and
   * destroying is the one call that must still happen. */
  client_close(self);
  Py_CLEAR(self->pending);
  model_free(&self->model);
  Py_TYPE(self)->tp_free((PyObject *)self);
}

static PyObject *Client_close(ClientObject *self, PyObject *noargs) {
  if (self->c != NULL && !client_usable(self)) return NULL;
  client_close(self);
  Py_RETURN_NONE;
}

/* Resolves where (an int key or a tensor name) and the buffer's count to
 * [key_begin, key_begin + count). */
static int resolve(ClientObject *self, PyObject *where, uint64_t count,
                   uint64_t *key_begin) {
  if (PyUnicode_Check(where)) {
    const char *name = PyUnicode_AsUTF8(where);
    if (name == NULL) return -1;
    for (size_t i = 0; i < self->model.ntensors; i++) {
      const ps_tensor_spec_t *t = &self->model.tensors[i];
      if (strcmp(t->name, name) != 0) continue;
      if (count != t->length) {
        PyErr_Format(PyExc_ValueError,
                     "tensor '%s' has %llu values, the array %llu", name,
                     (unsigned long long)t->length, (unsigned long long)count);
        return -1;
      }
      *key_begin = t->offset;
      return 0;
    }
    raise_codef(PS_ERR_UNKNOWN_KEY, "the model has no tensor named '%s'", name);
    return -1;
  }
  if (!PyLong_Check(where)) {
    PyErr_Format(PyExc_TypeError,
                 "where must be a key (int) or a tensor name (str), got "
                 "%.200s",
                 Py_TYPE(where)->tp_name);
    return -1;
  }
  unsigned long long k = PyLong_AsUnsignedLongLong(where);
  if (PyErr_Occurred()) {
    PyErr_Clear();
    PyErr_SetString(PyExc_ValueError, "a key is an integer >= 0");
    return -1;
  }
  if (k > self->model.total || count > self->model.total - k) {
    PyErr_Format(PyExc_ValueError,
                 "keys [%llu, %llu) are past the model's %llu keys", k,
                 k + count, (unsigned long long)self->model.total);
    return -1;
  }
  *key_begin = k;
  return 0;
}

static int parse_clock(PyObject *obj, uint64_t *clock) {
  *clock = PyLong_AsUnsignedLongLong(obj);
  if (!PyErr_Occurred()) return 0;
  PyErr_Clear();
  PyErr_SetString(PyExc_ValueError, "clock is an integer >= 0");
  return -1;
}

/* push(where, values, clock) / pull(where, out, clock) and the _start
 * variants. */
static PyObject *dense_call(ClientObject *self, PyObject *args, int is_push,
                            int start) {
  PyObject *where, *arr, *clock_obj;
  if (!PyArg_ParseTuple(args, "OOO", &where, &arr, &clock_obj)) return NULL;
  if (!client_usable(self)) return NULL;
  uint64_t clock, count, key;
  if (parse_clock(clock_obj, &clock) < 0) return NULL;
  Py_buffer b;
  if (get_floats(arr, &b, !is_push, is_push ? "values" : "out", &count) < 0)
    return NULL;
  if (resolve(self, where, count, &key) < 0) {
    PyBuffer_Release(&b);
    return NULL;
  }
  int rc;
  if (!start) {
    Py_BEGIN_ALLOW_THREADS rc =
        is_push ? ps_client_push(self->c, key, count, b.buf, clock)
                : ps_client_pull(self->c, key, count, b.buf, clock);
    Py_END_ALLOW_THREADS PyBuffer_Release(&b);
    if (rc != PS_OK) return client_error(self, rc);
    Py_RETURN_NONE;
  }
  CallObject *call = PyObject_New(CallObject, &CallType);
  if (call == NULL) {
    PyBuffer_Release(&b);
    return NULL;
  }
  call->client = NULL;
  call->has_buf = 0;
  call->is_push = is_push;
  /* Starting only queues requests; no wait, so the GIL stays. */
  rc = is_push ? ps_client_push_start(self->c, key, count, b.buf, clock,
                                      &call->ticket)
               : ps_client_pull_start(self->c, key, count, b.buf, clock,
                                      &call->ticket);
  if (rc != PS_OK) {
    PyBuffer_Release(&b);
    Py_DECREF(call);
    return client_error(self, rc);
  }
  call->buf = b;
  call->has_buf = 1;
  call->client = self;
  PyObject *key_obj = PyLong_FromUnsignedLongLong(call->ticket);
  if (key_obj == NULL ||
      PyDict_SetItem(self->pending, key_obj, (PyObject *)call) < 0) {
    /* The library still holds the buffer: keep it (leaked) rather than
     * let the array go while it may be written. */
    Py_XDECREF(key_obj);
    Py_DECREF(call);
    return NULL;
  }
  Py_DECREF(key_obj);
  return (PyObject *)call;
}

static PyObject *Client_push(ClientObject *self, PyObject *args) {
  return dense_call(self, args, 1, 0);
}
static PyObject *Client_pull(ClientObject *self, PyObject *args) {
  return dense_call(self, args, 0, 0);
}
static PyObject *Client_push_start(ClientObject *self, PyObject *args) {
  return dense_call(self, args, 1, 1);
}
static PyObject *Client_pull_start(ClientObject *self, PyObject *args) {
  return dense_call(self, args, 0, 1);
}

static PyObject *call_wait(CallObject *call) {
  ClientObject *self = call->client;
  if (self == NULL) {
    PyErr_SetString(PyExc_ValueError,
                    "this call was waited for already (or its client "
                    "closed)");
    return NULL;
  }
  if (!client_usable(self)) return NULL;
  Py_INCREF(self);
  int rc;
  Py_BEGIN_ALLOW_THREADS rc = ps_client_wait(self->c, call->ticket);
  Py_END_ALLOW_THREADS if (call->has_buf) PyBuffer_Release(&call->buf);
  call->has_buf = 0;
  call->client = NULL;
  PyObject *result = rc == PS_OK ? Py_NewRef(Py_None) : client_error(self, rc);
  /* Dropping the pending entry may drop the last reference to call. */
  PyObject *key_obj = PyLong_FromUnsignedLongLong(call->ticket);
  Py_INCREF(call);
  if (key_obj != NULL) {
    PyObject *et, *ev, *tb;
    PyErr_Fetch(&et, &ev, &tb);
    if (PyDict_DelItem(self->pending, key_obj) < 0) PyErr_Clear();
    PyErr_Restore(et, ev, tb);
    Py_DECREF(key_obj);
  }
  Py_DECREF(call);
  Py_DECREF(self);
  return result;
}

static PyObject *Client_wait(ClientObject *self, PyObject *arg) {
  if (!PyObject_TypeCheck(arg, &CallType) ||
      ((CallObject *)arg)->client != self) {
    if (PyObject_TypeCheck(arg, &CallType) &&
        ((CallObject *)arg)->client == NULL)
      return call_wait((CallObject *)arg); /* says: waited already */
    PyErr_SetString(PyExc_TypeError,
                    "wait() takes a call this client's push_start or "
                    "pull_start returned");
    return NULL;
  }
  return call_wait((CallObject *)arg);
}

static const ps_sparse_spec_t *find_table(ClientObject *self,
                                          const char *name) {
  for (size_t i = 0; i < self->model.nsparse; i++)
    if (strcmp(self->model.sparse[i].name, name) == 0)
      return &self->model.sparse[i];
  raise_codef(PS_ERR_UNKNOWN_KEY, "the model has no sparse table named '%s'",
              name);
  return NULL;
}

static PyObject *sparse_call(ClientObject *self, PyObject *args, int is_push) {
  const char *table;
  PyObject *ids_obj, *arr, *clock_obj = NULL;
  if (is_push) {
    if (!PyArg_ParseTuple(args, "sOOO:sparse_push", &table, &ids_obj, &arr,
                          &clock_obj))
      return NULL;
  } else if (!PyArg_ParseTuple(args, "sOO:sparse_pull", &table, &ids_obj,
                               &arr)) {
    return NULL;
  }
  if (!client_usable(self)) return NULL;
  uint64_t clock = 0, count = 0;
  if (clock_obj != NULL && parse_clock(clock_obj, &clock) < 0) return NULL;
  const ps_sparse_spec_t *t = find_table(self, table);
  if (t == NULL) return NULL;
  Py_buffer ids, b;
  size_t n = 0;
  if (get_ids(ids_obj, &ids, &n) < 0) return NULL;
  if (get_floats(arr, &b, !is_push, is_push ? "values" : "out", &count) < 0) {
    PyBuffer_Release(&ids);
    return NULL;
  }
  if (count != (uint64_t)n * t->dim) {
    PyErr_Format(PyExc_ValueError,
                 "table '%s' has rows of %u floats: %zu ids need %llu "
                 "values, the array has %llu",
                 table, t->dim, n, (unsigned long long)n * t->dim,
                 (unsigned long long)count);
    PyBuffer_Release(&ids);
    PyBuffer_Release(&b);
    return NULL;
  }
  int rc;
  Py_BEGIN_ALLOW_THREADS rc =
      is_push ? ps_client_sparse_push(self->c, table, ids.buf, n, b.buf, clock)
              : ps_client_sparse_pull(self->c, table, ids.buf, n, b.buf);
  Py_END_ALLOW_THREADS PyBuffer_Release(&ids);
  PyBuffer_Release(&b);
  if (rc != PS_OK) return client_error(self, rc);
  Py_RETURN_NONE;
}

static PyObject *Client_sparse_push(ClientObject *self, PyObject *args) {
  return sparse_call(self, args, 1);
}
static PyObject *Client_sparse_pull(ClientObject *self, PyObject *args) {
  return sparse_call(self, args, 0);
}

static PyObject *Client_barrier(ClientObject *self, PyObject *args) {
  const char *name;
  if (!PyArg_ParseTuple(args, "s:barrier", &name)) return NULL;
  if (!client_usable(self)) return NULL;
  int rc;
  Py_BEGIN_ALLOW_THREADS rc = ps_client_barrier(self->c, name);
  Py_END_ALLOW_THREADS if (rc != PS_OK) return client_error(self, rc);
  Py_RETURN_NONE;
}

static PyObject *Client_done(ClientObject *self, PyObject *noargs) {
  if (!client_usable(self)) return NULL;
  int rc = ps_client_done(self->c);
  if (rc != PS_OK) return client_error(self, rc);
  self->done = 1;
  Py_RETURN_NONE;
}

static PyObject *Client_leave(ClientObject *self, PyObject *args) {
  const char *reason = "";
  if (!PyArg_ParseTuple(args, "|s:leave", &reason)) return NULL;
  if (!client_usable(self)) return NULL;
  int rc = ps_client_leave(self->c, reason);
  if (rc != PS_OK) return client_error(self, rc);
  self->done = 1;
  Py_RETURN_NONE;
}

static PyObject *Client_set_metrics_address(ClientObject *self,
                                            PyObject *args) {
  const char *addr = NULL;
  if (!PyArg_ParseTuple(args, "z:set_metrics_address", &addr)) return NULL;
  if (!client_usable(self)) return NULL;
  int rc = ps_client_set_metrics_address(self->c, addr);
  if (rc != PS_OK) return client_error(self, rc);
  Py_RETURN_NONE;
}

/* view() -> (epoch, live_workers, ((begin, end, server), ...)) */
static PyObject *Client_view(ClientObject *self, PyObject *noargs) {
  if (!client_usable(self)) return NULL;
  const ps_view_t *v = ps_client_view(self->c);
  size_t n = ps_view_num_ranges(v);
  PyObject *ranges = PyTuple_New((Py_ssize_t)n);
  if (ranges == NULL) return NULL;
  for (size_t i = 0; i < n; i++) {
    uint64_t b = 0, e = 0;
    uint32_t server = 0;
    (void)ps_view_range(v, i, &b, &e, &server);
    PyObject *r = Py_BuildValue("(KKI)", (unsigned long long)b,
                                (unsigned long long)e, (unsigned)server);
    if (r == NULL) {
      Py_DECREF(ranges);
      return NULL;
    }
    PyTuple_SET_ITEM(ranges, (Py_ssize_t)i, r);
  }
  return Py_BuildValue("(KIN)", (unsigned long long)ps_view_epoch(v),
                       (unsigned)ps_view_live_workers(v), ranges);
}

static PyObject *Client_start_clock(ClientObject *self, PyObject *noargs) {
  if (!client_usable(self)) return NULL;
  return PyLong_FromUnsignedLongLong(ps_client_start_clock(self->c));
}

static PyObject *Client_shutting_down(ClientObject *self, PyObject *noargs) {
  if (!client_usable(self)) return NULL;
  return PyBool_FromLong(ps_client_shutting_down(self->c));
}

#define U32_GETTER(field, fn)                                        \
  static PyObject *Client_get_##field(ClientObject *self, void *x) { \
    if (!client_usable(self)) return NULL;                           \
    return PyLong_FromUnsignedLong(fn(self->c));                     \
  }
U32_GETTER(rank, ps_client_rank)
U32_GETTER(num_workers, ps_client_num_workers)
U32_GETTER(node_id, ps_client_node_id)

static PyObject *Client_get_duplicate_acks(ClientObject *self, void *x) {
  if (!client_usable(self)) return NULL;
  return PyLong_FromUnsignedLongLong(ps_client_duplicate_acks(self->c));
}

static PyObject *Client_get_closed(ClientObject *self, void *x) {
  return PyBool_FromLong(self->c == NULL);
}

static PyObject *Client_get_total(ClientObject *self, void *x) {
  return PyLong_FromUnsignedLongLong(self->model.total);
}

/* tensors -> ((name, offset, length), ...); tables -> ((name, dim), ...) */
static PyObject *Client_get_tensors(ClientObject *self, void *x) {
  PyObject *t = PyTuple_New((Py_ssize_t)self->model.ntensors);
  for (size_t i = 0; t && i < self->model.ntensors; i++) {
    const ps_tensor_spec_t *s = &self->model.tensors[i];
    PyObject *r = Py_BuildValue("(sKK)", s->name, (unsigned long long)s->offset,
                                (unsigned long long)s->length);
    if (r == NULL) {
      Py_CLEAR(t);
      break;
    }
    PyTuple_SET_ITEM(t, (Py_ssize_t)i, r);
  }
  return t;
}

static PyObject *Client_get_tables(ClientObject *self, void *x) {
  PyObject *t = PyTuple_New((Py_ssize_t)self->model.nsparse);
  for (size_t i = 0; t && i < self->model.nsparse; i++) {
    PyObject *r = Py_BuildValue("(sI)", self->model.sparse[i].name,
                                (unsigned)self->model.sparse[i].dim);
    if (r == NULL) {
      Py_CLEAR(t);
      break;
    }
    PyTuple_SET_ITEM(t, (Py_ssize_t)i, r);
  }
  return t;
}

static PyMethodDef Client_methods[] = {
    {"push", (PyCFunction)Client_push, METH_VARARGS,
     "push(where, values, clock): blocking push of a float32 buffer"},
    {"pull", (PyCFunction)Client_pull, METH_VARARGS,
     "pull(where, out, clock): blocking pull into a float32 buffer"},
    {"push_start", (PyCFunction)Client_push_start, METH_VARARGS,
     "push_start(where, values, clock) -> Call"},
    {"pull_start", (PyCFunction)Client_pull_start, METH_VARARGS,
     "pull_start(where, out, clock) -> Call"},
    {"wait", (PyCFunction)Client_wait, METH_O, "wait(call)"},
    {"sparse_push", (PyCFunction)Client_sparse_push, METH_VARARGS,
     "sparse_push(table, ids, values, clock)"},
    {"sparse_pull", (PyCFunction)Client_sparse_pull, METH_VARARGS,
     "sparse_pull(table, ids, out)"},
    {"barrier", (PyCFunction)Client_barrier, METH_VARARGS, "barrier(name)"},
    {"done", (PyCFunction)Client_done, METH_NOARGS, "done()"},
    {"leave", (PyCFunction)Client_leave, METH_VARARGS, "leave(reason='')"},
    {"set_metrics_address", (PyCFunction)Client_set_metrics_address,
     METH_VARARGS, "set_metrics_address(address or None)"},
    {"view", (PyCFunction)Client_view, METH_NOARGS,
     "view() -> (epoch, live_workers, ((begin, end, server), ...))"},
    {"start_clock", (PyCFunction)Client_start_clock, METH_NOARGS,
     "start_clock()"},
    {"shutting_down", (PyCFunction)Client_shutting_down, METH_NOARGS,
     "shutting_down()"},
    {"close", (PyCFunction)Client_close, METH_NOARGS,
     "close(): Done if not sent, then disconnect"},
    {NULL, NULL, 0, NULL}};

static PyGetSetDef Client_getset[] = {
    {"rank", (getter)Client_get_rank, NULL, "worker rank", NULL},
    {"num_workers", (getter)Client_get_num_workers, NULL, "workers", NULL},
    {"node_id", (getter)Client_get_node_id, NULL, "node id", NULL},
    {"duplicate_acks", (getter)Client_get_duplicate_acks, NULL,
     "pushes acked as duplicates", NULL},
    {"closed", (getter)Client_get_closed, NULL, "closed", NULL},
    {"total", (getter)Client_get_total, NULL, "dense keys", NULL},
    {"tensors", (getter)Client_get_tensors, NULL,
     "((name, offset, length), ...)", NULL},
    {"tables", (getter)Client_get_tables, NULL, "((name, dim), ...)", NULL},
    {NULL, NULL, NULL, NULL, NULL}};

static PyTypeObject ClientType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "ps._client.Client",
    .tp_basicsize = sizeof(ClientObject),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_BASETYPE,
    .tp_doc = "Client(scheduler, model, **options): a libps-client worker",
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)Client_init,
    .tp_dealloc = (destructor)Client_dealloc,
    .tp_methods = Client_methods,
    .tp_getset = Client_getset,
};

static void Call_dealloc(CallObject *self) {
  /* Only reached once the call is finished or its client closed: pending
   * calls are referenced by their client. */
  if (self->has_buf) PyBuffer_Release(&self->buf);
  PyObject_Free(self);
}

static PyObject *Call_wait(CallObject *self, PyObject *noargs) {
  return call_wait(self);
}

static PyObject *Call_get_pending(CallObject *self, void *x) {
  return PyBool_FromLong(self->client != NULL);
}

static PyMethodDef Call_methods[] = {
    {"wait", (PyCFunction)Call_wait, METH_NOARGS,
     "wait(): until every piece is answered; raises ps.Error on failure"},
    {NULL, NULL, 0, NULL}};

static PyGetSetDef Call_getset[] = {
    {"pending", (getter)Call_get_pending, NULL, "not waited for yet", NULL},
    {NULL, NULL, NULL, NULL, NULL}};

static PyTypeObject CallType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "ps._client.Call",
    .tp_basicsize = sizeof(CallObject),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "A started push or pull; wait() for it once",
    .tp_dealloc = (destructor)Call_dealloc,
    .tp_methods = Call_methods,
    .tp_getset = Call_getset,
};

static PyObject *mod_strerror(PyObject *m, PyObject *arg) {
  long code = PyLong_AsLong(arg);
  if (code == -1 && PyErr_Occurred()) return NULL;
  return PyUnicode_FromString(ps_strerror((int)code));
}

static PyObject *mod_err_name(PyObject *m, PyObject *arg) {
  long code = PyLong_AsLong(arg);
  if (code == -1 && PyErr_Occurred()) return NULL;
  return PyUnicode_FromString(ps_err_name((int)code));
}

static PyMethodDef module_methods[] = {
    {"strerror", mod_strerror, METH_O, "strerror(code) -> description"},
    {"err_name", mod_err_name, METH_O, "err_name(code) -> 'ERR_TIMEOUT'"},
    {NULL, NULL, 0, NULL}};

static struct PyModuleDef module_def = {
    PyModuleDef_HEAD_INIT,
    "ps._client",
    "libps-client for Python (see the ps package)",
    -1,
    module_methods,
    NULL,
    NULL,
    NULL,
    NULL};

PyMODINIT_FUNC PyInit__client(void) {
  if (PyType_Ready(&ClientType) < 0 || PyType_Ready(&CallType) < 0) return NULL;
  PyObject *m = PyModule_Create(&module_def);
  if (m == NULL) return NULL;
  ps_error_type = PyErr_NewExceptionWithDoc(
      "ps.Error",
      "A libps-client failure: .code (PS_ERR_*, negative), .name "
      "('ERR_TIMEOUT'), .message (the library's text).",
      NULL, NULL);
  if (ps_error_type == NULL ||
      PyModule_AddObjectRef(m, "Error", ps_error_type) < 0 ||
      PyModule_AddObjectRef(m, "Client", (PyObject *)&ClientType) < 0 ||
      PyModule_AddObjectRef(m, "Call", (PyObject *)&CallType) < 0)
    goto fail;
  /* Every status code as ERR_* (and OK), from the library's own list. */
  for (int code = 0; code > -64; code--) {
    const char *name = ps_err_name(code);
    /* ps_err_name answers "ERR_UNKNOWN" past the end of the list. */
    if (code != 0 && strcmp(name, "ERR_UNKNOWN") == 0) break;
    if (PyModule_AddIntConstant(m, name, code) < 0) goto fail;
  }
  if (PyModule_AddIntConstant(m, "INIT_ZERO", PS_INIT_ZERO) < 0 ||
      PyModule_AddIntConstant(m, "INIT_UNIFORM", PS_INIT_UNIFORM) < 0 ||
      PyModule_AddIntConstant(m, "OPTIMIZER_SGD", PS_OPTIMIZER_SGD) < 0 ||
      PyModule_AddIntConstant(m, "OPTIMIZER_ADD", PS_OPTIMIZER_ADD) < 0 ||
      PyModule_AddIntConstant(m, "OPTIMIZER_ADAGRAD", PS_OPTIMIZER_ADAGRAD) <
          0 ||
      PyModule_AddIntConstant(m, "OPTIMIZER_ADAM", PS_OPTIMIZER_ADAM) < 0 ||
      PyModule_AddIntConstant(m, "OPTIMIZER_FTRL", PS_OPTIMIZER_FTRL) < 0 ||
      PyModule_AddIntConstant(m, "LR_CONSTANT", PS_LR_SCHEDULE_CONSTANT) < 0 ||
      PyModule_AddIntConstant(m, "LR_COSINE", PS_LR_SCHEDULE_COSINE) < 0 ||
      PyModule_AddIntConstant(m, "MAX_PENDING", PS_CLIENT_MAX_PENDING) < 0 ||
      PyModule_AddIntConstant(m, "SPARSE_DIM_MAX", PS_SPARSE_DIM_MAX) < 0)
    goto fail;
  return m;
fail:
  Py_DECREF(m);
  return NULL;
}
