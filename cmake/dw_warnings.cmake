# One INTERFACE target carries the warning flags; every target links it.
add_library(dw_warnings INTERFACE)
target_compile_options(dw_warnings INTERFACE
  -Wall -Wextra -Wshadow -Wformat=2 -Wstrict-prototypes -Wmissing-prototypes
  -Wno-unused-parameter -Wvla -Wpointer-arith)
if(DW_WERROR)
  target_compile_options(dw_warnings INTERFACE -Werror)
endif()
target_compile_definitions(dw_warnings INTERFACE _GNU_SOURCE
  DW_VERSION="${PROJECT_VERSION}")
