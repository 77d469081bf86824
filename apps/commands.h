// The `fedrad` command line (CLI11). Returns the process exit code: 0 success, 1 failure (the
// error is printed), 2 bad usage.
#pragma once

namespace fedrad::app {

int run_cli(int argc, char** argv);

}  // namespace fedrad::app
