/* Credentials, national clouds and the token cache.  A client gets its
 * bearer token from a string, a function, the identity platform (client
 * secret or certificate) or the instance metadata endpoint (managed
 * identity); fetched tokens are kept in C memory, wiped when dropped, and
 * reused until shortly before they expire.  This file describes a token
 * request and reads its answer; the engine sends it. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "vpp.h"

#define CLOUD(X)                                                                  \
  X("global", "https://graph.microsoft.com", "https://login.microsoftonline.com") \
  X("usgov", "https://graph.microsoft.us", "https://login.microsoftonline.us")    \
  X("dod", "https://dod-graph.microsoft.us", "https://login.microsoftonline.us")  \
  X("china", "https://microsoftgraph.chinacloudapi.cn", "https://login.chinacloudapi.cn")

typedef struct cloud {
  const char *name, *graph, *authority;
} cloud;

static const cloud clouds[] = {
#define CLOUD_ENTRY(name, graph, authority) {name, graph, authority},
    CLOUD(CLOUD_ENTRY)
#undef CLOUD_ENTRY
};

#define DEFAULT_IMDS_URL    "http://169.254.169.254/metadata/identity/oauth2/token"
#define DEFAULT_ARC_KEY_DIR "/var/opt/azcmagent/tokens" /* the Arc agent's, on Linux */
#define REFRESH_MARGIN      300.0                       /* seconds before expiry */
#define MAX_ASSERTION_BYTES 65536                       /* a federated token file */
#define MAX_ARC_KEY_BYTES   4096                        /* Azure Identity's limit too */

static const char *const cred_names[] = {"access_token",       "access_token function", "client_secret",
                                         "client_certificate", "managed_identity",      "client_assertion_file"};
static const char *const mi_sources[] = {"imds", "app_service", "arc"};

/* What a failure names as the credential tried: each message starts with it. */
static const char *label(const vpp_auth *a) {
  static const char *const kinds[] = {"access token",       "access_token function", "client secret",
                                      "client certificate", "managed identity",      "workload identity"};
  static const char *const sources[] = {"managed identity (Azure VM instance metadata)",
                                        "managed identity (App Service)", "managed identity (Azure Arc)"};
  return a->kind == VPP_CRED_MANAGED ? sources[a->mi_source] : kinds[a->kind];
}

/* ---- settings ---------------------------------------------------------- */

static const cloud *find_cloud(lua_State *L, const char *name) {
  size_t i;
  for (i = 0; i < sizeof clouds / sizeof clouds[0]; i++)
    if (strcmp(clouds[i].name, name) == 0) return &clouds[i];
  luaL_error(L, "vpp: opts.cloud must be \"global\", \"usgov\", \"dod\" or \"china\"");
  return NULL;
}

/* managed_identity = true, or { client_id, source = "imds" | "app_service" |
 * "arc", endpoint (App Service, Arc: IDENTITY_ENDPOINT), identity_header
 * (App Service: IDENTITY_HEADER, a secret), arc_key_dir }. */
