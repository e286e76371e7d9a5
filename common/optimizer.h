/* Optimizer kernels applied by the server on push (and by --standalone).
 *
 * All kernels take the gradient sum of n contributions and a scale (1/n for
 * BSP averaging, 1 for ASP) so that averaging costs no extra pass. They are
 * built for several instruction sets (AVX-512, AVX2, baseline) and the
 * widest one the CPU has is chosen on first use; every build gives the same
 * bits. Pure functions of their arguments; any thread, as long as the
 * arrays are not shared.
 */
#ifndef PS_OPTIMIZER_H
#define PS_OPTIMIZER_H

#include <stddef.h>
#include <stdint.h>

#include "ps/model.h"

/* SGD with momentum (PyTorch's form):
 *   v = momentum * v + scale * g;  w -= lr * v
 * With momentum == 0, v may be NULL and is not touched: w -= lr * scale * g. */
void ps_apply_sgd(float *restrict w, float *restrict v, const float *restrict g,
                  size_t n, float lr, float momentum, float scale);

/* The same update written out of place: w_out = w - lr * v' (v updated in
 * place as above), reading w and writing w_out. Costs the same memory
 * traffic as the in-place form, so a server whose weights are still being
 * sent by ZeroMQ (zero-copy pull replies) writes the new version into a
 * fresh buffer instead of copying the old one first. w_out and w must not
 * overlap. */
void ps_apply_sgd_to(float *restrict w_out, const float *restrict w,
                     float *restrict v, const float *restrict g, size_t n,
                     float lr, float momentum, float scale);

/* ---- Optimizers with state (issue #14) ------------------------------
 *
 * Each optimizer keeps k floats of state per weight (ps_optimizer_state_slots):
 *   SGD, momentum 0, and ADD   k = 0
 *   SGD with momentum          k = 1   v (velocity)
 *   Adagrad                    k = 1   h (sum of squared gradients)
 *   Adam                       k = 2   m, v (moments)
 *   FTRL-proximal              k = 2   z, n
 * Slot j of weight i lives at state[j * stride + i], so a dense range keeps
 * its state as k planes of its length and a sparse row as k * dim floats
 * after its dim weights (stride dim).
 *
 * With g_i = scale * g[i] (the mean of the contributions), f the schedule's
 * factor (ps_lr_factor) and lr = learning_rate * f:
 *   SGD        v = momentum v + scale (f g); w -= learning_rate v
 *              (the factor goes on the gradient, first, as the workers
 *              applied it before issue #14, so the bits are the same;
 *              Sutskever's form: with u = learning_rate v this is SGD with
 *              momentum at rate lr. A BSP server puts f on each
 *              contribution as it arrives, ps_accumulate_scaled, and
 *              applies the step with f = 1)
 *   Adagrad    h += g_i^2; w -= lr g_i / (sqrt(h) + epsilon)
 *   Adam       m = beta1 m + (1 - beta1) g_i; v = beta2 v + (1 - beta2) g_i^2;
 *              w -= lr (m c1) / (sqrt(v c2) + epsilon), c1 = 1 / (1 - beta1^t),
 *              c2 = 1 / (1 - beta2^t), t the update's number from 1
 *   FTRL       n' = n + g_i^2; z += g_i - (sqrt(n') - sqrt(n)) / lr * w;
 *              n = n'; w = 0 if |z| <= l1, else
 *              -(z - sign(z) l1) / ((ftrl_beta + sqrt(n)) / lr + l2)
 *              (McMahan et al. 2013; lr is alpha; L1 gives exact zeros)
 *   ADD        w += g (exact; f and scale are not applied)
 */

/* The most state floats any optimizer keeps per weight. */
#define PS_OPTIMIZER_SLOTS_MAX 2

/* Floats of state per weight for o (0, 1 or 2). */
int ps_optimizer_state_slots(const ps_optimizer_spec_t *o);

/* The most slots any dense tensor of m needs: every dense range of the
 * model keeps that many planes, so ranges cut anywhere hold the same
 * layout (a checkpoint restores onto any split). */
int ps_model_state_slots(const ps_model_t *m);

