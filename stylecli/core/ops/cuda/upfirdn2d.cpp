// Python binding of upfirdn2d. CUDA tensors go to the kernel in upfirdn2d_kernel.cu; CPU tensors run the same
// per-pixel math (upfirdn2d_math.h) in a plain loop, which is how the kernel's arithmetic is tested without a GPU.
#include <torch/extension.h>
#include <ATen/OpMathType.h>
#include "upfirdn2d_math.h"

torch::Tensor upfirdn2d_cuda(torch::Tensor x, torch::Tensor f, int upx, int upy, int downx, int downy,
                             int px0, int px1, int py0, int py1, bool flip_filter, double gain, int out_h, int out_w);

static torch::Tensor upfirdn2d_host(torch::Tensor x, torch::Tensor f, int upx, int upy, int downx, int downy,
                                    int px0, int py0, bool flip_filter, double gain, int out_h, int out_w) {
    auto y = torch::empty({x.size(0), x.size(1), out_h, out_w}, x.options());
    const int in_h = x.size(2), in_w = x.size(3), fh = f.size(0), fw = f.size(1);
    const long long planes = x.size(0) * x.size(1);
    AT_DISPATCH_FLOATING_TYPES_AND_HALF(x.scalar_type(), "upfirdn2d_host", [&] {
        using acc_t = at::opmath_type<scalar_t>;
        const scalar_t* xp = x.data_ptr<scalar_t>();
        scalar_t* yp = y.data_ptr<scalar_t>();
        const float* fp = f.data_ptr<float>();
        for (long long p = 0; p < planes; ++p)
            for (int oy = 0; oy < out_h; ++oy)
                for (int ox = 0; ox < out_w; ++ox) {
                    acc_t v = upfirdn2d_pixel<scalar_t, acc_t>(xp + p * in_h * in_w, in_h, in_w, fp, fh, fw, upx, upy,
                                                               downx, downy, px0, py0, flip_filter, oy, ox);
                    yp[(p * out_h + oy) * out_w + ox] = (scalar_t)(v * (acc_t)gain);
                }
    });
    return y;
}

torch::Tensor upfirdn2d(torch::Tensor x, torch::Tensor f, int upx, int upy, int downx, int downy,
                        int px0, int px1, int py0, int py1, bool flip_filter, double gain) {
    TORCH_CHECK(x.dim() == 4, "x must be [N, C, H, W]");
    TORCH_CHECK(f.dim() == 2 && f.scalar_type() == torch::kFloat, "f must be a 2-D float32 filter");
    TORCH_CHECK(f.device() == x.device(), "f must be on the device of x");
    TORCH_CHECK(upx >= 1 && upy >= 1 && downx >= 1 && downy >= 1, "up and down must be >= 1");
    const int out_h = (x.size(2) * upy + py0 + py1 - f.size(0) + downy) / downy;
    const int out_w = (x.size(3) * upx + px0 + px1 - f.size(1) + downx) / downx;
    TORCH_CHECK(out_h >= 1 && out_w >= 1, "output would be empty");
    x = x.contiguous();
    f = f.contiguous();
    if (x.is_cuda())
        return upfirdn2d_cuda(x, f, upx, upy, downx, downy, px0, px1, py0, py1, flip_filter, gain, out_h, out_w);
    return upfirdn2d_host(x, f, upx, upy, downx, downy, px0, py0, flip_filter, gain, out_h, out_w);
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
    m.def("upfirdn2d", &upfirdn2d, "upsample, pad, FIR filter, downsample (CUDA kernel; CPU loop twin)");
}
