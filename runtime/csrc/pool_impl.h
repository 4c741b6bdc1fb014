/* Max pooling over NHWC arrays for one element type (REAL, names ending in SUFFIX), forward and
 * gradient, with the semantics of `nnd.runtime.kernels_conv`: padding cells never win, and a window's
 * gradient goes to the first of its maxima in row-major order.
 *
 * Both work on whole rows of channels (the contiguous last axis), in blocks of CHANNEL_BLOCK so that a
 * window's running maximum stays in L1; the loops over channels vectorize. Batch items [begin, end) are
 * one thread's share.
 */
#define CHANNEL_BLOCK 64

/* The geometry shared by both kernels: sizes, window, strides and the top/left padding. */
typedef struct {
    long h, w, c, out_h, out_w, pool_h, pool_w, stride_h, stride_w, top, left;
} NAME(pool_shape);

#define POOL_SHAPE NAME(pool_shape)

/* The window of output cell (oy, ox) clipped to the input: rows [*y0, *y1), columns [*x0, *x1). */
static inline void NAME(pool_window)(const POOL_SHAPE *s, long oy, long ox, long *y0, long *y1, long *x0,
                                     long *x1) {
    long top = oy * s->stride_h - s->top, left = ox * s->stride_w - s->left;
    *y0 = top < 0 ? 0 : top;
    *y1 = top + s->pool_h < s->h ? top + s->pool_h : s->h;
    *x0 = left < 0 ? 0 : left;
    *x1 = left + s->pool_w < s->w ? left + s->pool_w : s->w;
}

/* The maximum of one window over channels [k0, k0 + width) into best. */
static inline void NAME(window_max)(const POOL_SHAPE *s, const REAL *image, long y0, long y1, long x0,
                                    long x1, long k0, long width, REAL *restrict best) {
    const REAL *first = image + (y0 * s->w + x0) * s->c + k0;
    for (long k = 0; k < width; k++) best[k] = first[k];
    for (long y = y0; y < y1; y++)
        for (long x = y == y0 ? x0 + 1 : x0; x < x1; x++) {
            const REAL *restrict cell = image + (y * s->w + x) * s->c + k0;
            for (long k = 0; k < width; k++) /* a NaN wins, as in PyTorch and NumPy's maximum */
                best[k] = cell[k] > best[k] || cell[k] != cell[k] ? cell[k] : best[k];
        }
}

void NAME(maxpool2d)(const POOL_SHAPE *s, long begin, long end, const REAL *x, REAL *out) {
    for (long b = begin; b < end; b++) {
        const REAL *image = x + b * s->h * s->w * s->c;
        for (long oy = 0; oy < s->out_h; oy++)
            for (long ox = 0; ox < s->out_w; ox++) {
                long y0, y1, x0, x1;
                NAME(pool_window)(s, oy, ox, &y0, &y1, &x0, &x1);
                REAL *cell = out + ((b * s->out_h + oy) * s->out_w + ox) * s->c;
                if (y0 >= y1 || x0 >= x1) { /* a window of padding only */
                    for (long k = 0; k < s->c; k++) cell[k] = -INFINITY;
                    continue;
                }
                for (long k0 = 0; k0 < s->c; k0 += CHANNEL_BLOCK) {
                    long width = s->c - k0 < CHANNEL_BLOCK ? s->c - k0 : CHANNEL_BLOCK;
                    NAME(window_max)(s, image, y0, y1, x0, x1, k0, width, cell + k0);
                }
            }
    }
}

/* One window's gradient over channels [k0, k0 + width): dy goes to the first cell holding the maximum
 * (only when that maximum is positive, if relu), written into dx when windows tile the input (zero to
 * the cells that lose), added to it otherwise. */
static inline void NAME(window_grad)(const POOL_SHAPE *s, const REAL *image, REAL *grad, const REAL *dy,
                                     long y0, long y1, long x0, long x1, long k0, long width, int relu,
                                     int tiled) {
    REAL best[CHANNEL_BLOCK], pending[CHANNEL_BLOCK];
    NAME(window_max)(s, image, y0, y1, x0, x1, k0, width, best);
    for (long k = 0; k < width; k++) pending[k] = relu && !(best[k] > 0) ? 0 : dy[k];
    for (long y = y0; y < y1; y++)
        for (long x = x0; x < x1; x++) {
            const REAL *restrict cell = image + (y * s->w + x) * s->c + k0;
            REAL *restrict target = grad + (y * s->w + x) * s->c + k0;
            for (long k = 0; k < width; k++) {
                int wins = cell[k] == best[k] || (cell[k] != cell[k] && best[k] != best[k]);
                REAL share = wins ? pending[k] : 0;
                pending[k] = wins ? 0 : pending[k]; /* later ties get nothing */
                target[k] = tiled ? share : target[k] + share;
            }
        }
}

/* tiled: the windows tile the input (strides equal to the window, no padding), so every cell inside
 * one is written and only the rows and columns past the last window are zeroed here; otherwise dx must
 * be zero on entry and the gradient is added to it. */
void NAME(maxpool2d_grad)(const POOL_SHAPE *s, long begin, long end, const REAL *x, const REAL *dy,
                          REAL *dx, int relu, int tiled) {
    for (long b = begin; b < end; b++) {
        const REAL *image = x + b * s->h * s->w * s->c;
        REAL *grad = dx + b * s->h * s->w * s->c;
        if (tiled) {
            for (long y = 0; y < s->h; y++)
                for (long x = y < s->out_h * s->pool_h ? s->out_w * s->pool_w : 0; x < s->w; x++)
                    memset(grad + (y * s->w + x) * s->c, 0, sizeof(REAL) * s->c);
        }
        for (long oy = 0; oy < s->out_h; oy++)
            for (long ox = 0; ox < s->out_w; ox++) {
                long y0, y1, x0, x1;
                NAME(pool_window)(s, oy, ox, &y0, &y1, &x0, &x1);
                if (y0 >= y1 || x0 >= x1) continue;
                const REAL *d = dy + ((b * s->out_h + oy) * s->out_w + ox) * s->c;
                for (long k0 = 0; k0 < s->c; k0 += CHANNEL_BLOCK) {
                    long width = s->c - k0 < CHANNEL_BLOCK ? s->c - k0 : CHANNEL_BLOCK;
                    NAME(window_grad)(s, image, grad, d + k0, y0, y1, x0, x1, k0, width, relu, tiled);
                }
            }
    }
}

#undef CHANNEL_BLOCK
#undef POOL_SHAPE
