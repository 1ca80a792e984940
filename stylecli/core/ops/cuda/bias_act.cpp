// Python binding of bias_act. CUDA tensors go to the kernel in bias_act_kernel.cu; CPU tensors run the same
// element math (bias_act_math.h) in a plain loop, which is how the kernel's arithmetic is tested without a GPU.
#include <torch/extension.h>
#include <ATen/OpMathType.h>
#include "bias_act_math.h"

torch::Tensor bias_act_cuda(torch::Tensor x, torch::Tensor s, int mode, int act, double alpha, double gain, double clamp);

torch::Tensor bias_act(torch::Tensor x, torch::Tensor s, int mode, int act, double alpha, double gain, double clamp) {
    TORCH_CHECK(mode >= 0 && mode <= 2, "mode must be 0, 1 or 2");
    TORCH_CHECK(act >= BA_LINEAR && act <= BA_SWISH, "unknown activation index");
    TORCH_CHECK(mode == 0 || (s.sizes() == x.sizes() && s.scalar_type() == x.scalar_type() && s.device() == x.device()),
                "s must match x in shape, dtype and device");
    x = x.contiguous();
    if (mode != 0) s = s.contiguous();
    if (x.is_cuda()) return bias_act_cuda(x, s, mode, act, alpha, gain, clamp);
    auto y = torch::empty_like(x);
    AT_DISPATCH_FLOATING_TYPES_AND_HALF(x.scalar_type(), "bias_act_host", [&] {
        using acc_t = at::opmath_type<scalar_t>;
        const scalar_t* xp = x.data_ptr<scalar_t>();
        const scalar_t* sp = mode == 0 ? nullptr : s.data_ptr<scalar_t>();
        scalar_t* yp = y.data_ptr<scalar_t>();
        for (long long i = 0; i < x.numel(); ++i)
            yp[i] = (scalar_t)bias_act_element<acc_t>(mode, (acc_t)xp[i], sp ? (acc_t)sp[i] : (acc_t)0, act, (acc_t)alpha,
                                                       (acc_t)gain, (acc_t)clamp);
    });
    return y;
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
    m.def("bias_act", &bias_act, "activation, its derivatives, gain and clamp (CUDA kernel; CPU loop twin)");
}
