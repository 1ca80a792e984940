// CUDA kernel of upfirdn2d: one thread per output pixel, grid-stride loop, accumulation in float (double for double).
#include <ATen/ATen.h>
#include <ATen/OpMathType.h>
#include <c10/cuda/CUDAStream.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include "upfirdn2d_math.h"

template <typename scalar_t>
__global__ void upfirdn2d_kernel(const scalar_t* __restrict__ x, const float* __restrict__ f, scalar_t* __restrict__ y,
                                 long long total, int in_h, int in_w, int out_h, int out_w, int fh, int fw,
                                 int upx, int upy, int downx, int downy, int px0, int py0, bool flip_filter, float gain) {
    using acc_t = at::opmath_type<scalar_t>;
    for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < total; i += (long long)gridDim.x * blockDim.x) {
        const int ox = i % out_w;
        const int oy = (i / out_w) % out_h;
        const long long plane = i / ((long long)out_w * out_h);
        acc_t v = upfirdn2d_pixel<scalar_t, acc_t>(x + plane * in_h * in_w, in_h, in_w, f, fh, fw, upx, upy, downx, downy,
                                                   px0, py0, flip_filter, oy, ox);
        y[i] = (scalar_t)(v * (acc_t)gain);
    }
}

at::Tensor upfirdn2d_cuda(at::Tensor x, at::Tensor f, int upx, int upy, int downx, int downy,
                             int px0, int px1, int py0, int py1, bool flip_filter, double gain, int out_h, int out_w) {
    const at::cuda::OptionalCUDAGuard guard(x.device());
    auto y = at::empty({x.size(0), x.size(1), out_h, out_w}, x.options());
    const long long total = y.numel();
    if (total == 0) return y;
    const int threads = 256;
    const int blocks = (int)std::min<long long>((total + threads - 1) / threads, 65535LL * 8);
    AT_DISPATCH_FLOATING_TYPES_AND_HALF(x.scalar_type(), "upfirdn2d_cuda", [&] {
        upfirdn2d_kernel<scalar_t><<<blocks, threads, 0, c10::cuda::getCurrentCUDAStream()>>>(
            x.data_ptr<scalar_t>(), f.data_ptr<float>(), y.data_ptr<scalar_t>(), total, x.size(2), x.size(3), out_h, out_w,
            f.size(0), f.size(1), upx, upy, downx, downy, px0, py0, flip_filter, (float)gain);
    });
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    return y;
}
