// exp on GCC vectors of float, shared by the span-attention and SwiGLU kernels.
#pragma once

namespace craft {

// exp(a) for `a` already clamped to [-87, 87] by the caller (the exponent bits below overflow outside
// it). F: a GCC vector of float, I: the int vector of the same width. 2^n * p(r), a = n ln2 + r,
// |r| <= ln2/2, degree-6 Taylor polynomial: relative error < 2e-7. Branch-free.
template <class F, class I>
__attribute__((always_inline)) inline F exp_clamped(F a) {
    const F n = (a * 1.44269504088896341f + 12582912.f) - 12582912.f;  // round to nearest (1.5 * 2^23)
    const F r = a - n * 0.693145751953125f - n * 1.42860682030941723e-6f;
    F p = r * (1.f / 720) + 1.f / 120;
    p = p * r + 1.f / 24;
    p = p * r + 1.f / 6;
    p = p * r + 0.5f;
    p = p * r + 1.f;
    p = p * r + 1.f;
    const I bits = (__builtin_convertvector(n, I) + 127) << 23;
    return p * (F)bits;
}

}  // namespace craft
