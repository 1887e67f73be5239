/* Every err.code that lua-vpp itself produces, with its one-line meaning:
 * vpp.codes and the README's table come from this list, and C code names
 * a code as VPP_CODE(name), which does not compile for a name not listed.
 * libcurl's codes (curl_codes.h) keep libcurl's spelling; codes that Graph
 * or the identity platform send are passed on as they come. */
#ifndef VPP_CODES_H
#define VPP_CODES_H

/* clang-format off */
#define VPP_OWN_CODES(X) \
  X(out_of_memory, "lua-vpp ran out of memory building a request or keeping its answer") \
  X(no_randomness, "the system's random generator failed (request ids, assertion ids)") \
  X(start_failed, "libcurl would not start the transfer") \
  X(invalid_response, "the answer is not what Graph or the identity platform send: not JSON, or not the expected shape") \
  X(response_too_large, "the answer's body passed max_response_bytes, or a header line passed libcurl's limit") \
  X(too_many_pages, "list_tokens stopped after max_pages pages") \
  X(foreign_next_link, "@odata.nextLink points to another scheme, host or port than base_url") \
  X(next_link_loop, "@odata.nextLink points to a page already fetched") \
  X(redirect_refused, "a redirect to another scheme, host or port was not followed") \
  X(too_many_redirects, "more than 5 redirects within base_url's origin") \
  X(throttled, "Graph asked this client to wait longer than max_retry_delay before more requests; nothing was sent") \
  X(invalid_token, "the access token contains control characters") \
  X(no_token, "the access_token function returned no token") \
  X(certificate_unreadable, "the client_certificate file cannot be read") \
  X(certificate_invalid, "no usable certificate in the client_certificate file (PEM, or PKCS#12 with its key)") \
  X(key_unreadable, "the client_key file cannot be read") \
  X(key_password, "the private key (or PKCS#12 file) could not be decrypted: wrong or missing client_key_password") \
  X(key_invalid, "no PEM private key in the certificate or key file") \
  X(key_mismatch, "the private key does not match the certificate") \
  X(unsupported_key, "the certificate's key is not RSA (PS256 needs one)") \
  X(signing_failed, "libcrypto could not sign the client assertion") \
  X(assertion_unreadable, "workload identity: the federated token file cannot be read, is empty or is over 64 KiB") \
  X(arc_challenge, "managed identity on Azure Arc: the 401 challenge names no key file, or one outside the agent's token directory, not a .key file, over 4 KiB or unreadable") \
  X(sync_timeout, "wait_for_sync: the token was still syncing when opts.timeout ran out") \
  X(cancelled, "client:cancel() ended the call before this item finished") \
  X(deadline, "opts.deadline passed before this item finished") \
  X(raised, "fleet:run: the function raised for this tenant; the message is its error") \
  X(no_credential, "a fleet tenant's credential names an unset environment variable or a file that cannot be read")
/* clang-format on */

enum {
#define VPP_CODE_ENUM(name, meaning) VPP_CODE_##name,
  VPP_OWN_CODES(VPP_CODE_ENUM)
#undef VPP_CODE_ENUM
      VPP_CODE_COUNT
};

#endif
