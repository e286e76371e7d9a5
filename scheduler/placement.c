#include "scheduler/placement.h"

#include <stdlib.h>
#include <string.h>

uint32_t ps_place_copies(uint32_t replication, size_t nservers) {
  uint32_t c = replication;
  if (c > PS_MAX_REPLICAS) c = PS_MAX_REPLICAS;
  if ((size_t)c > nservers) c = (uint32_t)nservers;
  return c ? c : 1;
}

void ps_place_first(ps_range_t *ranges, size_t nranges, const uint32_t *servers,
                    size_t nservers, uint32_t replication) {
  uint32_t copies = ps_place_copies(replication, nservers);
  for (size_t i = 0; i < nranges; i++) {
    ps_range_t *r = &ranges[i];
    r->server_id = servers[i % nservers];
    r->nbackups = 0;
    r->syncing_mask = 0;
    memset(r->backups, 0, sizeof(r->backups));
    for (uint32_t k = 1; k < copies; k++)
      r->backups[r->nbackups++] = servers[(i + k) % nservers];
  }
}

static const ps_place_server_t *find_server(const ps_place_server_t *servers,
                                            size_t n, uint32_t id) {
  for (size_t i = 0; i < n; i++)
    if (servers[i].id == id) return &servers[i];
  return NULL;
}

static int is_alive(const ps_place_server_t *servers, size_t n, uint32_t id) {
  const ps_place_server_t *s = find_server(servers, n, id);
  return s != NULL && s->alive;
}

/* Removes backups[k], keeping the others' order and syncing bits. */
static void remove_backup(ps_range_t *r, uint32_t k) {
  uint32_t low = r->syncing_mask & ((1u << k) - 1u);
  uint32_t high = (r->syncing_mask >> (k + 1)) << k;
  for (uint32_t j = k; j + 1 < r->nbackups; j++)
    r->backups[j] = r->backups[j + 1];
  r->nbackups--;
  r->backups[r->nbackups] = 0;
  r->syncing_mask = low | high;
}

static int in_chain(const ps_range_t *r, uint32_t id) {
  return r->server_id == id || ps_range_has_backup(r, id);
}

/* Alive and taking new roles (not leaving). */
static int is_usable(const ps_place_server_t *servers, size_t n, uint32_t id) {
  const ps_place_server_t *s = find_server(servers, n, id);
  return s != NULL && s->alive && !s->leaving;
}

/* Pass 1 for one range. Returns 1 if it changed. */
static int promote(ps_range_t *r, const ps_place_server_t *servers,
                   size_t nservers) {
  if (is_alive(servers, nservers, r->server_id)) return 0;
  /* A leaving backup only when no other synced one is left: better a
   * server on its way out than no copy at all. */
  for (int pass = 0; pass < 2; pass++) {
    for (uint32_t k = 0; k < r->nbackups; k++) {
      if ((r->syncing_mask >> k) & 1u) continue;
      if (pass == 0 ? !is_usable(servers, nservers, r->backups[k])
                    : !is_alive(servers, nservers, r->backups[k]))
        continue;
      r->server_id = r->backups[k];
      remove_backup(r, k);
      /* The others were in step with the old primary, not with this one's
       * forwarding stream: the new primary sends each a snapshot. */
      r->syncing_mask = r->nbackups ? (1u << r->nbackups) - 1u : 0;
      return 1;
    }
  }
  return 0;
}

/* Pass 2 for one range. Returns 1 if it changed. */
static int drop_dead_backups(ps_range_t *r, const ps_place_server_t *servers,
                             size_t nservers) {
  int changed = 0;
  for (uint32_t k = 0; k < r->nbackups;) {
    if (is_alive(servers, nservers, r->backups[k])) {
      k++;
      continue;
    }
    remove_backup(r, k);
    changed = 1;
  }
  return changed;
}

/* How many replicas (primary or backup) each alive server holds in ranges
 * whose primary is alive; held[i] is servers[i]'s. */
static void count_held(const ps_range_t *ranges, size_t nranges,
                       const ps_place_server_t *servers, size_t nservers,
                       uint32_t *held) {
  for (size_t i = 0; i < nservers; i++) {
    held[i] = 0;
    if (!servers[i].alive) continue;
    for (size_t j = 0; j < nranges; j++)
      if (in_chain(&ranges[j], servers[i].id)) held[i]++;
  }
}

/* Pass 3 for one range: the alive server outside its chain with the fewest
 * replicas, ties broken by ring order after the primary. -1 if none. */