static void read_managed_identity(lua_State *L, int opts, int uv, vpp_auth *a) {
  a->mi_source = VPP_MI_IMDS;
  lua_getfield(L, opts, "managed_identity");
  if (lua_istable(L, -1)) {
    static const char *const keys[] = {"client_id", "source", "endpoint", "identity_header", "arc_key_dir", NULL};
    int mi = lua_gettop(L), i;
    const char *source;
    vpp_check_keys(L, mi, keys, "managed_identity key",
                   " (expected client_id, source, endpoint, identity_header or arc_key_dir)");
    a->client_id = vpp_string_option(L, mi, uv, "client_id", 0);
    lua_getfield(L, mi, "source");
    source = lua_tostring(L, -1);
    if (!lua_isnil(L, -1)) {
      for (i = 0; i < 3 && (!source || strcmp(source, mi_sources[i]) != 0); i++) {
      }
      if (i == 3 || lua_type(L, -1) != LUA_TSTRING)
        luaL_error(L, "vpp: opts.managed_identity.source must be \"imds\", \"app_service\" or \"arc\"");
      a->mi_source = (vpp_mi_source)i;
    }
    lua_pop(L, 1);
    if (a->mi_source != VPP_MI_IMDS) {
      if (!vpp_string_option(L, mi, uv, "endpoint", 1))
        luaL_error(L, "vpp: opts.managed_identity.endpoint is needed for source \"app_service\" or \"arc\""
                      " (IDENTITY_ENDPOINT)");
      a->mi_endpoint = vpp_url_option(L, uv, "endpoint", VPP_URL_METADATA);
    } else if (vpp_option_present(L, mi, "endpoint")) {
      luaL_error(L, "vpp: opts.managed_identity.endpoint goes with source \"app_service\" or \"arc\" (the "
                    "instance metadata endpoint is opts.imds_url)");
    }
    a->mi_header = vpp_string_option(L, mi, uv, "identity_header", 1);
    if ((a->mi_source == VPP_MI_APP_SERVICE) != (a->mi_header != NULL))
      luaL_error(L, "vpp: opts.managed_identity.identity_header goes with source \"app_service\", and it needs one");
    a->arc_key_dir = vpp_string_option(L, mi, uv, "arc_key_dir", 0);
    if (a->arc_key_dir && a->mi_source != VPP_MI_ARC)
      luaL_error(L, "vpp: opts.managed_identity.arc_key_dir goes with source \"arc\"");
    if (!a->arc_key_dir) a->arc_key_dir = DEFAULT_ARC_KEY_DIR;
    if (a->mi_source == VPP_MI_ARC && a->client_id)
      luaL_error(L, "vpp: Azure Arc has only the system-assigned identity: no managed_identity.client_id there");
  } else if (!lua_isboolean(L, -1)) {
    luaL_error(L, "vpp: opts.managed_identity must be true or { client_id = ..., source = ... }");
  }
  lua_pop(L, 1);
  a->imds_url = vpp_string_option(L, opts, uv, "imds_url", 1) ? vpp_url_option(L, uv, "imds_url", VPP_URL_METADATA)
                                                              : DEFAULT_IMDS_URL;
  if (a->mi_source != VPP_MI_IMDS && vpp_option_present(L, opts, "imds_url"))
    luaL_error(L, "vpp: opts.imds_url goes with the instance metadata endpoint (source \"imds\")");
}

