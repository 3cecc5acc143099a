#include "http/problem.hpp"

#include <nlohmann/json.hpp>

namespace tokend::http {

response make_problem(errc code, std::string_view detail, std::string_view request_id,
                      const std::optional<std::string>& field, std::optional<int> retry_after) {
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
  if (info.status == 429 || info.status == 503) {
    r.set_header("Retry-After", std::to_string(retry_after.value_or(1)));
  }
  return r;
}

response make_problem(const api_error& e, std::string_view request_id) {
  auto r = make_problem(e.code(), e.detail(), request_id, e.field(), e.retry_after);
  if (!e.extra_json.empty()) {
    auto body = nlohmann::json::parse(r.body);
    auto extra = nlohmann::json::parse(e.extra_json, nullptr, false);
    if (extra.is_object()) {
      for (auto it = extra.begin(); it != extra.end(); ++it) {
        if (!body.contains(it.key())) body[it.key()] = it.value();
      }
    }
    r.body = body.dump();
  }
  return r;
}

}  // namespace tokend::http
