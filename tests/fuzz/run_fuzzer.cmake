# Runs one libFuzzer target for a bounded time (cmake -P, used by ctest and `make fuzz`).
#
#   -DFUZZER=path      the fuzz target
#   -DCORPUS=dir       the committed corpus (read only): seed-* inputs start the fuzzing,
#                      regress-* inputs (past findings) are replayed once first
#   -DWORK=dir         scratch: WORK/corpus (inputs the run adds), WORK/artifacts (crash-*,
#                      leak-*, timeout-*, oom-*), WORK/regress.log, WORK/fuzz.log
#   -DSECONDS=n        -max_total_time
#   -DRUNS=n           -runs (-1: no bound)
#   -DFRESH=ON         empty WORK/corpus first (ctest: each run starts from the seeds)
#
# Regressions are not handed to the mutator: one of them may be slow on purpose (the
# receiver's 16,000-entry total overflow), and mutating it would eat the time budget.
# Fails on any finding; the log's tail and the reproduction command are printed.
foreach(var FUZZER CORPUS WORK SECONDS RUNS)
  if(NOT DEFINED ${var})
    message(FATAL_ERROR "run_fuzzer.cmake: -D${var}=... is required")
  endif()
endforeach()

if(FRESH)
  file(REMOVE_RECURSE ${WORK}/corpus)
endif()
file(REMOVE_RECURSE ${WORK}/artifacts)
file(MAKE_DIRECTORY ${WORK}/corpus ${WORK}/artifacts)
set(flags -timeout=10 -rss_limit_mb=1024 -artifact_prefix=${WORK}/artifacts/)

# Prints the end of `log` and fails; `what` says what to run to reproduce.
function(report_failure log rc what)
  file(READ ${log} text)  # one string: ASan's lines hold brackets that CMake lists mangle
  string(LENGTH "${text}" length)
  if(length GREATER 12000)
    math(EXPR from "${length} - 12000")
    string(SUBSTRING "${text}" ${from} -1 text)
  endif()
  message("${text}")
  message(FATAL_ERROR "${FUZZER} failed (exit ${rc}); log: ${log}; reproduce: ${what}")
endfunction()

file(GLOB regressions ${CORPUS}/regress-*)
if(regressions)
  execute_process(COMMAND ${FUZZER} ${flags} ${regressions}
                  RESULT_VARIABLE rc OUTPUT_FILE ${WORK}/regress.log ERROR_FILE ${WORK}/regress.log)
  if(NOT rc EQUAL 0)
    report_failure(${WORK}/regress.log ${rc} "${FUZZER} <the regress-* input named last in the log>")
  endif()
  list(LENGTH regressions count)
  message("replayed ${count} regression input(s)")
endif()

file(GLOB seeds ${CORPUS}/seed-*)
list(JOIN seeds "," seeds)
execute_process(
  COMMAND ${FUZZER} ${flags} -max_total_time=${SECONDS} -runs=${RUNS} -print_final_stats=1
          -seed_inputs=${seeds} ${WORK}/corpus
  RESULT_VARIABLE rc OUTPUT_FILE ${WORK}/fuzz.log ERROR_FILE ${WORK}/fuzz.log)
if(NOT rc EQUAL 0)
  file(GLOB artifacts ${WORK}/artifacts/*)
  report_failure(${WORK}/fuzz.log ${rc} "${FUZZER} ${artifacts}")
endif()

# The summary: seed, final coverage, executions and their rate.
file(STRINGS ${WORK}/fuzz.log lines REGEX "^INFO: Seed:|^#[0-9]+[ \t]+DONE|^stat::(number_of_executed_units|average_exec_per_sec|peak_rss_mb)")
foreach(line ${lines})
  message("${line}")
endforeach()
