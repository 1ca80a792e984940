// Shared by the CUDA kernels and their host twins: the same per-element math runs on the GPU and, for testing on
// machines without a GPU, in a plain CPU loop.
#pragma once

#ifdef __CUDACC__
#define STYLECLI_HD __host__ __device__
#else
#define STYLECLI_HD
#endif

#include <math.h>

STYLECLI_HD inline float sc_exp(float v) { return expf(v); }
STYLECLI_HD inline double sc_exp(double v) { return exp(v); }
STYLECLI_HD inline float sc_tanh(float v) { return tanhf(v); }
STYLECLI_HD inline double sc_tanh(double v) { return tanh(v); }
STYLECLI_HD inline float sc_log1p(float v) { return log1pf(v); }
STYLECLI_HD inline double sc_log1p(double v) { return log1p(v); }
