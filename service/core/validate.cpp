#include "core/validate.hpp"

#include <charconv>

namespace tokend {

// "/" + name, appended rather than `"/" + std::string(name)`: g++ 12 at -O3 reports a false
// -Wstringop-overflow on `const char* + std::string&&` (GCC bug 105651).
std::string json_pointer(std::string_view name) {
  std::string p;
  p.reserve(name.size() + 1);
  p += '/';
  p += name;
  return p;
}

void bad_request(std::string detail, std::string field) {
  throw api_error(errc::invalid_request, std::move(detail), std::move(field));
}

bool valid_id(std::string_view id) {
  if (id.empty() || id.size() > 128) return false;
  auto alnum = [](char c) {
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9');
  };
  if (!alnum(id[0])) return false;
  for (char c : id.substr(1)) {
    if (!alnum(c) && c != '.' && c != '_' && c != ':' && c != '-') return false;
  }
  return true;
}

void require_id(std::string_view id, std::string_view field) {
  if (!valid_id(id)) {
    bad_request(std::string(field) + " must match ^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}$",
                std::string(field));
  }
}

long long int_param(const std::optional<std::string>& raw, std::string_view name, long long lo,
                    long long hi, long long fallback) {
  if (!raw) return fallback;
  long long v = 0;
  auto [p, ec] = std::from_chars(raw->data(), raw->data() + raw->size(), v);
  if (raw->empty() || ec != std::errc() || p != raw->data() + raw->size() || v < lo || v > hi) {
    bad_request(std::string(name) + " must be an integer between " + std::to_string(lo) + " and " +
                    std::to_string(hi),
                std::string(name));
  }
  return v;
}

body_reader body_reader::parse(const std::string& body, bool allow_empty) {
  if (body.find_first_not_of(" \t\r\n") == std::string::npos) {
    if (allow_empty) return body_reader(nlohmann::json::object());
    throw api_error(errc::invalid_request, "a JSON object body is required");
  }
  auto j = nlohmann::json::parse(body, nullptr, false);
  if (j.is_discarded()) throw api_error(errc::invalid_request, "the body is not valid JSON");
  if (!j.is_object()) throw api_error(errc::invalid_request, "the body must be a JSON object");
  return body_reader(std::move(j));
}

bool body_reader::has(std::string_view name) const {
  auto it = json_.find(name);
  return it != json_.end() && !it->is_null();
}

const nlohmann::json* body_reader::get(std::string_view name) {
  read_.emplace(name);
  auto it = json_.find(name);
  if (it == json_.end() || it->is_null()) return nullptr;
  return &*it;
}

std::optional<std::string> body_reader::string(std::string_view name, std::size_t max_len,
                                               bool required, bool allow_empty) {
  const auto* v = get(name);
  const std::string ptr = json_pointer(name);
  if (!v) {
    if (required) bad_request(std::string(name) + " is required", ptr);
    return std::nullopt;
  }
  if (!v->is_string()) bad_request(std::string(name) + " must be a string", ptr);
  auto s = v->get<std::string>();
  if (s.empty() && !allow_empty) bad_request(std::string(name) + " must not be empty", ptr);
  if (s.size() > max_len) {
    bad_request(std::string(name) + " must be at most " + std::to_string(max_len) + " bytes", ptr);
  }
  return s;
}

std::optional<long long> body_reader::integer(std::string_view name, long long lo, long long hi,
                                              bool required) {
  const auto* v = get(name);
  const std::string ptr = json_pointer(name);
  if (!v) {
    if (required) bad_request(std::string(name) + " is required", ptr);
    return std::nullopt;
  }
  if (!v->is_number_integer()) bad_request(std::string(name) + " must be an integer", ptr);
  auto n = v->get<long long>();
  if (v->is_number_unsigned() && v->get<unsigned long long>() > 9223372036854775807ULL) n = hi + 1;
  if (n < lo || n > hi) {
    bad_request(
        std::string(name) + " must be between " + std::to_string(lo) + " and " + std::to_string(hi),
        ptr);
  }
  return n;
}

std::optional<bool> body_reader::boolean(std::string_view name) {
  const auto* v = get(name);
  if (!v) return std::nullopt;
  if (!v->is_boolean())
    bad_request(std::string(name) + " must be a boolean", "/" + std::string(name));
  return v->get<bool>();
}

std::optional<std::vector<std::string>> body_reader::string_array(std::string_view name,
                                                                  std::size_t max_items,
                                                                  std::size_t max_len) {
  const auto* v = get(name);
  const std::string ptr = json_pointer(name);
  if (!v) return std::nullopt;
  if (!v->is_array()) bad_request(std::string(name) + " must be an array of strings", ptr);
  if (v->size() > max_items) {
    bad_request(std::string(name) + " must have at most " + std::to_string(max_items) + " items",
                ptr);
  }
  std::vector<std::string> out;
  for (std::size_t i = 0; i < v->size(); ++i) {
    const auto& item = (*v)[i];
    const auto iptr = ptr + "/" + std::to_string(i);
    if (!item.is_string()) bad_request(std::string(name) + " items must be strings", iptr);
    auto s = item.get<std::string>();
    if (s.empty() || s.size() > max_len) {
      bad_request(std::string(name) + " items must be 1.." + std::to_string(max_len) + " bytes",
                  iptr);
    }
    out.push_back(std::move(s));
  }
  return out;
}

std::optional<nlohmann::json> body_reader::object(std::string_view name, std::size_t max_bytes) {
  const auto* v = get(name);
  const std::string ptr = json_pointer(name);
  if (!v) return std::nullopt;
  if (!v->is_object()) bad_request(std::string(name) + " must be a JSON object", ptr);
  if (v->dump().size() > max_bytes) {
    bad_request(std::string(name) + " must be at most " + std::to_string(max_bytes / 1024) + " KiB",
                ptr);
  }
  return *v;
}

void body_reader::finish() const {
  for (auto it = json_.begin(); it != json_.end(); ++it) {
    if (!read_.count(it.key())) {
      bad_request("unknown field " + it.key(), "/" + it.key());
    }
  }
}

}  // namespace tokend
