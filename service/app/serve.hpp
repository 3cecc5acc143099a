// `tokend serve`: wires the pools, routes and servers, runs the event loop, shuts down cleanly.
#pragma once
#include "app/config.hpp"

namespace tokend::app {

// Blocks until SIGTERM/SIGINT and a graceful shutdown; returns the exit code.
int serve(const config& c);

}  // namespace tokend::app
