#include "common/beat.h"

#include <pthread.h>
#include <sodium.h>
#include <string.h>

#include "common/err.h"
#include "common/le.h"

#define BEAT_TAG_BYTES 16
#define BEAT_SIGNED_BYTES (PS_BEAT_BYTES - BEAT_TAG_BYTES)

static const uint8_t beat_magic[4] = {'P', 'S', 'B', '1'};

static pthread_once_t sodium_once = PTHREAD_ONCE_INIT;
static int sodium_ok;

static void sodium_start(void) {
  sodium_ok = sodium_init() >= 0;
}

static void beat_tag(const uint8_t *buf, const uint8_t key[PS_BEAT_KEY_BYTES],
                     uint8_t tag[BEAT_TAG_BYTES]) {
  crypto_generichash(tag, BEAT_TAG_BYTES, buf, BEAT_SIGNED_BYTES, key,
                     PS_BEAT_KEY_BYTES);
}

int ps_beat_key_new(uint8_t key[PS_BEAT_KEY_BYTES]) {
  pthread_once(&sodium_once, sodium_start);
  if (!sodium_ok) return PS_ERR_IO;
  randombytes_buf(key, PS_BEAT_KEY_BYTES);
  return PS_OK;
}

void ps_beat_pack(const ps_beat_t *b, const uint8_t key[PS_BEAT_KEY_BYTES],
                  uint8_t out[PS_BEAT_BYTES]) {
  memset(out, 0, PS_BEAT_BYTES);
  memcpy(out, beat_magic, sizeof(beat_magic));
  out[4] = (uint8_t)b->type;
  ps_le_put_u32(out + 8, b->node_id);
  ps_le_put_u64(out + 16, b->seq);
  ps_le_put_u64(out + 24, b->epoch);
  ps_le_put_u64(out + 32, b->clock);
  beat_tag(out, key, out + BEAT_SIGNED_BYTES);
}

int ps_beat_peek(const uint8_t *buf, size_t len, int *type, uint32_t *node_id) {
  static const uint8_t zero[4];
  if (len != PS_BEAT_BYTES || memcmp(buf, beat_magic, 4) != 0 ||
      (buf[4] != PS_BEAT_BEAT && buf[4] != PS_BEAT_ACK) ||
      memcmp(buf + 5, zero, 3) != 0 || memcmp(buf + 12, zero, 4) != 0)
    return PS_ERR_INVAL;
  *type = buf[4];
  *node_id = ps_le_get_u32(buf + 8);
  return PS_OK;
}

int ps_beat_open(const uint8_t *buf, size_t len,
                 const uint8_t key[PS_BEAT_KEY_BYTES], ps_beat_t *b) {
  int type;
  uint32_t node_id;
  if (ps_beat_peek(buf, len, &type, &node_id) != PS_OK) return PS_ERR_INVAL;
  uint8_t tag[BEAT_TAG_BYTES];
  beat_tag(buf, key, tag);
  if (sodium_memcmp(tag, buf + BEAT_SIGNED_BYTES, BEAT_TAG_BYTES) != 0)
    return PS_ERR_PERMISSION_DENIED;
  b->type = type;
  b->node_id = node_id;
  b->seq = ps_le_get_u64(buf + 16);
  b->epoch = ps_le_get_u64(buf + 24);
  b->clock = ps_le_get_u64(buf + 32);
  return PS_OK;
}
