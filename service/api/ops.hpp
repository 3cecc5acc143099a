// Operations endpoints: /healthz, /readyz and /metrics.
#pragma once

namespace tokend::http {
class router;
}
namespace tokend::store {
class db_pool;
}
namespace tokend::observability {
class metrics;
}

namespace tokend::api {

// Registers /healthz and /readyz (and /metrics when with_metrics) on `r`. The references must
// outlive the router.
void register_ops(http::router& r, store::db_pool& db, observability::metrics& m,
                  bool with_metrics);
// Registers only /metrics (for TOKEND_METRICS_LISTEN).
void register_metrics(http::router& r, observability::metrics& m);

}  // namespace tokend::api
