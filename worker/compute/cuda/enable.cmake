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
    enable_language(CUDA)
    find_package(CUDAToolkit REQUIRED)
    set(PS_HAVE_CUDA ON)
    message(STATUS "CUDA backend: on (${CMAKE_CUDA_COMPILER} "
                   "${CMAKE_CUDA_COMPILER_VERSION}, architectures "
                   "${CMAKE_CUDA_ARCHITECTURES})")
  else()
    message(STATUS "CUDA backend: off (no nvcc found)")
  endif()
else()
  message(STATUS "CUDA backend: off (PS_WITH_CUDA=OFF)")
endif()
