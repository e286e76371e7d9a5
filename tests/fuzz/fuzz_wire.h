/* What the message harnesses share: a fuzz input read as a sequence of
 * records, and ZeroMQ sockets that turn a message record into a ps_msg_t
 * through the real receive path (ps_msg_recv), in-process over inproc.
 *
 * An input is records, one after another, until its bytes run out:
 *   message:  u8 from (bit 7 clear): the sender, from % FUZZ_SENDERS
 *             u8 nframes (at most FUZZ_MAX_FRAMES are read)
 *             nframes x { u16 little-endian length, that many bytes }
 *   control:  u8 op | 0x80, u16 little-endian arg: what it does is the
 *             harness's (run a check, silence a node, pick limits)
 * A record or frame cut short by the end of the input takes what is left.
 * A message's first frame is its header (a packed ps.Envelope), the others
 * its payload frames. tests/fuzz/gen_corpus.c writes this format.
 *
 * Every sender is a DEALER with its own routing id ("fuzz-0" ...), so a
 * harness's messages arrive with distinct, real routes; with router 0 the
 * receiver is a PAIR and there is one sender. Single thread.
 */
#ifndef PS_FUZZ_WIRE_H
#define PS_FUZZ_WIRE_H

#include <stddef.h>
#include <stdint.h>

#include "common/frame.h"
#include "proto/ps.pb-c.h"

#define FUZZ_SENDERS 8
/* One more than a header and PS_MAX_PAYLOAD_FRAMES, so the decoder's
 * "too many frames" path is reachable. */
#define FUZZ_MAX_FRAMES (PS_MAX_PAYLOAD_FRAMES + 4)

typedef struct {
  const uint8_t *p;
  size_t n;
} fuzz_input_t;

typedef struct {
  int control;  /* 1: a control record (op, arg); 0: a message */
  unsigned op;  /* 0..127 */
  unsigned arg; /* 0..65535 */
  unsigned from;
  int nframes;
  const uint8_t *frame[FUZZ_MAX_FRAMES];
  size_t len[FUZZ_MAX_FRAMES];
} fuzz_record_t;

/* The next record of in into r; 0 when the input is used up. */
int fuzz_next_record(fuzz_input_t *in, fuzz_record_t *r);

typedef struct fuzz_wire_s fuzz_wire_t;

/* A receiver (ROUTER with router, else PAIR) bound to a fresh inproc
 * endpoint and its senders, on a context of its own. Aborts on failure:
 * a harness without its sockets cannot run. With router
 * FUZZ_WIRE_MEMBERS, each sender's routing id is a node's membership link
 * (common/auth.h), with token k + 1 (32 hex digits) for sender k. */
#define FUZZ_WIRE_MEMBERS 2
fuzz_wire_t *fuzz_wire_new(int router);

/* The context the sockets live on, for a harness's other sockets. */
void *fuzz_wire_ctx(fuzz_wire_t *w);

/* Sends r's frames from its sender and receives them with ps_msg_recv
 * (limits: NULL for the defaults). Returns what ps_msg_recv returned;
 * m must be closed (ps_msg_close) in every case. Aborts if the message does
 * not arrive. */
int fuzz_wire_deliver(fuzz_wire_t *w, const fuzz_record_t *r,
                      const ps_frame_limits_t *limits, ps_msg_t *m, char *err,
                      size_t errlen);

/* Packs env as a message's only frame and delivers it from sender from. */
int fuzz_wire_deliver_env(fuzz_wire_t *w, unsigned from, Ps__Envelope *env,
                          ps_msg_t *m, char *err, size_t errlen);

/* Sends m (its header and payload frames, moved) back from sender from and
 * receives it again into out. */
int fuzz_wire_resend(fuzz_wire_t *w, unsigned from, ps_msg_t *m,
                     const ps_frame_limits_t *limits, ps_msg_t *out, char *err,
                     size_t errlen);

/* 1 when nothing is left to read on the receiver. */
int fuzz_wire_idle(fuzz_wire_t *w);

#endif
