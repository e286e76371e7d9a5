# Turns on CUDA for the whole build when nvcc is found (and PS_WITH_CUDA is
# on), setting PS_HAVE_CUDA. Included from the root CMakeLists.txt: CUDA
# must be enabled in the highest directory whose targets link the CUDA
# backend (ps-worker, the tests), so that they link with the CUDA-aware
# linker (the kernels' host code needs the C++ runtime).
option(PS_WITH_CUDA "Build the CUDA compute backend when nvcc is found" ON)
set(PS_HAVE_CUDA OFF)
if(PS_WITH_CUDA)
  include(CheckLanguage)
  # The toolkit's usual home, for when nvcc is not on PATH.
  if(NOT DEFINED CMAKE_CUDA_COMPILER AND NOT DEFINED ENV{CUDACXX})
    find_program(PS_NVCC nvcc)
    if(NOT PS_NVCC AND EXISTS /usr/local/cuda/bin/nvcc)
      set(ENV{CUDACXX} /usr/local/cuda/bin/nvcc)
    endif()
  endif()
  check_language(CUDA)
  if(CMAKE_CUDA_COMPILER)
    if(NOT DEFINED CMAKE_CUDA_ARCHITECTURES)
      # A100 and H100; each also carries PTX, so newer GPUs JIT it.
      set(CMAKE_CUDA_ARCHITECTURES "80;90")
    endif()
    # One CUDA runtime, chosen here: the static one. The programs then need
    # no libcudart.so at load (it finds the driver, libcuda.so.1, itself
    # when first called), and the link line carries one runtime, not the
    # shared one from CUDA::cudart beside the static one nvcc adds.
    set(CMAKE_CUDA_RUNTIME_LIBRARY Static)
    enable_language(CUDA)
    find_package(CUDAToolkit REQUIRED)
    # cuBLAS is opened when the CUDA backend starts (cuda/compute_cuda.c),
    # not at load, so a program runs its CPU path where no cuBLAS is
    # installed. The toolkit's folder is in every program's RUNPATH, built
    # and installed, which dlopen searches; without it libcublas.so.13 was
    # found only through this machine's ld.so configuration. (CMake leaves
    # the folder out on its own: nvcc's implicit link folders never go in
    # an RPATH.)
    list(APPEND CMAKE_BUILD_RPATH "${CUDAToolkit_LIBRARY_DIR}")
    list(APPEND CMAKE_INSTALL_RPATH "${CUDAToolkit_LIBRARY_DIR}")
    set(PS_HAVE_CUDA ON)
    message(STATUS "CUDA backend: on (${CMAKE_CUDA_COMPILER} "
                   "${CMAKE_CUDA_COMPILER_VERSION}, architectures "
                   "${CMAKE_CUDA_ARCHITECTURES}, static runtime, cuBLAS "
                   "from ${CUDAToolkit_LIBRARY_DIR} at run time)")
  else()
    message(STATUS "CUDA backend: off (no nvcc found)")
  endif()
else()
  message(STATUS "CUDA backend: off (PS_WITH_CUDA=OFF)")
endif()
