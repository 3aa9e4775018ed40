# `cmake --install`: the kvlab executable (see cli/), libkvlab_core, the core/ headers and a
# CMake package, so an out-of-tree plugin builds with
#   find_package(kvlab REQUIRED)
#   target_link_libraries(my_policy PRIVATE kvlab::core)
# Layout: <prefix>/include/kvlab/core/*.hpp (included as "core/policy.hpp"),
#         <prefix>/lib/libkvlab_core.so, <prefix>/lib/cmake/kvlab/kvlabConfig.cmake.
include(CMakePackageConfigHelpers)

set(KVLAB_INSTALL_CMAKEDIR ${CMAKE_INSTALL_LIBDIR}/cmake/kvlab)

file(GLOB KVLAB_CORE_PUBLIC_HEADERS CONFIGURE_DEPENDS ${PROJECT_SOURCE_DIR}/core/*.hpp)
install(FILES ${KVLAB_CORE_PUBLIC_HEADERS} DESTINATION ${CMAKE_INSTALL_INCLUDEDIR}/kvlab/core)

# Exported as kvlab::core, the same name as the in-tree alias.
set_target_properties(kvlab_core PROPERTIES EXPORT_NAME core)
install(TARGETS kvlab_core EXPORT kvlabTargets
  LIBRARY DESTINATION ${CMAKE_INSTALL_LIBDIR}
  ARCHIVE DESTINATION ${CMAKE_INSTALL_LIBDIR}
  RUNTIME DESTINATION ${CMAKE_INSTALL_BINDIR})

# Other kvlab libraries the installed executable needs at run time, if they are shared.
foreach(lib kvlab_traces kvlab_backends kvlab_indexer kvlab_indexer_training kvlab_model kvlab_cpu kvlab_experiments kvlab_analysis)
  if(TARGET ${lib})
    get_target_property(kvlab_lib_type ${lib} TYPE)
    if(kvlab_lib_type STREQUAL "SHARED_LIBRARY")
      install(TARGETS ${lib} LIBRARY DESTINATION ${CMAKE_INSTALL_LIBDIR})
    endif()
  endif()
endforeach()

install(EXPORT kvlabTargets
  NAMESPACE kvlab::
  FILE kvlabTargets.cmake
  DESTINATION ${KVLAB_INSTALL_CMAKEDIR})

configure_package_config_file(
  ${PROJECT_SOURCE_DIR}/cmake/kvlabConfig.cmake.in
  ${PROJECT_BINARY_DIR}/cmake/kvlabConfig.cmake
  INSTALL_DESTINATION ${KVLAB_INSTALL_CMAKEDIR})
# 0.x: the policy API may change between minor versions, so only the same minor matches.
write_basic_package_version_file(
  ${PROJECT_BINARY_DIR}/cmake/kvlabConfigVersion.cmake
  VERSION ${PROJECT_VERSION}
  COMPATIBILITY SameMinorVersion)
install(FILES
  ${PROJECT_BINARY_DIR}/cmake/kvlabConfig.cmake
  ${PROJECT_BINARY_DIR}/cmake/kvlabConfigVersion.cmake
  DESTINATION ${KVLAB_INSTALL_CMAKEDIR})
