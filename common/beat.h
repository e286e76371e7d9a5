/* Heartbeats over UDP (issue #16, ps-scheduler --heartbeat-udp).
 *
 * A thousand members heartbeating at 10 Hz on their ZeroMQ links cost the
 * scheduler's libzmq I/O thread a wakeup, a recv and a TCP ack per
 * heartbeat. With this option on, a member that registered sends its
 * heartbeats as datagrams to the scheduler's UDP port instead, and the
 * scheduler reads them in batches (recvmmsg) and acks each member by a
 * datagram every PS_MEMBER_ACK_EVERY_MS. Everything else (registration,
 * views, errors, fencing) stays on the membership link.
 *
 * A datagram is PS_BEAT_BYTES, little-endian:
 *
 *   0  magic "PSB1"       4 bytes
 *   4  type               1 byte: PS_BEAT_BEAT (member to scheduler) or
 *                         PS_BEAT_ACK (scheduler to member)
 *   5  reserved           3 bytes, zero
 *   8  node_id            4 bytes
 *  12  reserved           4 bytes, zero
 *  16  seq                8 bytes: the member's heartbeat number, from 1,
 *                         growing; an ack echoes the beat's
 *  24  epoch              8 bytes: the member's view epoch (an ack: the
 *                         scheduler's)
 *  32  clock              8 bytes: the member's clock (an ack: as the
 *                         scheduler holds it)
 *  40  tag                16 bytes: keyed BLAKE2b of bytes 0-39 (libsodium
 *                         crypto_generichash), with the node's key
 *
 * The key (PS_BEAT_KEY_BYTES, random per node) comes in the node's
 * RegisterReply, over the membership link: under CURVE nobody else learns
 * it; in plaintext (--insecure) it keeps off-path senders out only. A beat
 * whose seq is not above the last one taken from that node is a replay and
 * is dropped; so is an ack whose seq is not above the last ack taken.
 */
#ifndef PS_COMMON_BEAT_H
#define PS_COMMON_BEAT_H

#include <stddef.h>
#include <stdint.h>

#define PS_BEAT_BYTES 56
#define PS_BEAT_KEY_BYTES 32

enum { PS_BEAT_BEAT = 1, PS_BEAT_ACK = 2 };

typedef struct {
  int type; /* PS_BEAT_BEAT or PS_BEAT_ACK */
  uint32_t node_id;
  uint64_t seq;
  uint64_t epoch;
  uint64_t clock;
} ps_beat_t;

/* A new random key; PS_OK or PS_ERR_IO (libsodium would not start). */
int ps_beat_key_new(uint8_t key[PS_BEAT_KEY_BYTES]);

/* Packs and signs b into out. */
void ps_beat_pack(const ps_beat_t *b, const uint8_t key[PS_BEAT_KEY_BYTES],
                  uint8_t out[PS_BEAT_BYTES]);

/* The type and node id of a datagram, read before its key is known:
 * PS_OK, or PS_ERR_INVAL when it is not a beat datagram at all (size,
 * magic, type, reserved bytes). Nothing in it is authentic yet. */
int ps_beat_peek(const uint8_t *buf, size_t len, int *type, uint32_t *node_id);

/* Checks a datagram's tag with key and unpacks it into b: PS_OK, PS_ERR_INVAL
 * (not a beat datagram) or PS_ERR_PERMISSION_DENIED (the tag is wrong). */
int ps_beat_open(const uint8_t *buf, size_t len,
                 const uint8_t key[PS_BEAT_KEY_BYTES], ps_beat_t *b);

#endif
