#include "http/problem.hpp"

#include <nlohmann/json.hpp>

namespace tokend::http {

response make_problem(errc code, std::string_view detail, std::string_view request_id,
                      const std::optional<std::string>& field) {
  const auto info = describe(code);
  nlohmann::json body = {
      {"type", "https://tokend.dev/problems/" + std::string(info.code)},
      {"title", info.title},
      {"status", info.status},
      {"detail", detail.empty() ? info.title : detail},
      {"code", info.code},
      {"request_id", request_id},
  };
  if (field) body["field"] = *field;
  response r;
  r.status = info.status;
  r.content_type = "application/problem+json";
  r.body = body.dump();
  return r;
}

response make_problem(const api_error& e, std::string_view request_id) {
  auto r = make_problem(e.code(), e.detail(), request_id, e.field());
  if (e.retry_after) r.set_header("Retry-After", std::to_string(*e.retry_after));
  return r;
}

}  // namespace tokend::http