/* Reads the credential and cloud settings; picks the default base URL. */
void vpp_auth_read(lua_State *L, int opts, int uv, vpp_auth *a, const char **base_url) {
  const cloud *cl;
  const char *name;
  int n = vpp_option_present(L, opts, "access_token") + vpp_option_present(L, opts, "client_secret") +
          vpp_option_present(L, opts, "client_certificate") + vpp_option_present(L, opts, "managed_identity") +
          vpp_option_present(L, opts, "client_assertion_file");
  memset(a, 0, sizeof *a);
  if (n > 1)
    luaL_error(L, "vpp: choose one credential: access_token, client_secret, client_certificate, "
                  "client_assertion_file or managed_identity");
  name = vpp_string_option(L, opts, uv, "cloud", 0);
  cl = find_cloud(L, name ? name : "global");
  a->cloud = cl->name;
  *base_url = cl->graph;
  a->authority = vpp_string_option(L, opts, uv, "authority", 1)
                     ? vpp_url_option(L, uv, "authority", VPP_URL_HTTPS_DEFAULT)
                     : cl->authority;
  a->scope = vpp_string_option(L, opts, uv, "scope", 0);
  if (!a->scope) {
    lua_pushfstring(L, "%s/.default", cl->graph);
    a->scope = vpp_anchor(L, uv, "scope");
  }
  if (vpp_option_present(L, opts, "client_secret") || vpp_option_present(L, opts, "client_certificate") ||
      vpp_option_present(L, opts, "client_assertion_file")) {
    a->kind = vpp_option_present(L, opts, "client_secret")        ? VPP_CRED_SECRET
              : vpp_option_present(L, opts, "client_certificate") ? VPP_CRED_CERTIFICATE
                                                                  : VPP_CRED_FEDERATED;
    a->tenant_id = vpp_string_option(L, opts, uv, "tenant_id", 0);
    a->client_id = vpp_string_option(L, opts, uv, "client_id", 0);
    if (!a->tenant_id || !a->client_id)
      luaL_error(L, "vpp: opts.%s needs opts.tenant_id and opts.client_id", cred_names[a->kind]);
    a->client_secret = vpp_string_option(L, opts, uv, "client_secret", 0);
    a->cert_path = vpp_string_option(L, opts, uv, "client_certificate", 0);
    a->assertion_path = vpp_string_option(L, opts, uv, "client_assertion_file", 0);
  } else if (vpp_option_present(L, opts, "managed_identity")) {
    a->kind = VPP_CRED_MANAGED;
    read_managed_identity(L, opts, uv, a);
  } else {
    a->kind = VPP_CRED_STATIC;
    if (opts)
      lua_getfield(L, opts, "access_token");
    else
      lua_pushnil(L);
    if (lua_isfunction(L, -1)) {
      a->kind = VPP_CRED_FUNCTION;
    } else if (lua_isnil(L, -1)) {
      const char *env = getenv("GRAPH_ACCESS_TOKEN");
      if (!env || !*env)
        luaL_error(L, "vpp: no credentials: pass access_token, client_secret or client_certificate (with "
                      "tenant_id and client_id) or managed_identity, or set GRAPH_ACCESS_TOKEN");
      lua_pop(L, 1);
      lua_pushstring(L, env);
    } else if (lua_type(L, -1) != LUA_TSTRING || lua_rawlen(L, -1) == 0) {
      luaL_error(L, "vpp: opts.access_token must be a non-empty string or a function");
    }
    lua_setfield(L, uv, "access_token");
    if (a->kind == VPP_CRED_STATIC) {
      lua_getfield(L, uv, "access_token");
      a->fixed_token = lua_tolstring(L, -1, &a->fixed_len);
      lua_pop(L, 1); /* anchored by uv */
    }
  }
  if (a->kind != VPP_CRED_CERTIFICATE &&
      (vpp_option_present(L, opts, "client_key") || vpp_option_present(L, opts, "client_key_password")))
    luaL_error(L, "vpp: opts.client_key and opts.client_key_password go with opts.client_certificate");
  a->key_path = vpp_string_option(L, opts, uv, "client_key", 0);
  a->key_password = vpp_string_option(L, opts, uv, "client_key_password", 0);
  if (vpp_option_present(L, opts, "send_certificate_chain")) {
    lua_getfield(L, opts, "send_certificate_chain");
    if (!lua_isboolean(L, -1)) luaL_error(L, "vpp: opts.send_certificate_chain must be a boolean");
    lua_pop(L, 1);
    if (a->kind != VPP_CRED_CERTIFICATE)
      luaL_error(L, "vpp: opts.send_certificate_chain goes with opts.client_certificate");
    a->send_chain = 1;
  }
  if (a->kind != VPP_CRED_MANAGED && vpp_option_present(L, opts, "imds_url"))
    luaL_error(L, "vpp: opts.imds_url goes with opts.managed_identity");
}

void vpp_auth_push_clouds(lua_State *L) {
  size_t i;
  lua_createtable(L, 0, (int)(sizeof clouds / sizeof clouds[0]));
  for (i = 0; i < sizeof clouds / sizeof clouds[0]; i++) {
    lua_createtable(L, 0, 3);
    lua_pushstring(L, clouds[i].graph);
    lua_setfield(L, -2, "graph");
    lua_pushstring(L, clouds[i].authority);
    lua_setfield(L, -2, "authority");
    lua_pushfstring(L, "%s/.default", clouds[i].graph);
    lua_setfield(L, -2, "scope");
    lua_setfield(L, -2, clouds[i].name);
  }
}

static void set_field(lua_State *L, const char *k, const char *v) {
  if (!v) return;
  lua_pushstring(L, v);
  lua_setfield(L, -2, k);
}

/* client:config(): the effective settings, without any secret. */
void vpp_auth_push_config(lua_State *L, const vpp_auth *a) {
  set_field(L, "cloud", a->cloud);
  set_field(L, "authority", a->authority);
  set_field(L, "scope", a->scope);
  set_field(L, "credential", cred_names[a->kind]);
  set_field(L, "tenant_id", a->tenant_id);
  set_field(L, "client_id", a->client_id);
  if (a->kind == VPP_CRED_MANAGED) {
    set_field(L, "managed_identity_source", mi_sources[a->mi_source]);
    set_field(L, a->mi_source == VPP_MI_IMDS ? "imds_url" : "identity_endpoint",
              a->mi_source == VPP_MI_IMDS ? a->imds_url : a->mi_endpoint);
  }
  if (a->kind == VPP_CRED_FEDERATED) set_field(L, "client_assertion_file", a->assertion_path);
  if (a->send_chain) {
    lua_pushboolean(L, 1);
    lua_setfield(L, -2, "send_certificate_chain");
  }
}

