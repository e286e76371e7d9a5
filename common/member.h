/* Cluster membership, the node side: a node's link to the scheduler.
 *
 * A member registers with the scheduler (role, advertised address, and for
 * workers the model spec), learns its node id, sends a Heartbeat every
 * heartbeat_ms on a uv timer, and hands every View and Shutdown the scheduler
 * sends to the owner's callbacks. Servers run it on their network loop;
 * libps-client runs it on its background thread. If the scheduler goes
 * silent, the member keeps sending heartbeats (the scheduler may come back),
 * logs scheduler_silent (the scheduler, how long) every 5 s or a quarter of
 * the timeout, and reports the silence through the shutdown callback only
 * after scheduler_timeout_ms (0 = wait forever).
 *
 * Loop thread only.
 */
#ifndef PS_MEMBER_H
#define PS_MEMBER_H

#include <stdint.h>
#include <uv.h>

#include "auth.h"
#include "keys.h"
#include "view.h"

typedef struct ps_member_s ps_member_t;

/* The heartbeat period nodes use unless told otherwise: a few times
 * shorter than the scheduler's default timeout (400 ms), so that a dead
 * server fails over in well under a second while one late heartbeat is
 * not a death. */
#define PS_MEMBER_HEARTBEAT_MS 100
/* The scheduler acks a member's heartbeats at most this often (issue #16:
 * an Ack for each of a thousand nodes' ten heartbeats a second was half
 * the scheduler's messages); any message from it counts as hearing it. A
 * member's scheduler_timeout_ms must be well above it: the member warns of
 * silence only past 2x this. */
#define PS_MEMBER_ACK_EVERY_MS 500

typedef struct {
  /* Registered: node_id assigned, rank (workers; otherwise 0), num_workers. */
  void (*registered_cb)(ps_member_t *m, uint32_t node_id, uint32_t rank,
                        uint32_t num_workers, void *arg);
  /* A new view, validated. The callee takes ownership of view. */
  void (*view_cb)(ps_member_t *m, ps_view_t *view, void *arg);
  /* The scheduler ended the job or the cluster (reason from Shutdown), or
   * registration was refused (status < 0, reason from the Error), or the
   * scheduler declared this node dead (PS_ERR_FENCED: the cluster moved on
   * without it, so it must stop serving and exit with a failure), or the
   * scheduler was silent for scheduler_timeout_ms (PS_ERR_PEER). */
  void (*shutdown_cb)(ps_member_t *m, int status, const char *reason,
                      void *arg);
  void *arg;
} ps_member_cbs_t;

typedef struct {
  const char *scheduler;   /* endpoint to connect to */
  int role;                /* PS__ROLE__SERVER or PS__ROLE__WORKER */
  const char *address;     /* advertised data endpoint (servers); may be "" */
  const ps_model_t *model; /* workers: the model they train; else NULL */
  int64_t rank;            /* workers: requested rank, -1 for any */
  int join;                /* servers: Register.join (ps-server --join) */
  int heartbeat_ms;        /* 0: PS_MEMBER_HEARTBEAT_MS */
  int scheduler_timeout_ms; /* 0: never give up (still warns) */
  /* CURVE (common/keys.h): the node's keys, NULL for plaintext; must
   * outlive the member. */
  const ps_keys_t *keys;
  /* Workers (issue #16): grow a running job with a new rank
   * (Register.join_new_rank). */
  int join_new_rank;
} ps_member_opts_t;

/* Starts the link: connects, sends Register, starts the heartbeat timer.
 * Returns NULL with *err set on failure. Caller owns the result. The options'
 * strings and model are copied. */
ps_member_t *ps_member_new(uv_loop_t *loop, void *zmq_ctx,
                           const ps_member_opts_t *opts,
                           const ps_member_cbs_t *cbs, int *err);

/* The node's session token: its connections' routing ids carry it
 * (common/auth.h). Valid as long as m. */
const ps_auth_token_t *ps_member_token(const ps_member_t *m);

/* Sends the node's clock with the next heartbeats. */
void ps_member_set_clock(ps_member_t *m, uint64_t clock);

/* Sends where the node serves its /metrics ("HOST:PORT"; NULL or "": none)
 * with every heartbeat from now on, so that psctl top finds it, also after
 * a scheduler restart. Copied. PS_ERR_INVAL if longer than PS_ADDR_MAX - 1
 * bytes (nothing changes). */
int ps_member_set_metrics_address(ps_member_t *m, const char *address);

/* Sends a heartbeat now if the last one went out heartbeat_ms ago or
 * more. For an owner that keeps its loop busy with long work (a server
 * filling the ranges of a new view): the timer cannot fire meanwhile, and
 * the scheduler would declare the node dead. NULL-safe. */
void ps_member_keepalive(ps_member_t *m);

/* Sends a Done (workers) or a Shutdown (a node leaving on SIGTERM) to the
 * scheduler. Fire and forget: the caller may then destroy the member. */
void ps_member_send_done(ps_member_t *m);
void ps_member_send_leave(ps_member_t *m, const char *reason);

/* Messages from the scheduler the member does not handle itself (a
 * CheckpointRequest, ...) go to cb, with the envelope valid during the call
 * only. Without a cb they are logged and dropped. */
typedef void (*ps_member_message_cb)(ps_member_t *m, const Ps__Envelope *env,
                                     void *arg);
void ps_member_set_message_cb(ps_member_t *m, ps_member_message_cb cb,
                              void *arg);

/* Sends env to the scheduler on the membership link, with the node's id and
 * view epoch filled in. Fire and forget: while the scheduler is down the
 * message waits in ZeroMQ's queue and goes out when it is back. Returns
 * PS_OK or the send failure. */
int ps_member_send(ps_member_t *m, Ps__Envelope *env);

/* 1 once the scheduler acked the last Done or Shutdown sent: the owner may
 * destroy the member without waiting any longer. */
int ps_member_farewell_acked(const ps_member_t *m);

uint32_t ps_member_node_id(const ps_member_t *m);
uint64_t ps_member_epoch(const ps_member_t *m);

/* Stops the timer and closes the socket; memory is freed once the loop has
 * run the close callbacks. Sets *m_p to NULL. */
void ps_member_destroy(ps_member_t **m_p);

#endif
