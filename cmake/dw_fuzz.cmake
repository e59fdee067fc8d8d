# Fuzz targets: libFuzzer binaries (clang, -DDW_FUZZ=ON) and, with any
# compiler, a corpus-replay binary per target registered as a ctest test
# (fuzz.replay.<name>), so `make test` runs every seed corpus once.
#
# The libraries under test must be instrumented too, so a fuzzing build
# is configured as a whole (scripts/fuzz.sh does this):
#   CC=clang cmake -S . -B build-fuzz -DDW_FUZZ=ON \
#     -DDW_SANITIZE=address,undefined -DCMAKE_C_FLAGS=-fsanitize=fuzzer-no-link
include_guard(GLOBAL)

option(DW_FUZZ "Build the libFuzzer targets (needs clang)" OFF)
get_filename_component(DW_FUZZ_ROOT ${CMAKE_CURRENT_LIST_DIR}/.. ABSOLUTE)
set(DW_FUZZ_CORPUS_DIR ${DW_FUZZ_ROOT}/tests/fuzz/corpus)
set(DW_FUZZ_REPLAY_MAIN ${DW_FUZZ_ROOT}/tests/fuzz/replay_main.c)
set(DW_FUZZ_OUTPUT_DIR ${CMAKE_BINARY_DIR}/fuzz)

if(DW_FUZZ)
  if(NOT CMAKE_C_COMPILER_ID MATCHES "Clang")
    message(FATAL_ERROR "DW_FUZZ=ON needs clang (libFuzzer); configure with CC=clang "
                        "or use scripts/fuzz.sh")
  endif()
  if(NOT DW_SANITIZE MATCHES "address" OR NOT CMAKE_C_FLAGS MATCHES "fuzzer-no-link")
    message(FATAL_ERROR "DW_FUZZ=ON: instrument the code under test as well: "
                        "-DDW_SANITIZE=address,undefined -DCMAKE_C_FLAGS=-fsanitize=fuzzer-no-link "
                        "(scripts/fuzz.sh passes both)")
  endif()
endif()

# dw_fuzz_target(<name> SOURCES <harness.c...> LIBS <targets...>)
# The harness defines LLVMFuzzerTestOneInput. Builds fuzz_<name>_replay
# always, fuzz_<name> (libFuzzer) with DW_FUZZ; seeds: corpus/<name>/.
function(dw_fuzz_target name)
  cmake_parse_arguments(F "" "" "SOURCES;LIBS" ${ARGN})
  add_executable(fuzz_${name}_replay ${F_SOURCES} ${DW_FUZZ_REPLAY_MAIN})
  target_link_libraries(fuzz_${name}_replay PRIVATE ${F_LIBS} dw_warnings)
  set_target_properties(fuzz_${name}_replay PROPERTIES RUNTIME_OUTPUT_DIRECTORY ${DW_FUZZ_OUTPUT_DIR})
  add_test(NAME fuzz.replay.${name}
           COMMAND fuzz_${name}_replay ${DW_FUZZ_CORPUS_DIR}/${name})
  set_tests_properties(fuzz.replay.${name} PROPERTIES LABELS fuzz TIMEOUT 120)

  if(DW_FUZZ)
    add_executable(fuzz_${name} ${F_SOURCES})
    target_link_libraries(fuzz_${name} PRIVATE ${F_LIBS} dw_warnings)
    target_compile_options(fuzz_${name} PRIVATE -fsanitize=fuzzer -g)
    target_link_options(fuzz_${name} PRIVATE -fsanitize=fuzzer)
    set_target_properties(fuzz_${name} PROPERTIES RUNTIME_OUTPUT_DIRECTORY ${DW_FUZZ_OUTPUT_DIR})
    set_property(GLOBAL APPEND PROPERTY DW_FUZZ_TARGETS fuzz_${name})
  endif()
endfunction()