/* ---- the cache --------------------------------------------------------- */

static void wipe_token(vpp_auth *a) {
  if (a->token) {
    vpp_wipe(a->token, a->token_len);
    free(a->token);
  }
  a->token = NULL;
  a->token_len = 0;
  a->refresh_at = 0;
}

static void wipe_arc_secret(vpp_auth *a) {
  if (a->arc_secret) {
    vpp_wipe(a->arc_secret, a->arc_secret_len);
    free(a->arc_secret);
  }
  a->arc_secret = NULL;
  a->arc_secret_len = 0;
}

void vpp_auth_release(vpp_auth *a) {
  wipe_token(a);
  wipe_arc_secret(a);
}

int vpp_auth_refreshable(const vpp_auth *a) { return a->kind != VPP_CRED_STATIC; }

/* After a 401: forget the token, unless it was already replaced. */
void vpp_auth_drop(vpp_auth *a, unsigned generation) {
  if (generation == a->generation) a->refresh_at = 0;
}

/* A token that may still be sent at monotonic time now. */
int vpp_auth_cached(const vpp_auth *a, double now) { return a->token && a->refresh_at != 0 && now < a->refresh_at; }

/* Keeps a copy of the token until refresh_at; 0 when out of memory. */
static int keep(vpp_auth *a, const char *token, size_t len, double lifetime) {
  char *copy = malloc(len + 1);
  if (!copy) return 0;
  memcpy(copy, token, len);
  copy[len] = '\0';
  wipe_token(a);
  a->token = copy;
  a->token_len = len;
  a->generation++;
  /* Refresh 5 minutes early; for short lifetimes, halfway through. */
  if (lifetime <= 0)
    a->refresh_at = 0;
  else
    a->refresh_at = vpp_now() + (lifetime > 2 * REFRESH_MARGIN ? lifetime - REFRESH_MARGIN : lifetime / 2);
  return 1;
}

/* nil, err of kind auth; the message names the credential tried. */
static int auth_error(lua_State *L, const vpp_auth *a, const char *code, const char *message, long status) {
  lua_pushfstring(L, "%s: %s", label(a), message);
  vpp_error_push(L, "auth", status, code, lua_tostring(L, -1), NULL);
  lua_remove(L, -3);
  return 2;
}

/* ---- token requests ---------------------------------------------------- */

static int add_encoded(vpp_buf *b, const char *s) {
  size_t n = strlen(s);
  char *tmp = malloc(3 * n + 1);
  int ok;
  if (!tmp) return 0;
  ok = vpp_buf_append(b, tmp, vpp_url_encode(tmp, s, n));
  free(tmp);
  return ok;
}

void vpp_auth_request_free(vpp_token_request *rq) {
  vpp_buf_free(&rq->url);
  vpp_buf_wipe(&rq->form);
  vpp_buf_wipe(&rq->header[0]);
  vpp_buf_wipe(&rq->header[1]);
}

/* A header line "name: value" (NUL-terminated) into b. */
static int header_line(vpp_buf *b, const char *name, const char *value, size_t len) {
  return vpp_buf_add(b, name) && vpp_buf_add(b, ": ") && vpp_buf_append(b, value, len) && vpp_buf_append(b, "", 1);
}

/* The federated token file's content, trimmed, into out (wiped by the
 * caller): re-read at each fetch, since the platform renews it.  1, or 0
 * with e filled. */
static int read_assertion(const char *path, vpp_buf *out, vpp_jwt_error *e) {
  FILE *f = fopen(path, "rb");
  char chunk[4096];
  size_t n, start = 0;
  if (!f) {
    e->code = VPP_CODE(assertion_unreadable);
    snprintf(e->message, sizeof e->message, "cannot read the federated token file");
    return 0;
  }
  while ((n = fread(chunk, 1, sizeof chunk, f)) > 0) {
    if (out->len + n > MAX_ASSERTION_BYTES || !vpp_buf_append(out, chunk, n)) {
      vpp_wipe(chunk, sizeof chunk);
      fclose(f);
      e->code = VPP_CODE(assertion_unreadable);
      snprintf(e->message, sizeof e->message, "the federated token file is over 64 KiB");
      return 0;
    }
  }
  vpp_wipe(chunk, sizeof chunk);
  fclose(f);
  while (start < out->len &&
         (out->data[start] == ' ' || out->data[start] == '\n' || out->data[start] == '\r' || out->data[start] == '\t'))
    start++;
  while (out->len > start && (out->data[out->len - 1] == ' ' || out->data[out->len - 1] == '\n' ||
                              out->data[out->len - 1] == '\r' || out->data[out->len - 1] == '\t'))
    out->len--;
  if (out->len == start) {
    e->code = VPP_CODE(assertion_unreadable);
    snprintf(e->message, sizeof e->message, "the federated token file is empty");
    return 0;
  }
  if (start) {
    memmove(out->data, out->data + start, out->len - start);
    out->len -= start;
  }
  return 1;
}

