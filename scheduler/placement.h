/* Replica placement: which servers hold each key range (ARCHITECTURE
 * "Failure semantics" 1-2).
 *
 * A range has a primary and up to replication - 1 backups in chain order.
 * A backup is "syncing" while the primary's snapshot stream fills it; only
 * a synced backup may be promoted, since only it holds every acknowledged
 * update. The scheduler owns the range array and decides when to call
 * these and what to publish; the functions only compute. Pure functions
 * over plain arrays: any thread.
 */
#ifndef PS_SCHEDULER_PLACEMENT_H
#define PS_SCHEDULER_PLACEMENT_H

#include <stddef.h>
#include <stdint.h>

#include "common/view.h"

/* A server the placement may use: alive ones may be promoted and take new
 * backups; the others are only removed from chains. A leaving one (being
 * drained) is alive but takes nothing new: it is neither promoted nor given
 * a backup, and its primaries move away (ps_place_next_move). */
typedef struct {
  uint32_t id;
  int alive;
  int leaving;
  /* Takes its share of the copies (ps_place_next_step): the servers of the
   * first view, and those added later (psctl add-server, ps-server
   * --join). A spare that is not active only takes backups ranges lack. */
  int active;
} ps_place_server_t;

/* What a range can do, for psctl and the logs. */
typedef enum {
  PS_PLACE_OK = 0,      /* replication copies, all synced */
  PS_PLACE_SYNCING,     /* a backup is being filled */
  PS_PLACE_DEGRADED,    /* fewer copies than configured, none coming */
  PS_PLACE_UNAVAILABLE, /* the primary is dead and no synced copy is left */
} ps_place_state_t;

/* The copies per range that replication allows with nservers servers:
 * replication, at most nservers and PS_MAX_REPLICAS, at least 1. */
uint32_t ps_place_copies(uint32_t replication, size_t nservers);

/* First placement: range i's primary is servers[i % nservers], its backups
 * the next servers in ring order, up to ps_place_copies() copies in all;
 * nobody syncs (every replica starts from the same seed or checkpoint).
 * begin and end of each range are left alone. nservers must be > 0. */
void ps_place_first(ps_range_t *ranges, size_t nranges, const uint32_t *servers,
                    size_t nservers, uint32_t replication);

/* Repairs the placement after servers died or joined, in three passes:
 *  1. a range whose primary is not alive promotes its first alive, synced
 *     backup; its other backups become syncing (the new primary snapshots
 *     to them). Without such a backup the dead primary stays: the range is
 *     unavailable.
 *  2. backups that are not alive leave every chain.
 *  3. every range with an alive primary is topped up to
 *     ps_place_copies(replication, alive servers) copies from alive
 *     servers not in its chain, fewest replicas held first (ties: ring
 *     order after the primary in servers[]); each new backup syncs.
 * servers lists every server a range may name (ids of absent ones count as
 * not alive). Returns how many ranges changed. */
size_t ps_place_repair(ps_range_t *ranges, size_t nranges,
                       const ps_place_server_t *servers, size_t nservers,
                       uint32_t replication);

/* A planned move: r's primary hands the range to its synced backup to,
 * and takes to's place among the backups, in step (the primary stopped
 * changing the range and every backup acked every change first, see
 * proto Handover, so all copies are the same). The other backups keep
 * their places and syncing bits. Returns 0 (r unchanged) when to is not a
 * synced backup of r. */
int ps_place_handover(ps_range_t *r, uint32_t to);

/* The next planned move, if any, into *range (an index) and *to:
 *  - first, a range whose alive primary is leaving goes to its synced,
 *    alive, not leaving backup that is the primary of the fewest ranges;
 *  - else, with rebalance set, a range goes from a primary of the most
 *    ranges to a synced backup that is the primary of at least two fewer
 *    (the largest such gap first), so every live server carries its share
 *    after a failover moved primaries onto the survivors.
 * Only ranges whose backups are all synced move. Returns 1 if there is a
 * move. Each move lowers the sum of squared primary counts, so repeated
 * moves end. */
int ps_place_next_move(const ps_range_t *ranges, size_t nranges,
                       const ps_place_server_t *servers, size_t nservers,
                       int rebalance, size_t *range, uint32_t *to);

/* One step of elastic re-sharding (ps_place_next_step). */
typedef enum {
  PS_PLACE_STEP_NONE = 0,
  /* server joins the range's chain as a syncing backup, one copy more than
   * the range needs: the primary's snapshot stream fills it. */
  PS_PLACE_STEP_ADD,
  /* server, a synced backup, leaves the range's chain (it had one copy
   * more than it needs): the server drops its copy. */
  PS_PLACE_STEP_DROP,
  /* the range's primary hands it to server, a synced backup
   * (ps_place_handover, after the primary's HandoverReady), so that the
   * old primary's copy can be dropped next. */
  PS_PLACE_STEP_MOVE,
} ps_place_step_kind_t;

typedef struct {
  ps_place_step_kind_t kind;
  size_t range; /* index into ranges */
  uint32_t server;
} ps_place_step_t;

/* The next step of elastic re-sharding: copies move one at a time, each
 * made before it is broken (a new copy syncs before the old one goes), so
 * a range never has fewer copies than it needs. Ranges whose backups sync
 * are left alone. In order:
 *  1. a range with more copies than it needs drops one: a leaving
 *     server's, else the copy on the server that holds the most; when that
 *     is the primary, it first hands the range to the backup that holds
 *     the fewest (MOVE);
 *  2. a range with a copy on a leaving server gets one more copy (ADD) on
 *     the usable server outside its chain that holds the fewest (active
 *     ones first), so that step 1 then drops the leaving one;
 *  3. between active servers, when the one that holds the most copies
 *     holds at least two more than the one that holds the fewest, a range
 *     of the first that the second lacks gets a copy on the second (a
 *     range where the first is a backup first).
 * Copies are counted per server over every range; a range needs
 * ps_place_copies(replication, usable servers) of them. Every ADD is
 * followed by a DROP (after a MOVE, perhaps) that lowers the sum of squared
 * copy counts, so repeated steps end. Primaries are evened out by
 * ps_place_next_move afterwards. Returns 1 with *step filled, or 0 when
 * there is nothing to do (step->kind NONE). */
int ps_place_next_step(const ps_range_t *ranges, size_t nranges,
                       const ps_place_server_t *servers, size_t nservers,
                       uint32_t replication, ps_place_step_t *step);

/* Applies an ADD or a DROP to r (a MOVE goes through ps_place_handover).
 * Returns 1 if r changed. */
int ps_place_apply(ps_range_t *r, const ps_place_step_t *step);

/* How many copies (primary or backup) server id holds. */
uint32_t ps_place_held(const ps_range_t *ranges, size_t nranges, uint32_t id);

/* How many ranges server id is the primary of. */
uint32_t ps_place_primaries(const ps_range_t *ranges, size_t nranges,
                            uint32_t id);

/* Marks backup id of r synced. Returns 1 if it was syncing, 0 if it is not
 * a backup of r or was already synced. */
int ps_place_synced(ps_range_t *r, uint32_t id);

/* How many of r's backups are syncing. */
uint32_t ps_place_nsyncing(const ps_range_t *r);

/* The state of a range whose primary is (or is not) alive, with nbackups
 * backups of which nsyncing sync, against the configured replication. */
ps_place_state_t ps_place_state(int primary_alive, uint32_t nbackups,
                                uint32_t nsyncing, uint32_t replication);

/* "ok", "syncing", "degraded", "unavailable". */
const char *ps_place_state_name(ps_place_state_t st);

#endif
