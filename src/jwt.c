/* The client assertion of certificate credentials: a JWT signed with PS256,
 * carrying the certificate's SHA-256 thumbprint (x5t#S256), as the Microsoft
 * identity platform describes.  Pure C over libcrypto: it calls no Lua, and
 * frees everything it takes before returning. */
#include <stdio.h>
#include <string.h>

#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/pkcs12.h>
#include <openssl/rsa.h>
#include <openssl/x509.h>

#include "vpp.h"

#define ASSERTION_LIFETIME 600 /* seconds */

static int b64url(vpp_buf *out, const unsigned char *in, size_t n) {
  static const char abc[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
  size_t i;
  char q[4];
  for (i = 0; i + 2 < n; i += 3) {
    q[0] = abc[in[i] >> 2];
    q[1] = abc[((in[i] & 3) << 4) | (in[i + 1] >> 4)];
    q[2] = abc[((in[i + 1] & 15) << 2) | (in[i + 2] >> 6)];
    q[3] = abc[in[i + 2] & 63];
    if (!vpp_buf_append(out, q, 4)) return 0;
  }
  if (n - i == 1) {
    q[0] = abc[in[i] >> 2];
    q[1] = abc[(in[i] & 3) << 4];
    return vpp_buf_append(out, q, 2);
  }
  if (n - i == 2) {
    q[0] = abc[in[i] >> 2];
    q[1] = abc[((in[i] & 3) << 4) | (in[i + 1] >> 4)];
    q[2] = abc[(in[i + 1] & 15) << 2];
    return vpp_buf_append(out, q, 3);
  }
  return 1;
}

/* Standard base64 with padding: x5c's certificates (RFC 7515 4.1.6). */
static int b64std(vpp_buf *out, const unsigned char *in, size_t n) {
  static const char abc[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
  size_t i;
  char q[4];
  for (i = 0; i < n; i += 3) {
    unsigned v = (unsigned)in[i] << 16 | (i + 1 < n ? (unsigned)in[i + 1] << 8 : 0) | (i + 2 < n ? in[i + 2] : 0);
    q[0] = abc[v >> 18 & 63];
    q[1] = abc[v >> 12 & 63];
    q[2] = (char)(i + 1 < n ? abc[v >> 6 & 63] : '=');
    q[3] = (char)(i + 2 < n ? abc[v & 63] : '=');
    if (!vpp_buf_append(out, q, 4)) return 0;
  }
  return 1;
}

/* Appends s as a JSON string. */
static int json_string(vpp_buf *out, const char *s) {
  char esc[8];
  if (!vpp_buf_append(out, "\"", 1)) return 0;
  for (; *s; s++) {
    unsigned char ch = (unsigned char)*s;
    if (ch == '"' || ch == '\\') {
      esc[0] = '\\';
      esc[1] = (char)ch;
      if (!vpp_buf_append(out, esc, 2)) return 0;
    } else if (ch < 0x20) {
      snprintf(esc, sizeof esc, "\\u%04x", ch);
      if (!vpp_buf_append(out, esc, 6)) return 0;
    } else if (!vpp_buf_append(out, (const char *)&ch, 1)) {
      return 0;
    }
  }
  return vpp_buf_append(out, "\"", 1);
}

static int append_str(vpp_buf *out, const char *s) { return vpp_buf_append(out, s, strlen(s)); }

typedef struct password_cb {
  const char *password;
  int asked;
} password_cb;

/* Never prompts on a terminal: no password given means none. */
static int give_password(char *buf, int size, int rwflag, void *u) {
  password_cb *p = u;
  size_t n;
  (void)rwflag;
  p->asked = 1;
  if (!p->password) return 0;
  n = strlen(p->password);
  if (n > (size_t)size) return 0;
  memcpy(buf, p->password, n);
  return (int)n;
}

static void fail(vpp_jwt_error *e, const char *code, const char *message) {
  e->code = code;
  snprintf(e->message, sizeof e->message, "%s", message);
}

/* The certificate, its key and (with chain) the other certificates of a
 * PEM file (certificate, key, then any CA certificates, or the key in
 * key_path) or of a PKCS#12 (PFX) file, as the Azure portal and most PKI
 * hand them out.  1, or 0 with e filled. */
static int load(const vpp_jwt_params *p, X509 **cert, EVP_PKEY **key, STACK_OF(X509) * *chain, vpp_jwt_error *e) {
  BIO *bio = NULL;
  PKCS12 *p12 = NULL;
  password_cb pw;
  char first[16];
  int ok = 0;
  pw.password = p->key_password;
  pw.asked = 0;
  if (!(bio = BIO_new_file(p->cert_path, "rb")) || BIO_read(bio, first, (int)sizeof first) <= 0 || BIO_reset(bio) < 0) {
    fail(e, VPP_CODE(certificate_unreadable), "cannot read the client_certificate file");
    goto done;
  }
  /* DER (a PKCS#12 file) starts with a SEQUENCE; PEM with text. */
  if ((unsigned char)first[0] == 0x30) {
    if (p->key_path) {
      fail(e, VPP_CODE(key_invalid), "a PKCS#12 (PFX) client_certificate holds its key: no client_key goes with it");
      goto done;
    }
    if (!(p12 = d2i_PKCS12_bio(bio, NULL))) {
      fail(e, VPP_CODE(certificate_invalid), "the client_certificate file is neither PEM nor PKCS#12 (PFX)");
      goto done;
    }
    /* No password given: the empty one, as files exported without one use. */
    if (!PKCS12_parse(p12, p->key_password ? p->key_password : "", key, cert, chain) &&
        (p->key_password || !PKCS12_parse(p12, NULL, key, cert, chain))) {
      fail(e, VPP_CODE(key_password),
           "the PKCS#12 (PFX) file could not be opened: wrong or missing client_key_password");
      goto done;
    }
    if (!*cert || !*key) {
      fail(e, VPP_CODE(certificate_invalid), "the PKCS#12 (PFX) file holds no certificate with its private key");
      goto done;
    }
    ok = 1;
    goto done;
  }
  if (!(*cert = PEM_read_bio_X509(bio, NULL, give_password, &pw))) {
    fail(e, VPP_CODE(certificate_invalid), "no PEM certificate in the client_certificate file");
    goto done;
  }
  if (p->send_chain) {
    X509 *more;
    if (!(*chain = sk_X509_new_null())) {
      fail(e, VPP_CODE(out_of_memory), "not enough memory for the certificate chain");
      goto done;
    }
    while ((more = PEM_read_bio_X509(bio, NULL, give_password, &pw)))
      if (!sk_X509_push(*chain, more)) {
        X509_free(more);
        fail(e, VPP_CODE(out_of_memory), "not enough memory for the certificate chain");
        goto done;
      }
    ERR_clear_error(); /* the end of the file */
  }
  if (p->key_path) {
    BIO_free(bio);
    if (!(bio = BIO_new_file(p->key_path, "r"))) {
      fail(e, VPP_CODE(key_unreadable), "cannot read the client_key file");
      goto done;
    }
  } else if (BIO_reset(bio) < 0) {
    fail(e, VPP_CODE(key_unreadable), "cannot read the client_certificate file again");
    goto done;
  }
  pw.asked = 0;
  if (!(*key = PEM_read_bio_PrivateKey(bio, NULL, give_password, &pw))) {
    if (pw.asked)
      fail(e, VPP_CODE(key_password), "the private key could not be decrypted: wrong or missing client_key_password");
    else
      fail(e, VPP_CODE(key_invalid), "no PEM private key in the certificate or key file");
    goto done;
  }
  ok = 1;
done:
  PKCS12_free(p12);
  BIO_free(bio);
  return ok;
}

/* ,"x5c":[the certificate, then the chain], each standard base64 DER. */
static int add_x5c(vpp_buf *out, X509 *cert, STACK_OF(X509) * chain) {
  int i, n = chain ? sk_X509_num(chain) : 0;
  if (!append_str(out, ",\"x5c\":[")) return 0;
  for (i = -1; i < n; i++) {
    X509 *x = i < 0 ? cert : sk_X509_value(chain, i);
    unsigned char *der = NULL;
    int len = i2d_X509(x, &der), ok;
    if (len <= 0) return 0;
    ok = (i < 0 || append_str(out, ",")) && append_str(out, "\"") && b64std(out, der, (size_t)len) &&
         append_str(out, "\"");
    OPENSSL_free(der);
    if (!ok) return 0;
  }
  return append_str(out, "]");
}

/* Builds the signed assertion into out (which the caller wipes and frees).
 * Returns 1, or 0 with e filled. */
int vpp_jwt_assertion(const vpp_jwt_params *p, vpp_buf *out, vpp_jwt_error *e) {
  X509 *cert = NULL;
  EVP_PKEY *key = NULL;
  STACK_OF(X509) *chain = NULL;
  EVP_MD_CTX *md = NULL;
  EVP_PKEY_CTX *pctx = NULL;
  unsigned char thumb[EVP_MAX_MD_SIZE], *sig = NULL;
  unsigned int thumb_len = 0;
  size_t sig_len = 0, signed_len;
  vpp_buf header = {0}, claims = {0};
  char numbers[96];
  int ok = 0;

  if (!load(p, &cert, &key, &chain, e)) goto done;
  if (X509_check_private_key(cert, key) != 1) {
    fail(e, VPP_CODE(key_mismatch), "the private key does not match the certificate");
    goto done;
  }
  if (EVP_PKEY_base_id(key) != EVP_PKEY_RSA) {
    fail(e, VPP_CODE(unsupported_key), "PS256 needs an RSA key");
    goto done;
  }
  if (!X509_digest(cert, EVP_sha256(), thumb, &thumb_len)) {
    fail(e, VPP_CODE(certificate_invalid), "cannot compute the certificate thumbprint");
    goto done;
  }

  fail(e, VPP_CODE(out_of_memory), "not enough memory for the client assertion");
  if (!append_str(&header, "{\"alg\":\"PS256\",\"typ\":\"JWT\",\"x5t#S256\":\"") ||
      !b64url(&header, thumb, thumb_len) || !append_str(&header, "\"") ||
      (p->send_chain && !add_x5c(&header, cert, chain)) || !append_str(&header, "}"))
    goto done;
  snprintf(numbers, sizeof numbers, ",\"nbf\":%ld,\"iat\":%ld,\"exp\":%ld}", (long)p->now, (long)p->now,
           (long)p->now + ASSERTION_LIFETIME);
  if (!append_str(&claims, "{\"aud\":") || !json_string(&claims, p->audience) || !append_str(&claims, ",\"iss\":") ||
      !json_string(&claims, p->client_id) || !append_str(&claims, ",\"sub\":") || !json_string(&claims, p->client_id) ||
      !append_str(&claims, ",\"jti\":") || !json_string(&claims, p->jti) || !append_str(&claims, numbers))
    goto done;
  if (!b64url(out, (const unsigned char *)header.data, header.len) || !vpp_buf_append(out, ".", 1) ||
      !b64url(out, (const unsigned char *)claims.data, claims.len))
    goto done;
  signed_len = out->len;

  fail(e, VPP_CODE(signing_failed), "cannot sign the client assertion");
  if (!(md = EVP_MD_CTX_new()) || EVP_DigestSignInit(md, &pctx, EVP_sha256(), NULL, key) != 1 ||
      EVP_PKEY_CTX_set_rsa_padding(pctx, RSA_PKCS1_PSS_PADDING) != 1 ||
      EVP_PKEY_CTX_set_rsa_pss_saltlen(pctx, RSA_PSS_SALTLEN_DIGEST) != 1 ||
      EVP_DigestSign(md, NULL, &sig_len, (const unsigned char *)out->data, signed_len) != 1 ||
      !(sig = OPENSSL_malloc(sig_len)) ||
      EVP_DigestSign(md, sig, &sig_len, (const unsigned char *)out->data, signed_len) != 1)
    goto done;
  if (!vpp_buf_append(out, ".", 1) || !b64url(out, sig, sig_len)) {
    fail(e, VPP_CODE(out_of_memory), "not enough memory for the client assertion");
    goto done;
  }
  ok = 1;
done:
  OPENSSL_free(sig);
  EVP_MD_CTX_free(md);
  EVP_PKEY_free(key);
  X509_free(cert);
  sk_X509_pop_free(chain, X509_free);
  vpp_buf_free(&header);
  vpp_buf_free(&claims);
  ERR_clear_error();
  return ok;
}
