// SQL of reauthorization: links, the OAuth states of their Reconnect presses, and the tenant's
// settings. Blocking; run on a DB thread. Link tokens and states arrive here already hashed.
#pragma once
#include <optional>
#include <string>
#include <vector>

#include "core/model.hpp"

namespace pqxx {
class transaction_base;
}

namespace tokend::store {

using tx_t = pqxx::transaction_base;

struct reauth_link_record {
  std::string tenant_id;
  std::string id;
  std::string kind;  // "reauth" | "connect"
  std::string connection_id;
  std::optional<long long> connection_row_id;  // set for kind "reauth"
  std::string provider_id;
  std::string reason;
  std::optional<std::string> return_url;
  std::string status;  // as stored: open opened completed declined failed superseded
  std::optional<std::string> last_error;
  std::optional<std::string> request_id;
  sys_time created_at;
  sys_time expires_at;
  std::optional<sys_time> opened_at, started_at, completed_at, ended_at;
  bool expired = false;  // past expires_at on the database clock

  // Still usable: not completed, not superseded, not expired.
  bool usable() const {
    return !expired && status != "completed" && status != "superseded";
  }
  // The lifecycle status shown to ops: an unfinished link past its expiry is `expired`.
  std::string shown_status() const {
    if (expired && status != "completed" && status != "superseded") return "expired";
    return status;
  }
};

struct reauth_state_record {
  std::string tenant_id;
  std::string link_id;
  std::optional<std::string> key_id;
  std::optional<std::string> verifier_ct;
  std::string redirect_uri;
  sys_time created_at;
  std::optional<sys_time> used_at;
  std::optional<std::string> outcome;       // completed | declined | failed
  std::optional<std::string> outcome_page;  // page key shown by the callback
  bool expired = false;
  long long used_age_ms = 0;  // since used_at, on the database clock
};

// Settings.
std::vector<std::string> get_return_url_origins(tx_t& tx, const std::string& tenant);
void put_return_url_origins(tx_t& tx, const std::string& tenant,
                            const std::vector<std::string>& origins);
std::string tenant_name(tx_t& tx, const std::string& tenant);

// Links. insert_link supersedes the connection id's older usable links first.
reauth_link_record insert_link(tx_t& tx, const reauth_link_record& l, const std::string& token_hash,
                               long long expires_in_s);
std::optional<reauth_link_record> find_link_by_token(tx_t& tx, const std::string& token_hash,
                                                     bool for_update = false);
std::optional<reauth_link_record> get_link(tx_t& tx, const std::string& tenant,
                                           const std::string& id, bool for_update = false);
std::vector<reauth_link_record> list_links(tx_t& tx, const std::string& tenant,
                                           const std::string& connection_id, int limit);
// open -> opened (first open only); true when this call recorded it.
bool mark_link_opened(tx_t& tx, const std::string& tenant, const std::string& id);
void mark_link_started(tx_t& tx, const std::string& tenant, const std::string& id);
// declined / failed (stays usable) with a short reason for ops.
void end_link_attempt(tx_t& tx, const std::string& tenant, const std::string& id,
                      const std::string& status, const std::string& last_error);
// completed, and every other usable link of the connection id superseded.
void complete_link(tx_t& tx, const std::string& tenant, const std::string& id,
                   const std::string& connection_id);

// States.
void insert_state(tx_t& tx, const std::string& state_hash, const reauth_state_record& s,
                  long long valid_s);
std::optional<reauth_state_record> get_state(tx_t& tx, const std::string& state_hash,
                                             bool for_update = false);
void use_state(tx_t& tx, const std::string& state_hash);
void finish_state(tx_t& tx, const std::string& state_hash, const std::string& outcome,
                  const std::string& page);

}  // namespace tokend::store
