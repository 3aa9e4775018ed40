# Writes cli/version.hpp (OUT) from its template (IN) with the source tree's current git revision,
# at every build rather than at configure time: a build tree configured at one commit and rebuilt
# at another must not stamp the old revision into config.json and the sweep's cells. The file is
# rewritten only when its text changes, so an unchanged revision recompiles nothing.
#   cmake -DIN=... -DOUT=... -DSOURCE_DIR=... -DGIT=... -DPROJECT_VERSION=... -P write_version.cmake
set(KVLAB_GIT_REVISION "unknown")
if(GIT)
  execute_process(
    COMMAND ${GIT} describe --always --dirty
    WORKING_DIRECTORY ${SOURCE_DIR}
    OUTPUT_VARIABLE describe
    OUTPUT_STRIP_TRAILING_WHITESPACE
    RESULT_VARIABLE result
    ERROR_QUIET)
  if(result EQUAL 0 AND describe)
    set(KVLAB_GIT_REVISION "${describe}")
  endif()
endif()
configure_file(${IN} ${OUT}.tmp @ONLY)
execute_process(COMMAND ${CMAKE_COMMAND} -E copy_if_different ${OUT}.tmp ${OUT})
file(REMOVE ${OUT}.tmp)