/* The model's default optimizer (its optimizer, learning_rate, ... fields). */
void ps_model_default_optimizer(const ps_model_t *m, ps_optimizer_spec_t *out);
/* Tensor i's optimizer: its own or the default. */
void ps_model_tensor_optimizer(const ps_model_t *m, size_t i,
                               ps_optimizer_spec_t *out);
/* The table's optimizer: its own or the model's default. */
void ps_model_sparse_optimizer(const ps_model_t *m, const ps_sparse_spec_t *t,
                               ps_optimizer_spec_t *out);

/* PS_OK, or PS_ERR_INVAL with err naming what (e.g. "tensor \"fc1\"") and
 * the setting out of range; settings the kind does not use must be 0. */
int ps_optimizer_check(const ps_optimizer_spec_t *o, const char *what,
                       char *err, size_t errlen);
int ps_optimizer_equal(const ps_optimizer_spec_t *a,
                       const ps_optimizer_spec_t *b);
/* "sgd", "adagrad", "adam", "ftrl", "add", or NULL; and back (-1). */
const char *ps_optimizer_name(int kind);
int ps_optimizer_kind(const char *name);

/* PS_OK, or PS_ERR_INVAL: unknown kind, warm-up longer than a cosine's
 * total. */
int ps_lr_schedule_check(const ps_lr_schedule_spec_t *s, char *err,
                         size_t errlen);
/* Sets s->total_steps from the horizon in epochs (ps/model.h) for a job of
 * workers workers; nothing when s gives total_steps itself. PS_ERR_INVAL
 * (err says why) when that horizon has no step or a cosine's total does
 * not exceed its warm-up. */
int ps_lr_schedule_resolve(ps_lr_schedule_spec_t *s, uint32_t workers,
                           char *err, size_t errlen);
int ps_lr_schedule_equal(const ps_lr_schedule_spec_t *a,
                         const ps_lr_schedule_spec_t *b);

/* The factor f(step) on the learning rate (ps/model.h). */
float ps_lr_factor(const ps_lr_schedule_spec_t *s, uint64_t step);

/* Applies one update of o to n weights: reads w, writes w_out (which may
 * be w itself, or must not overlap it), updates state (slots at stride,
 * see above; NULL when o has no slots). g is the sum of the contributions,
 * scale the factor that makes it their mean, lr_factor the schedule's
 * f(t), t the update's number counted from 1 (Adam's bias correction;
 * ignored by the others). */
void ps_optimizer_apply(const ps_optimizer_spec_t *o, float *w_out,
                        const float *w, float *state, size_t stride,
                        const float *g, size_t n, float scale, float lr_factor,
                        uint64_t t);

/* Floats of one sparse row of dim weights under o: dim, k * dim of
 * state, and for Adam two more holding the row's update count (a uint64,
 * bytes as in memory). Every row of a table has this width. */
size_t ps_optimizer_row_floats(const ps_optimizer_spec_t *o, uint32_t dim);

/* One update of a sparse row laid out as ps_optimizer_row_floats says:
 * counts the row's update (Adam) and applies ps_optimizer_apply to it. */
void ps_optimizer_apply_row(const ps_optimizer_spec_t *o, float *row,
                            uint32_t dim, const float *g, float scale,
                            float lr_factor);

/* dst += src, for summing BSP contributions as they arrive. */
void ps_accumulate(float *restrict dst, const float *restrict src, size_t n);

/* dst += factor * src and dst = factor * src: the same for contributions
 * that carry the schedule's factor on their gradient (SGD). */
void ps_accumulate_scaled(float *restrict dst, const float *restrict src,
                          size_t n, float factor);
void ps_copy_scaled(float *restrict dst, const float *restrict src, size_t n,
                    float factor);

/* The instruction set the kernels run with: "avx512f", "avx2" or
 * "baseline". */
const char *ps_optimizer_isa(void);

/* Tests only: makes every later call run the named variant ("baseline",
 * "avx2", "avx512f"), to compare their bits. Returns 0, changing nothing,
 * when this build or CPU lacks it. */
int ps__optimizer_force_isa(const char *name);

/* 1 when none of v[0..n) is NaN or an infinity. One pass, vectorized: the
 * check every push pays before it may touch the weights. */
int ps_floats_finite(const float *v, size_t n);

#endif