/* The token endpoint URL and form, or the IMDS URL: 1, or 0 with e set
 * (and rq freed). */
int vpp_auth_describe(const vpp_auth *a, vpp_token_request *rq, vpp_jwt_error *e) {
  vpp_buf *url = &rq->url, *form = &rq->form;
  int ok;
  memset(rq, 0, sizeof *rq);
  e->code = VPP_CODE(out_of_memory);
  snprintf(e->message, sizeof e->message, "not enough memory for the token request");
  if (a->kind == VPP_CRED_MANAGED) {
    static const char *const versions[] = {"2018-02-01", "2019-08-01", "2020-06-01"};
    const char *base = a->mi_source == VPP_MI_IMDS ? a->imds_url : a->mi_endpoint;
    size_t n = strlen(a->scope);
    char *resource = malloc(n + 1);
    if (!resource) return 0;
    memcpy(resource, a->scope, n + 1);
    if (n > 9 && strcmp(resource + n - 9, "/.default") == 0) resource[n - 9] = '\0';
    ok = vpp_buf_add(url, base) && vpp_buf_add(url, strchr(base, '?') ? "&" : "?") &&
         vpp_buf_add(url, "api-version=") && vpp_buf_add(url, versions[a->mi_source]) &&
         vpp_buf_add(url, "&resource=") && add_encoded(url, resource) &&
         (!a->client_id || (vpp_buf_add(url, "&client_id=") && add_encoded(url, a->client_id))) &&
         vpp_buf_append(url, "", 1);
    free(resource);
    /* App Service proves the caller with IDENTITY_HEADER; IMDS and Arc want
     * Metadata: true, and Arc, after its challenge, the key file's content. */
    if (a->mi_source == VPP_MI_APP_SERVICE)
      ok = ok && header_line(&rq->header[0], "X-IDENTITY-HEADER", a->mi_header, strlen(a->mi_header));
    else
      ok = ok && header_line(&rq->header[0], "Metadata", "true", 4);
    if (a->mi_source == VPP_MI_ARC && a->arc_secret) {
      vpp_buf basic = {0};
      ok = ok && vpp_buf_add(&basic, "Basic ") && vpp_buf_append(&basic, a->arc_secret, a->arc_secret_len) &&
           header_line(&rq->header[1], "Authorization", basic.data, basic.len);
      vpp_buf_wipe(&basic);
    }
    rq->managed = 1;
    if (!ok) vpp_auth_request_free(rq);
    return ok;
  }
  rq->post = 1;
  ok = vpp_buf_add(url, a->authority) && (url->len && url->data[url->len - 1] == '/' ? 1 : vpp_buf_add(url, "/")) &&
       add_encoded(url, a->tenant_id) && vpp_buf_add(url, "/oauth2/v2.0/token") && vpp_buf_append(url, "", 1);
  ok = ok && vpp_buf_add(form, "grant_type=client_credentials&client_id=") && add_encoded(form, a->client_id) &&
       vpp_buf_add(form, "&scope=") && add_encoded(form, a->scope);
  if (ok && a->kind == VPP_CRED_SECRET) {
    ok = vpp_buf_add(form, "&client_secret=") && add_encoded(form, a->client_secret);
  } else if (ok && a->kind == VPP_CRED_FEDERATED) {
    /* The platform's token (Kubernetes, a CI runner) is the assertion. */
    vpp_buf token = {0};
    if (!read_assertion(a->assertion_path, &token, e) || !vpp_buf_append(&token, "", 1)) {
      vpp_buf_wipe(&token);
      vpp_auth_request_free(rq);
      return 0;
    }
    ok = vpp_buf_add(form, "&client_assertion_type=urn%3Aietf%3Aparams%3Aoauth%3Aclient-assertion-type%3Ajwt-bearer"
                           "&client_assertion=") &&
         add_encoded(form, token.data);
    vpp_buf_wipe(&token);
  } else if (ok) {
    vpp_jwt_params p;
    vpp_buf jwt = {0};
    char jti[40];
    if (!vpp_uuid(NULL, jti)) {
      e->code = VPP_CODE(no_randomness);
      snprintf(e->message, sizeof e->message, "no random bytes for the assertion id");
      vpp_auth_request_free(rq);
      return 0;
    }
    p.cert_path = a->cert_path;
    p.key_path = a->key_path;
    p.key_password = a->key_password;
    p.audience = url->data;
    p.client_id = a->client_id;
    p.jti = jti;
    p.now = (long)vpp_epoch();
    p.send_chain = a->send_chain;
    ok = vpp_jwt_assertion(&p, &jwt, e);
    ok = ok &&
         vpp_buf_add(form, "&client_assertion_type=urn%3Aietf%3Aparams%3Aoauth%3Aclient-assertion-type%3Ajwt-bearer"
                           "&client_assertion=") &&
         vpp_buf_append(form, jwt.data, jwt.len);
    vpp_buf_wipe(&jwt);
  }
  if (!ok) vpp_auth_request_free(rq);
  return ok;
}

