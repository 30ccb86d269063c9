// Host/device portability macros for the math shared by the CPU and CUDA kernels.
// Headers under csrc/include/mtlk/ include no ATen: they compile in a plain C++ test,
// in the CPU kernels and in nvcc device code alike.
#pragma once

#if defined(__CUDACC__) || defined(__HIPCC__)
#define MTLK_HOST_DEVICE __host__ __device__ __forceinline__
#else
#define MTLK_HOST_DEVICE inline
#endif
