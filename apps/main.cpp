#include "apps/commands.h"

int main(int argc, char** argv) { return fedrad::app::run_cli(argc, argv); }
