// CUDA kernel of bias_act: element-wise, grid-stride loop, math in float (double for double).
#include <ATen/ATen.h>
#include <ATen/OpMathType.h>
#include <c10/cuda/CUDAStream.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include "bias_act_math.h"

template <typename scalar_t>
__global__ void bias_act_kernel(const scalar_t* __restrict__ x, const scalar_t* __restrict__ s, scalar_t* __restrict__ y,
                                long long n, int mode, int act, double alpha, double gain, double clamp) {
    using acc_t = at::opmath_type<scalar_t>;
    for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < n; i += (long long)gridDim.x * blockDim.x) {
        acc_t si = s ? (acc_t)s[i] : (acc_t)0;
        y[i] = (scalar_t)bias_act_element<acc_t>(mode, (acc_t)x[i], si, act, (acc_t)alpha, (acc_t)gain, (acc_t)clamp);
    }
}

at::Tensor bias_act_cuda(at::Tensor x, at::Tensor s, int mode, int act, double alpha, double gain, double clamp) {
    const at::cuda::OptionalCUDAGuard guard(x.device());
    auto y = at::empty_like(x);
    const long long n = x.numel();
    if (n == 0) return y;
    const int threads = 256;
    const int blocks = (int)std::min<long long>((n + threads - 1) / threads, 65535LL * 8);
    AT_DISPATCH_FLOATING_TYPES_AND_HALF(x.scalar_type(), "bias_act_cuda", [&] {
        bias_act_kernel<scalar_t><<<blocks, threads, 0, c10::cuda::getCurrentCUDAStream()>>>(
            x.data_ptr<scalar_t>(), mode == 0 ? nullptr : s.data_ptr<scalar_t>(), y.data_ptr<scalar_t>(), n, mode, act,
            alpha, gain, clamp);
    });
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    return y;
}
