#include "apps/commands.h"
#include "common/allocator.h"

int main(int argc, char** argv) {
  fedrad::tune_allocator();
  return fedrad::app::run_cli(argc, argv);
}