static long pick_backup(const ps_range_t *r, const ps_place_server_t *servers,
                        size_t nservers, const uint32_t *held) {
  size_t ppos = 0;
  for (size_t i = 0; i < nservers; i++)
    if (servers[i].id == r->server_id) ppos = i;
  long best = -1;
  for (size_t step = 1; step <= nservers; step++) {
    size_t i = (ppos + step) % nservers;
    if (!servers[i].alive || servers[i].leaving || in_chain(r, servers[i].id))
      continue;
    if (best < 0 || held[i] < held[best]) best = (long)i;
  }
  return best;
}

int ps_place_handover(ps_range_t *r, uint32_t to) {
  for (uint32_t k = 0; k < r->nbackups; k++) {
    if (r->backups[k] != to) continue;
    if ((r->syncing_mask >> k) & 1u) return 0;
    r->backups[k] = r->server_id;
    r->server_id = to;
    return 1;
  }
  return 0;
}

uint32_t ps_place_primaries(const ps_range_t *ranges, size_t nranges,
                            uint32_t id) {
  uint32_t n = 0;
  for (size_t j = 0; j < nranges; j++) n += ranges[j].server_id == id;
  return n;
}

int ps_place_next_move(const ps_range_t *ranges, size_t nranges,
                       const ps_place_server_t *servers, size_t nservers,
                       int rebalance, size_t *range, uint32_t *to) {
  int found = 0;
  uint32_t best_gap = 0;
  for (int pass = 0; pass < 2 && !found; pass++) {
    if (pass == 1 && !rebalance) break;
    for (size_t j = 0; j < nranges; j++) {
      const ps_range_t *r = &ranges[j];
      const ps_place_server_t *p = find_server(servers, nservers, r->server_id);
      if (p == NULL || !p->alive || r->syncing_mask != 0) continue;
      if (pass == 0 && !p->leaving) continue;
      uint32_t from_n = ps_place_primaries(ranges, nranges, p->id);
      for (uint32_t k = 0; k < r->nbackups; k++) {
        uint32_t b = r->backups[k];
        if (!is_usable(servers, nservers, b)) continue;
        uint32_t to_n = ps_place_primaries(ranges, nranges, b);
        /* Draining: any usable backup, the least loaded. Rebalancing: only
         * a move that narrows the gap. */
        uint32_t gap = from_n > to_n ? from_n - to_n : 0;
        if (pass == 0) gap = UINT32_MAX - to_n;
        else if (gap < 2) continue;
        if (!found || gap > best_gap) {
          found = 1;
          best_gap = gap;
          *range = j;
          *to = b;
        }
      }
    }
  }
  return found;
}

uint32_t ps_place_held(const ps_range_t *ranges, size_t nranges, uint32_t id) {
  uint32_t n = 0;
  for (size_t j = 0; j < nranges; j++) n += in_chain(&ranges[j], id);
  return n;
}

/* What one planning step looks up again and again, counted once: by
 * server id (1 to maxid), the server and the copies it holds. */
typedef struct {
  uint32_t maxid;
  const ps_place_server_t **srv; /* NULL: not a server the caller named */
  uint32_t *held;
} census_t;

static int census_take(census_t *c, const ps_range_t *ranges, size_t nranges,
                       const ps_place_server_t *servers, size_t nservers) {
  c->maxid = 0;
  for (size_t i = 0; i < nservers; i++)
    if (servers[i].id > c->maxid) c->maxid = servers[i].id;
  c->srv = calloc((size_t)c->maxid + 1, sizeof(*c->srv));
  c->held = calloc((size_t)c->maxid + 1, sizeof(*c->held));
  if (c->srv == NULL || c->held == NULL) return 0;
  for (size_t i = 0; i < nservers; i++) c->srv[servers[i].id] = &servers[i];
  for (size_t j = 0; j < nranges; j++) {
    const ps_range_t *r = &ranges[j];
    if (r->server_id <= c->maxid) c->held[r->server_id]++;
    for (uint32_t k = 0; k < r->nbackups; k++)
      if (r->backups[k] <= c->maxid) c->held[r->backups[k]]++;
  }
  return 1;
}

static void census_free(census_t *c) {
  free(c->srv);
  free(c->held);
}

static const ps_place_server_t *census_srv(const census_t *c, uint32_t id) {
  return id <= c->maxid ? c->srv[id] : NULL;
}

static uint32_t census_held(const census_t *c, uint32_t id) {
  return id <= c->maxid ? c->held[id] : 0;
}

static int is_leaving(const census_t *c, uint32_t id) {
  const ps_place_server_t *s = census_srv(c, id);
  return s != NULL && s->alive && s->leaving;
}

static int census_usable(const census_t *c, uint32_t id) {
  const ps_place_server_t *s = census_srv(c, id);
  return s != NULL && s->alive && !s->leaving;
}

