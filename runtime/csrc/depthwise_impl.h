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

/* The input cell under kernel offset (i, j) of output pixel (oy, ox), or -1 in the padding. */
static inline long NAME(depthwise_cell)(const NAME(depthwise_shape) *s, long oy, long ox, long i, long j) {
    long y = oy * s->stride_h + i * s->dilation_h - s->pad_top;
    long x = ox * s->stride_w + j * s->dilation_w - s->pad_left;
    if (y < 0 || y >= s->h || x < 0 || x >= s->w) return -1;
    return y * s->w + x;
}

void NAME(depthwise_forward)(const NAME(depthwise_shape) *s, long begin, long end, const REAL *x,
                             const REAL *kernel, REAL *out) {
    const long c = s->c, dm = s->dm, width = c * dm;
    for (long b = begin; b < end; b++) {
        const REAL *image = x + b * s->h * s->w * c;
        for (long oy = 0; oy < s->out_h; oy++)
            for (long ox = 0; ox < s->out_w; ox++) {
                REAL *restrict o = out + ((b * s->out_h + oy) * s->out_w + ox) * width;
                memset(o, 0, sizeof(REAL) * width);
                for (long i = 0; i < s->kernel_h; i++)
                    for (long j = 0; j < s->kernel_w; j++) {
                        long cell = NAME(depthwise_cell)(s, oy, ox, i, j);
                        if (cell < 0) continue;
                        const REAL *restrict in = image + cell * c;
                        const REAL *restrict k = kernel + (i * s->kernel_w + j) * width;
                        if (dm == 1)
                            for (long ch = 0; ch < c; ch++) o[ch] += in[ch] * k[ch];
                        else
                            for (long ch = 0; ch < c; ch++)
                                for (long m = 0; m < dm; m++) o[ch * dm + m] += in[ch] * k[ch * dm + m];
                    }
            }
    }
}

/* dx (the unpadded input's shape) for images [begin, end): every output pixel's gradient, weighted by
 * each offset's kernel, added into the input cell it read. */
void NAME(depthwise_grad_input)(const NAME(depthwise_shape) *s, long begin, long end, const REAL *dy,
                                const REAL *kernel, REAL *dx) {
    const long c = s->c, dm = s->dm, width = c * dm;
    for (long b = begin; b < end; b++) {
        REAL *image = dx + b * s->h * s->w * c;
        memset(image, 0, sizeof(REAL) * s->h * s->w * c);
        for (long oy = 0; oy < s->out_h; oy++)
            for (long ox = 0; ox < s->out_w; ox++) {
                const REAL *restrict g = dy + ((b * s->out_h + oy) * s->out_w + ox) * width;
                for (long i = 0; i < s->kernel_h; i++)
                    for (long j = 0; j < s->kernel_w; j++) {
                        long cell = NAME(depthwise_cell)(s, oy, ox, i, j);
                        if (cell < 0) continue;
                        REAL *restrict d = image + cell * c;
                        const REAL *restrict k = kernel + (i * s->kernel_w + j) * width;
                        if (dm == 1)
                            for (long ch = 0; ch < c; ch++) d[ch] += g[ch] * k[ch];
                        else
                            for (long ch = 0; ch < c; ch++) {
                                REAL sum = 0;
                                for (long m = 0; m < dm; m++) sum += g[ch * dm + m] * k[ch * dm + m];
                                d[ch] += sum;
                            }
                    }
            }
    }
}

/* The kernel's gradient summed over images [begin, end) into dw (kh, kw, c, dm), which the caller
 * zeroes: a buffer per thread, added up afterwards. */
void NAME(depthwise_grad_filter)(const NAME(depthwise_shape) *s, long begin, long end, const REAL *x,
                                 const REAL *dy, REAL *dw) {
    const long c = s->c, dm = s->dm, width = c * dm;
    for (long b = begin; b < end; b++) {
        const REAL *image = x + b * s->h * s->w * c;
        for (long oy = 0; oy < s->out_h; oy++)
            for (long ox = 0; ox < s->out_w; ox++) {
                const REAL *restrict g = dy + ((b * s->out_h + oy) * s->out_w + ox) * width;
                for (long i = 0; i < s->kernel_h; i++)
                    for (long j = 0; j < s->kernel_w; j++) {
                        long cell = NAME(depthwise_cell)(s, oy, ox, i, j);
                        if (cell < 0) continue;
                        const REAL *restrict in = image + cell * c;
                        REAL *restrict d = dw + (i * s->kernel_w + j) * width;
                        if (dm == 1)
                            for (long ch = 0; ch < c; ch++) d[ch] += in[ch] * g[ch];
                        else
                            for (long ch = 0; ch < c; ch++)
                                for (long m = 0; m < dm; m++) d[ch * dm + m] += in[ch] * g[ch * dm + m];
                    }
            }
    }
}
