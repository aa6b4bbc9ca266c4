// Thin C shims over the system OpenSSL (libssl-dev, OpenSSL 3.x).
// Only what Swift cannot import (macros, varargs) is wrapped here, each once.
#ifndef SIDECAR_COPENSSL_SHIM_H
#define SIDECAR_COPENSSL_SHIM_H

#include <openssl/ssl.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/x509.h>
#include <openssl/x509v3.h>
#include <openssl/pem.h>
#include <openssl/bio.h>
#include <openssl/ec.h>
#include <string.h>

static inline long sidecar_SSL_set_tlsext_host_name(SSL *ssl, const char *name) {
    return SSL_set_tlsext_host_name(ssl, name);
}
static inline int sidecar_SSL_CTX_set_min_proto_version(SSL_CTX *ctx, int version) {
    return (int)SSL_CTX_set_min_proto_version(ctx, version);
}
static inline int sidecar_SSL_CTX_set_max_proto_version(SSL_CTX *ctx, int version) {
    return (int)SSL_CTX_set_max_proto_version(ctx, version);
}
static inline void sidecar_SSL_CTX_set_options(SSL_CTX *ctx, uint64_t options) {
    SSL_CTX_set_options(ctx, options);
}
static inline uint64_t sidecar_SSL_OP_NO_RENEGOTIATION(void) { return SSL_OP_NO_RENEGOTIATION; }
static inline uint64_t sidecar_SSL_OP_NO_COMPRESSION(void) { return SSL_OP_NO_COMPRESSION; }
static inline uint64_t sidecar_SSL_OP_IGNORE_UNEXPECTED_EOF(void) { return SSL_OP_IGNORE_UNEXPECTED_EOF; }
static inline void sidecar_SSL_CTX_set_mode(SSL_CTX *ctx, long mode) { SSL_CTX_set_mode(ctx, mode); }
static inline long sidecar_SSL_MODE_RELEASE_BUFFERS(void) { return SSL_MODE_RELEASE_BUFFERS; }
static inline long sidecar_SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER(void) { return SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER; }
static inline long sidecar_SSL_MODE_ENABLE_PARTIAL_WRITE(void) { return SSL_MODE_ENABLE_PARTIAL_WRITE; }
static inline void sidecar_SSL_CTX_set_session_cache_mode(SSL_CTX *ctx, long mode) {
    SSL_CTX_set_session_cache_mode(ctx, mode);
}
static inline long sidecar_SSL_SESS_CACHE_CLIENT(void) { return SSL_SESS_CACHE_CLIENT; }
static inline long sidecar_SSL_SESS_CACHE_SERVER(void) { return SSL_SESS_CACHE_SERVER; }
static inline long sidecar_SSL_SESS_CACHE_NO_INTERNAL_STORE(void) { return SSL_SESS_CACHE_NO_INTERNAL_STORE; }
static inline int sidecar_SSL_CTX_set_session_id_context(SSL_CTX *ctx, const char *sid) {
    return SSL_CTX_set_session_id_context(ctx, (const unsigned char *)sid, (unsigned int)strlen(sid));
}

static inline long sidecar_BIO_set_mem_eof_return(BIO *bio, int v) { return BIO_set_mem_eof_return(bio, v); }
static inline size_t sidecar_BIO_pending(BIO *bio) { return BIO_ctrl_pending(bio); }

static inline long sidecar_SSL_CTX_add0_chain_cert(SSL_CTX *ctx, X509 *x) { return SSL_CTX_add0_chain_cert(ctx, x); }

static inline X509 *sidecar_SSL_get_peer_certificate(const SSL *ssl) { return SSL_get1_peer_certificate(ssl); }

// The server side of ALPN: pick "http/1.1" when the client offers it, else no ALPN (the client decides).
static inline int sidecar_alpn_select_http11(SSL *ssl, const unsigned char **out, unsigned char *outlen,
                                             const unsigned char *in, unsigned int inlen, void *arg) {
    (void)ssl; (void)arg;
    static const unsigned char http11[] = { 8, 'h', 't', 't', 'p', '/', '1', '.', '1' };
    unsigned char *selected = NULL;
    unsigned char selectedLen = 0;
    if (SSL_select_next_proto(&selected, &selectedLen, http11, sizeof(http11), in, inlen) == OPENSSL_NPN_NEGOTIATED) {
        *out = selected;
        *outlen = selectedLen;
        return SSL_TLSEXT_ERR_OK;
    }
    return SSL_TLSEXT_ERR_NOACK;
}
static inline void sidecar_SSL_CTX_select_alpn_http11(SSL_CTX *ctx) {
    SSL_CTX_set_alpn_select_cb(ctx, sidecar_alpn_select_http11, NULL);
}

// Key generation for certificates made at run time (tests, `make bench`): EVP_EC_gen is a macro.
static inline EVP_PKEY *sidecar_EVP_EC_gen_P256(void) { return EVP_EC_gen("P-256"); }
static inline int sidecar_X509_set_version3(X509 *x) { return X509_set_version(x, X509_VERSION_3); }
static inline long sidecar_PEM_write_mem_size(BIO *bio, char **data) { return BIO_get_mem_data(bio, data); }

static inline int sidecar_ERR_GET_LIB(unsigned long e) { return ERR_GET_LIB(e); }
static inline int sidecar_ERR_GET_REASON(unsigned long e) { return ERR_GET_REASON(e); }

#endif
