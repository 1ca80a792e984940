// One output pixel of upfirdn2d: upsample (zero insertion), pad, FIR filter, downsample (see upfirdn2d.py).
#pragma once
#include "ops_common.h"

// x: one input plane [in_h, in_w]; f: filter [fh, fw]. Returns the unscaled sum for output pixel (oy, ox).
template <typename T, typename Acc>
STYLECLI_HD inline Acc upfirdn2d_pixel(const T* x, int in_h, int in_w, const float* f, int fh, int fw,
                                       int upx, int upy, int downx, int downy, int px0, int py0, bool flip_filter,
                                       int oy, int ox) {
    Acc acc = 0;
    for (int ky = 0; ky < fh; ++ky) {
        // Row of the zero-inserted image under filter tap ky; only multiples of `up` hold input pixels.
        int uy = oy * downy + ky - py0;
        if (uy < 0 || uy % upy != 0) continue;
        int iy = uy / upy;
        if (iy >= in_h) break;
        // A true convolution reads the filter mirrored; flip_filter asks for plain correlation.
        int fy = flip_filter ? ky : fh - 1 - ky;
        for (int kx = 0; kx < fw; ++kx) {
            int ux = ox * downx + kx - px0;
            if (ux < 0 || ux % upx != 0) continue;
            int ix = ux / upx;
            if (ix >= in_w) break;
            int fx = flip_filter ? kx : fw - 1 - kx;
            acc += (Acc)x[(long long)iy * in_w + ix] * (Acc)f[fy * fw + fx];
        }
    }
    return acc;
}