static double number_field(lua_State *L, int t, const char *k) {
  double v = -1;
  lua_getfield(L, t, k);
  if (lua_type(L, -1) == LUA_TNUMBER || lua_type(L, -1) == LUA_TSTRING) v = lua_tonumber(L, -1);
  lua_pop(L, 1);
  return v; /* IMDS sends expires_in as a string */
}

/* A failed answer of the identity platform: its error, error_description,
 * error_codes, trace_id and correlation_id. */
static int endpoint_error(lua_State *L, const vpp_auth *a, vpp_reply *r, int body) {
  const char *code = NULL, *message = NULL;
  if (body) {
    lua_getfield(L, body, "error");
    code = lua_tostring(L, -1);
    lua_getfield(L, body, "error_description");
    message = lua_tostring(L, -1);
    if (!message) { /* App Service: { error = { code, message } }, body being the inner table */
      lua_getfield(L, body, "message");
      message = lua_tostring(L, -1);
      if (!code) {
        lua_getfield(L, body, "code");
        code = lua_tostring(L, -1);
      }
    }
  }
  if (!message) message = lua_pushfstring(L, "HTTP %d from the token endpoint", (int)r->status);
  auth_error(L, a, code ? code : VPP_CODE(invalid_response), message, r->status);
  if (body) {
    static const char *const copied[][2] = {
        {"error_codes", "aad_codes"}, {"trace_id", "trace_id"}, {"correlation_id", "correlation_id"}};
    size_t i;
    for (i = 0; i < sizeof copied / sizeof copied[0]; i++) {
      lua_getfield(L, body, copied[i][0]);
      lua_setfield(L, -2, copied[i][1]);
    }
  }
  return 2;
}

/* Azure Arc's first answer: 401 and WWW-Authenticate: Basic realm=<the key
 * file>.  Keeps the file's content for the next request: 1; or 0 with nil,
 * err pushed. */
static int take_arc_challenge(lua_State *L, vpp_auth *a, const vpp_reply *r) {
  static const char *const why[] = {"", "the challenge names a key file outside %s",
                                    "the challenge names a file that is not a .key file (in %s)",
                                    "the challenge names a key file larger than 4 KiB (in %s)",
                                    "the challenge names a key file that cannot be read (in %s)"};
  char path[sizeof r->challenge], buf[MAX_ARC_KEY_BYTES];
  const char *realm = NULL;
  size_t len = 0, n;
  int rc;
  if (strncmp(r->challenge, "Basic realm=", 12) == 0) realm = r->challenge + 12;
  if (!realm || !*realm) {
    auth_error(L, a, VPP_CODE(arc_challenge), "the endpoint answered 401 without a Basic realm naming its key file",
               r->status);
    return 0;
  }
  n = strlen(realm);
  if (n >= 2 && realm[0] == '"' && realm[n - 1] == '"') {
    realm++;
    n -= 2;
  }
  memcpy(path, realm, n);
  path[n] = '\0';
  rc = vpp_read_key_file(a->arc_key_dir, path, buf, sizeof buf, &len);
  if (rc != VPP_KEY_OK) {
    lua_pushfstring(L, why[rc], a->arc_key_dir);
    auth_error(L, a, VPP_CODE(arc_challenge), lua_tostring(L, -1), r->status);
    lua_remove(L, -3);
    return 0;
  }
  wipe_arc_secret(a);
  if (!(a->arc_secret = malloc(len ? len : 1))) {
    vpp_wipe(buf, len);
    auth_error(L, a, VPP_CODE(out_of_memory), "not enough memory for the key file", 0);
    return 0;
  }
  memcpy(a->arc_secret, buf, len);
  a->arc_secret_len = len;
  vpp_wipe(buf, len);
  return 1;
}

