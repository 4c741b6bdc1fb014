/* Batch normalization's passes over [rows][channels] arrays for one element type (REAL, names ending in
 * SUFFIX): per-channel sums accumulated in double, and a per-channel affine map.
 *
 * NumPy reduces an NHWC batch over its leading axes a short channel row at a time and makes a temporary
 * per step (x - mean, its square, the normalized x, ...); training batchnorm then costs more than the
 * convolution before it. Here the statistics are two read passes (the mean, then the centered moments)
 * and the normalization one pass that writes; the gradient is one read pass and one write pass.
 */

/* Channels summed at a time, in arrays on the stack: the running sums stay in this thread's cache (the
 * callers' buffers for several threads can share a cache line, and adding into them row after row
 * would bounce that line between the cores). */
#define CHANNEL_BLOCK 64

/* sum[c] += sum over rows [begin, end) of (x - shift[c]); square_sum[c] += the same of (x - shift[c])^2. */
void NAME(channel_moments)(long channels, long begin, long end, const REAL *x, const REAL *restrict shift,
                           double *restrict sum, double *restrict square_sum) {
    for (long c0 = 0; c0 < channels; c0 += CHANNEL_BLOCK) {
        const long width = channels - c0 < CHANNEL_BLOCK ? channels - c0 : CHANNEL_BLOCK;
        double s[CHANNEL_BLOCK] = {0}, q[CHANNEL_BLOCK] = {0};
        for (long r = begin; r < end; r++) {
            const REAL *restrict row = x + r * channels + c0;
            for (long c = 0; c < width; c++) {
                double d = (double)(row[c] - shift[c0 + c]);
                s[c] += d;
                q[c] += d * d;
            }
        }
        for (long c = 0; c < width; c++) {
            sum[c0 + c] += s[c];
            square_sum[c0 + c] += q[c];
        }
    }
}

/* sum_dy[c] += sum over rows [begin, end) of dy; sum_dy_x[c] += the same of dy (x - shift[c]). */
void NAME(channel_dot)(long channels, long begin, long end, const REAL *dy, const REAL *x,
                       const REAL *restrict shift, double *restrict sum_dy, double *restrict sum_dy_x) {
    for (long c0 = 0; c0 < channels; c0 += CHANNEL_BLOCK) {
        const long width = channels - c0 < CHANNEL_BLOCK ? channels - c0 : CHANNEL_BLOCK;
        double s[CHANNEL_BLOCK] = {0}, q[CHANNEL_BLOCK] = {0};
        for (long r = begin; r < end; r++) {
            const REAL *restrict g = dy + r * channels + c0, *restrict row = x + r * channels + c0;
            for (long c = 0; c < width; c++) {
                s[c] += (double)g[c];
                q[c] += (double)g[c] * (double)(row[c] - shift[c0 + c]);
            }
        }
        for (long c = 0; c < width; c++) {
            sum_dy[c0 + c] += s[c];
            sum_dy_x[c0 + c] += q[c];
        }
    }
}

/* out = u a[c] + (v - m[c]) b[c] + k[c] over rows [begin, end); without v, out = (u - m[c]) a[c] + k[c];
 * then with relu, out = max(out, 0). Subtracting the batch mean m before scaling keeps a value equal to
 * the mean exactly centred (x a - m a would leave a rounding residue, which relu then lets through). */
void NAME(channel_affine)(long channels, long begin, long end, const REAL *u, const REAL *restrict a,
                          const REAL *v, const REAL *restrict b, const REAL *restrict m, const REAL *restrict k,
                          int relu, REAL *out) {
    for (long r = begin; r < end; r++) {
        const REAL *restrict ur = u + r * channels;
        REAL *restrict o = out + r * channels;
        if (v) {
            const REAL *restrict vr = v + r * channels;
            for (long c = 0; c < channels; c++) o[c] = ur[c] * a[c] + (vr[c] - m[c]) * b[c] + k[c];
        } else if (relu) {
            for (long c = 0; c < channels; c++) {
                REAL y = (ur[c] - m[c]) * a[c] + k[c];
                o[c] = y > 0 ? y : 0;
            }
        } else {
            for (long c = 0; c < channels; c++) o[c] = (ur[c] - m[c]) * a[c] + k[c];
        }
    }
}

#undef CHANNEL_BLOCK
