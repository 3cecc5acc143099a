// The part of a token-endpoint log line that describes the provider's answer, shared by the
// refresh (refresh/attempt.cpp) and the code exchange (reauth/flows.cpp) so both lines carry
// the same fields. Never a token: only status, OAuth error, sanitized description, transport
// error, whether the connection was reused and the outcome.
#pragma once
#include "core/refresh_policy.hpp"
#include "oauth/http_client.hpp"
#include "observability/log.hpp"

namespace tokend::oauth {

inline log::record& answer_fields(log::record& r, const http_result& reply,
                                  const policy::classification& cls) {
  return r.num("http_status", reply.status)
      .str("oauth_error", cls.oauth_error)
      .str("error_description", cls.description)
      .str("transport_error", reply.error)
      .flag("connection_reused", reply.reused)
      .str("outcome", policy::outcome_name(cls.kind));
}

}  // namespace tokend::oauth