/* Reads the token request's answer into the cache: 1; 2 when it was Azure
 * Arc's challenge and the request goes again with the key; or 0 with nil,
 * err pushed. */
int vpp_auth_accept(lua_State *L, vpp_auth *a, vpp_reply *r) {
  const char *token;
  size_t len;
  int top = lua_gettop(L), body = 0, answered_challenge = a->arc_secret != NULL;
  double lifetime;
  wipe_arc_secret(a); /* good for one request */
  if (r->curl_code != CURLE_OK) {
    auth_error(L, a, vpp_curl_code_name(r->curl_code),
               r->curl_message[0] ? r->curl_message : curl_easy_strerror(r->curl_code), 0);
    return 0;
  }
  if (a->kind == VPP_CRED_MANAGED && a->mi_source == VPP_MI_ARC && r->status == 401 && !answered_challenge)
    return take_arc_challenge(L, a, r) ? 2 : 0;
  if (vpp_json_decode(L, r->body.data, r->body.len, 0) && lua_istable(L, -1)) body = lua_gettop(L);
  if (r->status != 200 || !body) {
    if (body) { /* App Service nests its error */
      lua_getfield(L, body, "error");
      if (lua_istable(L, -1)) {
        lua_replace(L, body);
      } else {
        lua_pop(L, 1);
      }
    }
    endpoint_error(L, a, r, body);
    lua_insert(L, top + 1);
    lua_insert(L, top + 1);
    lua_settop(L, top + 2);
    return 0;
  }
  lua_getfield(L, body, "access_token");
  token = lua_tolstring(L, -1, &len);
  lifetime = number_field(L, body, "expires_in");
  /* App Service gives only expires_on: seconds since the epoch. */
  if (!(lifetime > 0) && number_field(L, body, "expires_on") > 0)
    lifetime = number_field(L, body, "expires_on") - vpp_epoch();
  if (lua_type(L, -1) != LUA_TSTRING || len == 0 || !(lifetime > 0)) {
    lua_settop(L, top);
    auth_error(L, a, VPP_CODE(invalid_response),
               "the token endpoint answered without access_token and expires_in (or expires_on)", r->status);
    return 0;
  }
  if (!keep(a, token, len, lifetime)) {
    lua_settop(L, top);
    auth_error(L, a, VPP_CODE(out_of_memory), "not enough memory for the token", 0);
    return 0;
  }
  lua_settop(L, top);
  return 1;
}

/* nil, err for a token request that could not be described (e filled). */
int vpp_auth_fail(lua_State *L, const vpp_auth *a, const vpp_jwt_error *e) {
  return auth_error(L, a, e->code, e->message, 0);
}

/* Calls the access_token function (uv.access_token): (token [, expires_at]).
 * 1 with the token cached; or 0 with nil, err pushed. */
/* Keeps what an access_token function returned (token, expiry: the two
 * values on top, popped): 1, or 0 with nil, err pushed. */
int vpp_auth_take_provided(lua_State *L, vpp_auth *a) {
  const char *token;
  size_t len;
  double lifetime = 0;
  token = lua_tolstring(L, -2, &len);
  if (lua_type(L, -2) != LUA_TSTRING || len == 0) {
    lua_pop(L, 2);
    auth_error(L, a, VPP_CODE(no_token), "returned no token", 0);
    return 0;
  }
  if (lua_type(L, -1) == LUA_TNUMBER) {
    lifetime = lua_tonumber(L, -1) - vpp_epoch();
    if (!(lifetime > 0)) lifetime = 0;
  }
  if (!keep(a, token, len, lifetime)) {
    lua_pop(L, 2);
    auth_error(L, a, VPP_CODE(out_of_memory), "not enough memory for the token", 0);
    return 0;
  }
  lua_pop(L, 2);
  return 1;
}
