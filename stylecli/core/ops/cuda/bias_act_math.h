// Element-wise math of bias_act: activation value and its first two derivatives, gain and clamp.
#pragma once
#include "ops_common.h"

// Activation indices; must match ACTIVATIONS[...].cuda_index in bias_act.py.
enum BiasActKind { BA_LINEAR = 1, BA_RELU, BA_LRELU, BA_TANH, BA_SIGMOID, BA_ELU, BA_SELU, BA_SOFTPLUS, BA_SWISH };

template <typename T>
struct ActDerivs {
    T value;  // act(s)
    T d1;     // act'(s)
    T d2;     // act''(s)
};

template <typename T>
STYLECLI_HD inline ActDerivs<T> activation_derivs(int act, T s, T alpha) {
    const T one = 1, zero = 0;
    ActDerivs<T> r = {s, one, zero};
    switch (act) {
        case BA_RELU: r.value = s > zero ? s : zero; r.d1 = s > zero ? one : zero; break;
        case BA_LRELU: r.value = s > zero ? s : s * alpha; r.d1 = s > zero ? one : alpha; break;
        case BA_TANH: { T t = sc_tanh(s); r.value = t; r.d1 = one - t * t; r.d2 = -2 * t * (one - t * t); break; }
        case BA_SIGMOID: {
            T g = one / (one + sc_exp(-s)); r.value = g; r.d1 = g * (one - g); r.d2 = g * (one - g) * (one - 2 * g); break;
        }
        case BA_ELU: { T e = sc_exp(s) ; r.value = s > zero ? s : e - one; r.d1 = s > zero ? one : e; r.d2 = s > zero ? zero : e; break; }
        case BA_SELU: {
            const T a = (T)1.6732632423543772848170429916717, k = (T)1.0507009873554804934193349852946;
            T e = sc_exp(s);
            r.value = s > zero ? k * s : k * a * (e - one); r.d1 = s > zero ? k : k * a * e; r.d2 = s > zero ? zero : k * a * e;
            break;
        }
        case BA_SOFTPLUS: {
            T g = one / (one + sc_exp(-s));
            r.value = s > (T)20 ? s : sc_log1p(sc_exp(s)); r.d1 = g; r.d2 = g * (one - g); break;
        }
        case BA_SWISH: {
            T g = one / (one + sc_exp(-s));
            r.value = s * g; r.d1 = g + s * g * (one - g); r.d2 = g * (one - g) * (2 + s * (one - 2 * g)); break;
        }
        default: break;  // linear
    }
    return r;
}

// mode 0: y = clamp(act(s) * gain)            with x = s
// mode 1: ds = x * act'(s) * gain * pass(s)   with x = dy
// mode 2: x * act''(s) * gain * pass(s)       with x = d(ds) * dy
// pass(s) is 0 where the clamp was active in the forward pass.
template <typename T>
STYLECLI_HD inline T bias_act_element(int mode, T x, T s, int act, T alpha, T gain, T clamp) {
    ActDerivs<T> d = activation_derivs(act, mode == 0 ? x : s, alpha);
    T y = d.value * gain;
    if (mode == 0) {
        if (clamp >= 0) y = y > clamp ? clamp : (y < -clamp ? -clamp : y);
        return y;
    }
    T pass = (clamp < 0 || (y < clamp && y > -clamp)) ? (T)1 : (T)0;
    return x * (mode == 1 ? d.d1 : d.d2) * gain * pass;
}
