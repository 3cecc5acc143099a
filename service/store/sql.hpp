// Row-mapping and parameter helpers shared by the store's SQL files (repository.cpp,
// reauth_store.cpp). Internal to service/store.
#pragma once
#include <cstdio>
#include <nlohmann/json.hpp>
#include <optional>
#include <pqxx/pqxx>
#include <string>
#include <vector>

#include "core/time.hpp"
#include "store/db_pool.hpp"

namespace tokend::store {
using tx_t = pqxx::transaction_base;  // as in repository.hpp
}  // namespace tokend::store

namespace tokend::store::sql {

// Timestamps cross the boundary as integer microseconds since the epoch (exact both ways).
#define TS(col) "(extract(epoch from " col ") * 1000000)::bigint"
inline std::string ts_param(int n) {
  return "('epoch'::timestamptz + $" + std::to_string(n) + "::bigint * interval '1 microsecond')";
}

template <class... Args>
inline pqxx::result exec(tx_t& tx, const std::string& sql, Args&&... args) {
  count_statement();
  return tx.exec_params(sql, std::forward<Args>(args)...);
}

// Every row mapped with `to` (a row mapper such as to_connection).
template <class To>
inline auto all_rows(const pqxx::result& r, To to) {
  std::vector<decltype(to(r[0]))> out;
  out.reserve(r.size());
  for (const auto& row : r) out.push_back(to(row));
  return out;
}

// The first row mapped with `to`, or nullopt when there is none.
template <class To>
inline auto first_row(const pqxx::result& r, To to) -> std::optional<decltype(to(r[0]))> {
  if (r.empty()) return std::nullopt;
  return to(r[0]);
}

// The next value of `table`'s row_id sequence (row ids are bound into ciphertexts' AAD, so they
// are taken before the row is written).
inline long long next_row_id(tx_t& tx, const std::string& table) {
  return exec(tx, "SELECT nextval(pg_get_serial_sequence($1, 'row_id'))", table)[0][0]
      .as<long long>();
}

inline std::optional<long long> opt_us(const std::optional<sys_time>& t) {
  if (!t) return std::nullopt;
  return to_micros(*t);
}

inline sys_time ts(const pqxx::field& f) { return from_micros(f.as<long long>()); }
inline std::optional<sys_time> opt_ts(const pqxx::field& f) {
  if (f.is_null()) return std::nullopt;
  return from_micros(f.as<long long>());
}
inline std::optional<std::string> opt_str(const pqxx::field& f) {
  if (f.is_null()) return std::nullopt;
  return f.as<std::string>();
}
inline std::optional<std::string> opt_bytes(const pqxx::field& f) {
  if (f.is_null()) return std::nullopt;
  return pqxx::binarystring(f).str();
}
inline std::vector<std::string> str_array(const pqxx::field& f) {  // selected as array_to_json(...)
  return nlohmann::json::parse(f.c_str()).get<std::vector<std::string>>();
}
inline std::string json_array(const std::vector<std::string>& v) { return nlohmann::json(v).dump(); }
inline constexpr const char* kArrayParam = "ARRAY(SELECT jsonb_array_elements_text($%d::jsonb))";
inline std::string array_param(int n) {
  char buf[96];
  std::snprintf(buf, sizeof buf, kArrayParam, n);
  return buf;
}
// A bytea parameter that may be NULL: pass "" for NULL (ciphertexts are never empty).
inline pqxx::binarystring bytes(const std::optional<std::string>& s) {
  return pqxx::binarystring(s ? *s : std::string());
}

}  // namespace tokend::store::sql