/* A range a step may touch: its primary alive, no backup syncing. */
static int settled(const ps_range_t *r, const census_t *c) {
  const ps_place_server_t *p = census_srv(c, r->server_id);
  return r->syncing_mask == 0 && p != NULL && p->alive;
}

/* Step 1 for range j, which has a copy too many. */
static int shed_copy(const ps_range_t *ranges, size_t j, const census_t *c,
                     ps_place_step_t *step) {
  const ps_range_t *r = &ranges[j];
  for (uint32_t k = 0; k < r->nbackups; k++)
    if (is_leaving(c, r->backups[k])) {
      *step = (ps_place_step_t){PS_PLACE_STEP_DROP, j, r->backups[k]};
      return 1;
    }
  /* The copy on the server that holds the most; a backup's before the
   * primary's on a tie (no move needed), the later backup first. */
  uint32_t drop = r->server_id;
  uint32_t most = is_leaving(c, drop) ? UINT32_MAX : census_held(c, drop);
  for (uint32_t k = 0; k < r->nbackups; k++) {
    uint32_t h = census_held(c, r->backups[k]);
    if (most != UINT32_MAX && h >= most) {
      most = h;
      drop = r->backups[k];
    }
  }
  if (drop != r->server_id) {
    *step = (ps_place_step_t){PS_PLACE_STEP_DROP, j, drop};
    return 1;
  }
  /* The primary's: it hands the range to the usable backup that holds the
   * fewest first. */
  uint32_t to = 0, fewest = UINT32_MAX;
  for (uint32_t k = 0; k < r->nbackups; k++) {
    uint32_t b = r->backups[k];
    if (!census_usable(c, b)) continue;
    uint32_t h = census_held(c, b);
    if (h < fewest) fewest = h, to = b;
  }
  if (to == 0) return 0;
  *step = (ps_place_step_t){PS_PLACE_STEP_MOVE, j, to};
  return 1;
}

/* The usable server outside r's chain that holds the fewest copies, active
 * ones first; 0 if none. */
static uint32_t pick_target(const ps_range_t *r,
                            const ps_place_server_t *servers, size_t nservers,
                            const census_t *c) {
  uint32_t best = 0, best_held = 0;
  int best_active = 0;
  for (size_t i = 0; i < nservers; i++) {
    const ps_place_server_t *s = &servers[i];
    if (!s->alive || s->leaving || in_chain(r, s->id)) continue;
    uint32_t h = census_held(c, s->id);
    int better = best == 0 || (s->active && !best_active) ||
                 (s->active == best_active && h < best_held);
    if (better) best = s->id, best_held = h, best_active = s->active;
  }
  return best;
}

/* ps_place_next_step over a census of the servers. */
static int next_step(const ps_range_t *ranges, size_t nranges,
                     const ps_place_server_t *servers, size_t nservers,
                     uint32_t need, const census_t *c, ps_place_step_t *step) {
  /* 1. A copy too many goes. */
  for (size_t j = 0; j < nranges; j++) {
    const ps_range_t *r = &ranges[j];
    if (!settled(r, c) || r->nbackups + 1 <= need) continue;
    if (shed_copy(ranges, j, c, step)) return 1;
  }
  /* 2. A copy on a leaving server gets its replacement. */
  for (size_t j = 0; j < nranges; j++) {
    const ps_range_t *r = &ranges[j];
    if (!settled(r, c) || r->nbackups + 1 >= PS_MAX_REPLICAS) continue;
    int leaving = is_leaving(c, r->server_id);
    for (uint32_t k = 0; k < r->nbackups && !leaving; k++)
      leaving = is_leaving(c, r->backups[k]);
    if (!leaving) continue;
    uint32_t to = pick_target(r, servers, nservers, c);
    if (to == 0) continue;
    *step = (ps_place_step_t){PS_PLACE_STEP_ADD, j, to};
    return 1;
  }
  /* 3. Even out the copies between active servers. */
  uint32_t most_id = 0, most = 0, fewest_id = 0, fewest = UINT32_MAX;
  for (size_t i = 0; i < nservers; i++) {
    const ps_place_server_t *s = &servers[i];
    if (!s->alive || s->leaving || !s->active) continue;
    uint32_t h = census_held(c, s->id);
    if (most_id == 0 || h > most) most = h, most_id = s->id;
    if (fewest_id == 0 || h < fewest) fewest = h, fewest_id = s->id;
  }
  if (most_id == 0 || most < fewest + 2) return 0;
  long pick = -1;
  for (size_t j = 0; j < nranges; j++) {
    const ps_range_t *r = &ranges[j];
    if (!settled(r, c) || r->nbackups + 1 > need ||
        r->nbackups + 1 >= PS_MAX_REPLICAS || !in_chain(r, most_id) ||
        in_chain(r, fewest_id))
      continue;
    if (pick < 0 || ranges[pick].server_id == most_id) pick = (long)j;
    if (r->server_id != most_id) break;
  }
  if (pick < 0) return 0;
  *step = (ps_place_step_t){PS_PLACE_STEP_ADD, (size_t)pick, fewest_id};
  return 1;
}

