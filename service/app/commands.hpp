// The tokend subcommands; main() only forwards argv here.
#pragma once

namespace tokend::app {

// Parses the subcommand and flags, validates configuration (exit 2 on a bad value, with one
// line naming the variable) and runs it. Returns the process exit code.
int tokend_main(int argc, char** argv);

}  // namespace tokend::app
