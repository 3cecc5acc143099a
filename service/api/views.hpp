// JSON views of stored records, exactly as the contract shows them. No view contains a token or
// secret: connections show stored fingerprints, providers only whether a secret is set.
#pragma once
#include <nlohmann/json.hpp>

#include "core/model.hpp"

namespace tokend::api {

nlohmann::json tenant_view(const tenant_record& t);
nlohmann::json api_key_view(const api_key_record& k);  // without the secret
nlohmann::json provider_view(const provider_record& p);
nlohmann::json connection_view(const connection_record& c);
nlohmann::json event_view(const event_record& e);
// The `reauth` object of a connection (null when it does not need reauthorization).
nlohmann::json reauth_view(const connection_record& c);

nlohmann::json opt_time(const std::optional<sys_time>& t);

}  // namespace tokend::api
