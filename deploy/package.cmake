# The Debian package (cpack -G DEB): the six programs, libps-client with
# its headers and ps-client.pc, the systemd units, example configs in
# /etc/ps (conffiles), and a ps system user made by postinst.
#
# CPack rather than a debian/ directory: the package is built from the
# install rules the project already has and tests (tests/install), in the
# same build tree, with no debhelper toolchain. A debian/ source package is
# what the Debian archive would want; nothing here rules it out later.
#
# Build it from a tree configured for the system's layout:
#   cmake -S . -B build-deb -DCMAKE_BUILD_TYPE=Release \
#     -DCMAKE_INSTALL_PREFIX=/usr -DPS_INSTALL_DEPLOY=ON -DPS_WITH_CUDA=OFF \
#     -DCMAKE_SKIP_INSTALL_RPATH=ON
#   cmake --build build-deb -j && (cd build-deb && cpack -G DEB)
# tests/deploy/package.sh does exactly this (with
# CMAKE_SKIP_INSTALL_ALL_DEPENDENCY, so cpack builds no test programs).
# (no CUDA: the CUDA runtime is not in Debian's main archive; no RPATH:
# Debian's OpenBLAS is found through its alternatives.)

option(PS_INSTALL_DEPLOY
       "Also install the systemd units, /etc/ps examples and docs (for a package built with prefix /usr)"
       OFF)
if(PS_INSTALL_DEPLOY)
  install(FILES deploy/systemd/ps-scheduler.service
                deploy/systemd/ps-server@.service
                deploy/systemd/ps-worker@.service
          DESTINATION lib/systemd/system)
  install(FILES deploy/etc/scheduler.conf deploy/etc/server-a.conf
                deploy/etc/server-b.conf deploy/etc/worker.conf
          DESTINATION ${CMAKE_INSTALL_FULL_SYSCONFDIR}/ps)
  # Debian wants /usr/share/doc/<package>/ with the copyright and a
  # gzip -9n changelog (no timestamp, so the package is reproducible).
  set(ps_changelog_gz ${CMAKE_CURRENT_BINARY_DIR}/changelog.gz)
  execute_process(COMMAND gzip -9nc ${CMAKE_CURRENT_SOURCE_DIR}/deploy/debian/changelog
                  OUTPUT_FILE ${ps_changelog_gz} COMMAND_ERROR_IS_FATAL ANY)
  install(FILES README.md deploy/debian/copyright ${ps_changelog_gz}
          DESTINATION ${CMAKE_INSTALL_DATAROOTDIR}/doc/ps)
  # The Python package `ps` (worker/python, issue #17) for Debian's
  # python3, where its modules go (dist-packages, no version in the path):
  # the extension built here against this libps-client, and the .py files.
  # `import ps.torch` needs python3-torch (Suggests); `import ps` numpy only
  # for ps.initializers and ps.fashion_mnist.
  if(PS_HAVE_PYTHON)
    set(ps_py_dest lib/python3/dist-packages/ps)
    install(TARGETS ps-python LIBRARY DESTINATION ${ps_py_dest})
    install(DIRECTORY worker/python/ps/ DESTINATION ${ps_py_dest}
            FILES_MATCHING PATTERN "*.py")
  endif()
endif()

set(CPACK_PACKAGE_NAME ps)
set(CPACK_PACKAGE_VENDOR "the parameter-server maintainers")
set(CPACK_PACKAGE_CONTACT
    "parameter-server maintainers <maintainers@users.noreply.b-seed-45d46b87.example>")
set(CPACK_PACKAGE_DESCRIPTION_SUMMARY
    "parameter server for data-parallel training")
set(CPACK_PACKAGE_DESCRIPTION
    "A scheduler, servers and workers that train a model together over
ZeroMQ: ps-scheduler, ps-server, ps-worker, psctl, ps-bench and
ps-datagen, the libps-client library with its headers, the Python package
ps, and systemd units (ps-scheduler.service, ps-server@.service,
ps-worker@.service) configured from /etc/ps.")
set(CPACK_GENERATOR DEB)
set(CPACK_DEBIAN_FILE_NAME DEB-DEFAULT) # ps_<version>_<arch>.deb
set(CPACK_DEBIAN_PACKAGE_SECTION science)
set(CPACK_DEBIAN_PACKAGE_PRIORITY optional)
set(CPACK_DEBIAN_PACKAGE_SHLIBDEPS ON)
set(CPACK_DEBIAN_PACKAGE_GENERATE_SHLIBS ON) # the shlibs file
# python3: the extension in dist-packages is built for this python3's ABI
# (Debian 12: 3.11), as Debian's policy for Python modules asks.
if(PS_HAVE_PYTHON)
  set(CPACK_DEBIAN_PACKAGE_DEPENDS
      "adduser, python3 (>= ${PS_PYTHON_ABI}~), python3 (<< ${PS_PYTHON_ABI_NEXT})")
else()
  set(CPACK_DEBIAN_PACKAGE_DEPENDS "adduser")
endif()
set(CPACK_DEBIAN_PACKAGE_RECOMMENDS "dataset-fashion-mnist, python3-numpy")
set(CPACK_DEBIAN_PACKAGE_SUGGESTS "python3-torch")
set(CPACK_DEBIAN_PACKAGE_CONTROL_EXTRA
    "${CMAKE_CURRENT_SOURCE_DIR}/deploy/debian/postinst;${CMAKE_CURRENT_SOURCE_DIR}/deploy/debian/postrm;${CMAKE_CURRENT_SOURCE_DIR}/deploy/debian/conffiles;${CMAKE_CURRENT_SOURCE_DIR}/deploy/debian/triggers")
set(CPACK_DEBIAN_PACKAGE_CONTROL_STRICT_PERMISSION ON)
set(CPACK_STRIP_FILES ON)
include(CPack)
