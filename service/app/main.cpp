#include "app/commands.hpp"

int main(int argc, char** argv) { return tokend::app::tokend_main(argc, argv); }
