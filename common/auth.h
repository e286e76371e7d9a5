/* Who sent a message: a node's identity is the connection it registered
 * on, never a field of the message (ARCHITECTURE "Security").
 *
 * Every node (each ps_member: a server, or a libps-client worker) draws a
 * 128-bit session token when it starts and gives every socket it connects
 * a ZeroMQ routing id made of it: "T", the token in hex, and a letter for
 * the socket's use. A ROUTER sees that id on every message of the
 * connection, set once in the ZMTP handshake. The scheduler binds the node
 * id it assigns to the token of the connection that registered; afterwards
 * a message naming that node as its sender must come on a connection with
 * the same token, or it is refused (PS_ERR_PERMISSION_DENIED). Servers learn
 * the tokens of the job's nodes from their views (only views sent to
 * servers carry them) and check pushes, pulls and replication the same
 * way.
 *
 * Without CURVE the token crosses the wire in the clear: it keeps out
 * anyone who cannot read the cluster's traffic (another user of the same
 * host, a host on the network that is not on the path), not an observer.
 * With CURVE every link is encrypted and the token is as secret as the
 * keys.
 */
#ifndef PS_COMMON_AUTH_H
#define PS_COMMON_AUTH_H

#include <stddef.h>
#include <stdint.h>
#include <zmq.h>

#define PS_AUTH_TOKEN_HEX 32
/* "T" + token + use letter. */
#define PS_AUTH_ROUTING_ID_LEN (PS_AUTH_TOKEN_HEX + 2)

/* What a connection is for: the last letter of its routing id. */
#define PS_AUTH_USE_MEMBER 'm'   /* a node's membership link */
#define PS_AUTH_USE_REQUEST 'q'  /* a client's calls to the scheduler */
#define PS_AUTH_USE_DATA 'd'     /* a client's link to a server */
#define PS_AUTH_USE_REPLICA 'r'  /* a primary's link to a backup */

typedef struct {
  char hex[PS_AUTH_TOKEN_HEX + 1];
} ps_auth_token_t;

/* A fresh random token (getrandom). Returns PS_OK or PS_ERR_IO. */
int ps_auth_token_new(ps_auth_token_t *t);

/* Sets sock's routing id to the token's for use, before it connects.
 * Returns PS_OK or PS_ERR_ZMQ with err filled. */
int ps_auth_set_routing_id(void *sock, const ps_auth_token_t *t, char use,
                           char *err, size_t errlen);

/* The token of a routing id (a ROUTER's identity frame), into *t. Returns
 * 1, or 0 when route is not one a node made (psctl's, a stranger's). */
int ps_auth_route_token(const zmq_msg_t *route, ps_auth_token_t *t);

/* 1 when route was made with token hex (PS_AUTH_TOKEN_HEX characters). */
int ps_auth_route_is(const zmq_msg_t *route, const char *hex);

#endif
