/* The depthwise convolution over NHWC arrays for one element type (REAL, names ending in SUFFIX): each
 * input channel c convolved with its own dm filters into output channels c*dm + m, kernel (kh, kw, c, dm).
 *
 * The array-module version makes a pass over the whole batch per kernel offset, and its gradients add
 * into strided views; here each output pixel's window is read once while its row of channels is in
 * cache, the channel loop innermost (contiguous in the input, the kernel and the output) so that it
 * vectorizes. Window cells in the padding are skipped. Each call covers images [begin, end). */

typedef struct {
    long h, w, c, dm, out_h, out_w, kernel_h, kernel_w, stride_h, stride_w, dilation_h, dilation_w, pad_top,
        pad_left;
} NAME(depthwise_shape);

/* The output columns [*lo, *hi) whose window cell at kernel column j lies inside the input (not in the
 * left or right padding). */
static inline void NAME(depthwise_columns)(const NAME(depthwise_shape) *s, long j, long *lo, long *hi) {
    long offset = j * s->dilation_w - s->pad_left;  /* input column of output column 0 */
    long first = offset >= 0 ? 0 : (-offset + s->stride_w - 1) / s->stride_w;
    long last = (s->w - 1 - offset) / s->stride_w + 1;  /* one past the last inside */
    *lo = first;
    *hi = s->w - 1 - offset < 0 ? first : (last < s->out_w ? last : s->out_w);
}

/* The input row under kernel row i of output row oy, or -1 in the padding. */
static inline long NAME(depthwise_row)(const NAME(depthwise_shape) *s, long oy, long i) {
    long y = oy * s->stride_h + i * s->dilation_h - s->pad_top;
    return y < 0 || y >= s->h ? -1 : y;
}

/* The loops below go over output rows, then kernel offsets, then the output columns that offset reaches
 * inside the input, with the channels innermost: no bounds test in the inner loops. */

void NAME(depthwise_forward)(const NAME(depthwise_shape) *s, long begin, long end, const REAL *x,
                             const REAL *kernel, REAL *out) {
    const long c = s->c, dm = s->dm, width = c * dm, step = s->stride_w * c;
    for (long b = begin; b < end; b++)
        for (long oy = 0; oy < s->out_h; oy++) {
            REAL *row = out + (b * s->out_h + oy) * s->out_w * width;
            memset(row, 0, sizeof(REAL) * s->out_w * width);
            for (long i = 0; i < s->kernel_h; i++) {
                long y = NAME(depthwise_row)(s, oy, i);
                if (y < 0) continue;
                const REAL *line = x + (b * s->h + y) * s->w * c;
                for (long j = 0; j < s->kernel_w; j++) {
                    long lo, hi;
                    NAME(depthwise_columns)(s, j, &lo, &hi);
                    const REAL *restrict k = kernel + (i * s->kernel_w + j) * width;
                    const REAL *in = line + (lo * s->stride_w + j * s->dilation_w - s->pad_left) * c;
                    for (long ox = lo; ox < hi; ox++, in += step) {
                        REAL *restrict o = row + ox * width;
                        const REAL *restrict v = in;
                        if (dm == 1)
                            for (long ch = 0; ch < c; ch++) o[ch] += v[ch] * k[ch];
                        else
                            for (long ch = 0; ch < c; ch++)
                                for (long m = 0; m < dm; m++) o[ch * dm + m] += v[ch] * k[ch * dm + m];
                    }
                }
            }
        }
}

/* dx (the unpadded input's shape) for images [begin, end): every output pixel's gradient, weighted by
 * each offset's kernel, added into the input cell it read. */
void NAME(depthwise_grad_input)(const NAME(depthwise_shape) *s, long begin, long end, const REAL *dy,
                                const REAL *kernel, REAL *dx) {
    const long c = s->c, dm = s->dm, width = c * dm, step = s->stride_w * c;
    for (long b = begin; b < end; b++) {
        memset(dx + b * s->h * s->w * c, 0, sizeof(REAL) * s->h * s->w * c);
        for (long oy = 0; oy < s->out_h; oy++) {
            const REAL *row = dy + (b * s->out_h + oy) * s->out_w * width;
            for (long i = 0; i < s->kernel_h; i++) {
                long y = NAME(depthwise_row)(s, oy, i);
                if (y < 0) continue;
                REAL *line = dx + (b * s->h + y) * s->w * c;
                for (long j = 0; j < s->kernel_w; j++) {
                    long lo, hi;
                    NAME(depthwise_columns)(s, j, &lo, &hi);
                    const REAL *restrict k = kernel + (i * s->kernel_w + j) * width;
                    REAL *d = line + (lo * s->stride_w + j * s->dilation_w - s->pad_left) * c;
                    for (long ox = lo; ox < hi; ox++, d += step) {
                        const REAL *restrict g = row + ox * width;
                        REAL *restrict target = d;
                        if (dm == 1)
                            for (long ch = 0; ch < c; ch++) target[ch] += g[ch] * k[ch];
                        else
                            for (long ch = 0; ch < c; ch++) {
                                REAL sum = 0;
                                for (long m = 0; m < dm; m++) sum += g[ch * dm + m] * k[ch * dm + m];
                                target[ch] += sum;
                            }
                    }
                }
            }
        }
    }
}

/* The kernel's gradient summed over images [begin, end) into dw (kh, kw, c, dm), which the caller
 * zeroes: a buffer per thread, added up afterwards. */
void NAME(depthwise_grad_filter)(const NAME(depthwise_shape) *s, long begin, long end, const REAL *x,
                                 const REAL *dy, REAL *dw) {
    const long c = s->c, dm = s->dm, width = c * dm, step = s->stride_w * c;
    for (long b = begin; b < end; b++)
        for (long oy = 0; oy < s->out_h; oy++) {
            const REAL *row = dy + (b * s->out_h + oy) * s->out_w * width;
            for (long i = 0; i < s->kernel_h; i++) {
                long y = NAME(depthwise_row)(s, oy, i);
                if (y < 0) continue;
                const REAL *line = x + (b * s->h + y) * s->w * c;
                for (long j = 0; j < s->kernel_w; j++) {
                    long lo, hi;
                    NAME(depthwise_columns)(s, j, &lo, &hi);
                    REAL *restrict d = dw + (i * s->kernel_w + j) * width;
                    const REAL *in = line + (lo * s->stride_w + j * s->dilation_w - s->pad_left) * c;
                    for (long ox = lo; ox < hi; ox++, in += step) {
                        const REAL *restrict g = row + ox * width;
                        const REAL *restrict v = in;
                        if (dm == 1)
                            for (long ch = 0; ch < c; ch++) d[ch] += v[ch] * g[ch];
                        else
                            for (long ch = 0; ch < c; ch++)
                                for (long m = 0; m < dm; m++) d[ch * dm + m] += v[ch] * g[ch * dm + m];
                    }
                }
            }
        }
}
