// Input validation for request bodies and parameters. Every failure is an api_error
// `invalid_request` (400) whose `field` names the offending input (JSON pointer or parameter).
#pragma once
#include <nlohmann/json.hpp>
#include <optional>
#include <set>
#include <string>
#include <string_view>
#include <vector>

#include "core/errors.hpp"

namespace tokend {

// ^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}$
bool valid_id(std::string_view id);
// Throws invalid_request naming `field` when `id` is not a valid id.
void require_id(std::string_view id, std::string_view field);

// Parses an integer query parameter; absent -> `fallback`; out of [lo, hi] or not an
// integer -> invalid_request naming `name`.
long long int_param(const std::optional<std::string>& raw, std::string_view name, long long lo,
                    long long hi, long long fallback);

// Reads a JSON object body field by field; unknown fields are rejected by finish().
class body_reader {
 public:
  // Malformed JSON or a non-object -> invalid_request. An empty body is {} when allow_empty.
  static body_reader parse(const std::string& body, bool allow_empty = false);

  bool has(std::string_view name) const;
  std::optional<std::string> string(std::string_view name, std::size_t max_len,
                                    bool required = false, bool allow_empty = false);
  std::optional<long long> integer(std::string_view name, long long lo, long long hi,
                                   bool required = false);
  std::optional<bool> boolean(std::string_view name);
  std::optional<std::vector<std::string>> string_array(std::string_view name, std::size_t max_items,
                                                       std::size_t max_len);
  // A JSON object whose serialization is at most max_bytes.
  std::optional<nlohmann::json> object(std::string_view name, std::size_t max_bytes);
  // Throws invalid_request naming the first field that no accessor read.
  void finish() const;

 private:
  explicit body_reader(nlohmann::json j) : json_(std::move(j)) {}
  const nlohmann::json* get(std::string_view name);
  nlohmann::json json_;
  std::set<std::string, std::less<>> read_;
};

[[noreturn]] void bad_request(std::string detail, std::string field);

}  // namespace tokend