int ps_place_next_step(const ps_range_t *ranges, size_t nranges,
                       const ps_place_server_t *servers, size_t nservers,
                       uint32_t replication, ps_place_step_t *step) {
  *step = (ps_place_step_t){PS_PLACE_STEP_NONE, 0, 0};
  size_t usable = 0;
  for (size_t i = 0; i < nservers; i++)
    usable += servers[i].alive && !servers[i].leaving;
  if (usable == 0) return 0;
  uint32_t need = ps_place_copies(replication, usable);
  /* Out of memory: no step now; the scheduler's next tick asks again. */
  census_t c;
  int found = census_take(&c, ranges, nranges, servers, nservers) &&
              next_step(ranges, nranges, servers, nservers, need, &c, step);
  census_free(&c);
  return found;
}

int ps_place_apply(ps_range_t *r, const ps_place_step_t *step) {
  if (step->kind == PS_PLACE_STEP_ADD) {
    if (in_chain(r, step->server) || r->nbackups + 1 >= PS_MAX_REPLICAS)
      return 0;
    r->syncing_mask |= 1u << r->nbackups;
    r->backups[r->nbackups++] = step->server;
    return 1;
  }
  if (step->kind == PS_PLACE_STEP_DROP) {
    for (uint32_t k = 0; k < r->nbackups; k++)
      if (r->backups[k] == step->server) {
        remove_backup(r, k);
        return 1;
      }
  }
  return 0;
}

size_t ps_place_repair(ps_range_t *ranges, size_t nranges,
                       const ps_place_server_t *servers, size_t nservers,
                       uint32_t replication) {
  size_t alive = 0;
  for (size_t i = 0; i < nservers; i++)
    if (servers[i].alive) alive++;
  uint32_t copies = ps_place_copies(replication, alive);
  /* Bounded by the scheduler's limits (4096 servers, one range each). */
  unsigned char dirty[nranges + 1];
  uint32_t held[nservers + 1];
  for (size_t j = 0; j < nranges; j++) {
    dirty[j] = (unsigned char)promote(&ranges[j], servers, nservers);
    dirty[j] |= (unsigned char)drop_dead_backups(&ranges[j], servers, nservers);
  }
  /* Counted after every promotion, so a range's new backup is chosen
   * knowing what the others' promotions left where. */
  count_held(ranges, nranges, servers, nservers, held);
  for (size_t j = 0; j < nranges && alive > 0; j++) {
    ps_range_t *r = &ranges[j];
    if (!is_alive(servers, nservers, r->server_id)) continue;
    while (r->nbackups + 1 < copies) {
      long i = pick_backup(r, servers, nservers, held);
      if (i < 0) break;
      r->syncing_mask |= 1u << r->nbackups;
      r->backups[r->nbackups++] = servers[i].id;
      held[i]++;
      dirty[j] = 1;
    }
  }
  size_t changed = 0;
  for (size_t j = 0; j < nranges; j++) changed += dirty[j];
  return changed;
}

int ps_place_synced(ps_range_t *r, uint32_t id) {
  for (uint32_t k = 0; k < r->nbackups; k++) {
    if (r->backups[k] != id) continue;
    if (!((r->syncing_mask >> k) & 1u)) return 0;
    r->syncing_mask &= ~(1u << k);
    return 1;
  }
  return 0;
}

uint32_t ps_place_nsyncing(const ps_range_t *r) {
  uint32_t n = 0;
  for (uint32_t k = 0; k < r->nbackups; k++) n += (r->syncing_mask >> k) & 1u;
  return n;
}

ps_place_state_t ps_place_state(int primary_alive, uint32_t nbackups,
                                uint32_t nsyncing, uint32_t replication) {
  if (!primary_alive) return PS_PLACE_UNAVAILABLE;
  if (nsyncing > 0) return PS_PLACE_SYNCING;
  if (nbackups + 1 < replication) return PS_PLACE_DEGRADED;
  return PS_PLACE_OK;
}

const char *ps_place_state_name(ps_place_state_t st) {
  switch (st) {
    case PS_PLACE_OK:
      return "ok";
    case PS_PLACE_SYNCING:
      return "syncing";
    case PS_PLACE_DEGRADED:
      return "degraded";
    case PS_PLACE_UNAVAILABLE:
      return "unavailable";
  }
  return "unknown";
}
