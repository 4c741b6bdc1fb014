/* Direct convolution over NHWC arrays for one element type (REAL, names ending in SUFFIX): the forward
 * pass and the kernel's gradient, with no im2col matrix.
 *
 * im2col copies every input cell kernel_h x kernel_w times into a matrix that, for a 32 x 32 x 16 batch of
 * 64, is 38 MB: more time goes into writing and reading it than into the GEMM, and the GEMM's shape (65,536
 * rows by 16 columns) is one BLAS runs at half speed. Here the GEMM's tiles read the input in place: the
 * window of an output pixel at kernel offset (i, j) is `c` contiguous values, and the next pixel's is
 * `stride_w * c` further on, so a tile of output pixels is a strided row block of A for each offset.
 *
 * The register tiling is gemm_impl.h's: a tile of up to 6 output rows by one panel of PANEL columns (two
 * vectors), accumulated in registers over every kernel offset and channel before it is stored once.
 * The input gradient of a stride-1 convolution is a convolution too (of the padded output gradient
 * with the flipped, transposed kernel), so the caller runs it through `conv_forward`.
 */

#define LANES (int)(32 / sizeof(REAL))
#define PANEL (2 * LANES)
#define MAX_TILE_ROWS 6
typedef REAL NAME(conv_vec) __attribute__((vector_size(32), aligned(sizeof(REAL))));
#define VEC NAME(conv_vec)

/* The geometry: the input (already padded), the output grid, the kernel, strides, dilation, filters. */
typedef struct {
    long h, w, c, out_h, out_w, kernel_h, kernel_w, stride_h, stride_w, dilation_h, dilation_w, filters;
} NAME(conv_shape);

/* Stores a tile's accumulators, all PANEL columns or the first `width` of them. */
static inline __attribute__((always_inline)) void NAME(store_tile)(const int rows, VEC acc[][2], long width,
                                                                   REAL *out, long ldo) {
    for (int r = 0; r < rows; r++) {
        if (width == PANEL) {
            *(VEC *)(out + r * ldo) = acc[r][0];
            *(VEC *)(out + r * ldo + LANES) = acc[r][1];
        } else {
            REAL row[PANEL];
            *(VEC *)row = acc[r][0];
            *(VEC *)(row + LANES) = acc[r][1];
            for (long j = 0; j < width; j++) out[r * ldo + j] = row[j];
        }
    }
}

/* `rows` consecutive output pixels of one output row, one panel of filters: x points at the first
 * pixel's window origin, panel at the packed kernel ([kernel_h][kernel_w][c] rows of PANEL values). */
static inline __attribute__((always_inline)) void NAME(conv_tile)(const int rows, const NAME(conv_shape) *s,
                                                                  const REAL *restrict x,
                                                                  const REAL *restrict panel, long width,
                                                                  REAL *restrict out, long ldo) {
    const VEC zero = {0};
    VEC acc[MAX_TILE_ROWS][2];
    for (int r = 0; r < rows; r++) acc[r][0] = acc[r][1] = zero;
    const long pixel_step = s->stride_w * s->c;
    for (long i = 0; i < s->kernel_h; i++)
        for (long j = 0; j < s->kernel_w; j++) {
            const REAL *a = x + (i * s->dilation_h * s->w + j * s->dilation_w) * s->c;
            const REAL *b = panel + (i * s->kernel_w + j) * s->c * PANEL;
            for (long p = 0; p < s->c; p++) {
                VEC b0 = *(const VEC *)(b + p * PANEL), b1 = *(const VEC *)(b + p * PANEL + LANES);
                for (int r = 0; r < rows; r++) {
                    REAL av = a[r * pixel_step + p];
                    acc[r][0] += av * b0;
                    acc[r][1] += av * b1;
                }
            }
        }
    NAME(store_tile)(rows, acc, width, out, ldo);
}

/* Output rows [begin, end) (row = image * out_h + oy) of activation(conv(x, kernel) + bias): x the padded
 * input [n][h][w][c], packed the kernel as [kernel_h * kernel_w * c][filters] packed by `pack_panels`,
 * out [n][out_h][out_w][filters]. */
void NAME(conv_forward)(const NAME(conv_shape) *s, long begin, long end, const REAL *x, const REAL *packed,
                        const REAL *bias, int activation, REAL *out) {
    const long depth = s->kernel_h * s->kernel_w * s->c, f = s->filters;
    for (long row = begin; row < end; row++) {
        const long image = row / s->out_h, oy = row % s->out_h;
        const REAL *x_row = x + (image * s->h + oy * s->stride_h) * s->w * s->c;
        REAL *out_row = out + row * s->out_w * f;
        for (long j0 = 0; j0 < f; j0 += PANEL) {
            const REAL *panel = packed + (j0 / PANEL) * depth * PANEL;
            const long width = f - j0 < PANEL ? f - j0 : PANEL, step = s->stride_w * s->c;
            long ox = 0;
            for (; ox + 6 <= s->out_w; ox += 6)
                NAME(conv_tile)(6, s, x_row + ox * step, panel, width, out_row + ox * f + j0, f);
            if (ox + 4 <= s->out_w) {
                NAME(conv_tile)(4, s, x_row + ox * step, panel, width, out_row + ox * f + j0, f);
                ox += 4;
            }
            if (ox + 2 <= s->out_w) {
                NAME(conv_tile)(2, s, x_row + ox * step, panel, width, out_row + ox * f + j0, f);
                ox += 2;
            }
            if (ox < s->out_w) NAME(conv_tile)(1, s, x_row + ox * step, panel, width, out_row + ox * f + j0, f);
        }
        NAME(bias_activation)(f, 0, s->out_w, out_row, bias, activation);  /* while the row is in cache */
    }
}

/* dw[rows][PANEL] += the sum over the pixels of one image of x[pixel][r] dy[pixel][:]: x points at the
 * first pixel's value of channel r = 0 at this kernel offset, dy is the image's output gradient packed as
 * [out_h * out_w][PANEL]. */
static inline __attribute__((always_inline)) void NAME(filter_tile)(const int rows, const NAME(conv_shape) *s,
                                                                    const REAL *restrict x,
                                                                    const REAL *restrict dy,
                                                                    REAL *restrict dw, long ldw) {
    VEC acc[MAX_TILE_ROWS][2];
    for (int r = 0; r < rows; r++) {
        acc[r][0] = *(const VEC *)(dw + r * ldw);
        acc[r][1] = *(const VEC *)(dw + r * ldw + LANES);
    }
    const long pixel_step = s->stride_w * s->c, row_step = s->stride_h * s->w * s->c;
    for (long oy = 0; oy < s->out_h; oy++) {
        const REAL *a = x + oy * row_step;
        const REAL *d = dy + oy * s->out_w * PANEL;
        for (long ox = 0; ox < s->out_w; ox++) {
            VEC b0 = *(const VEC *)(d + ox * PANEL), b1 = *(const VEC *)(d + ox * PANEL + LANES);
            for (int r = 0; r < rows; r++) {
                REAL av = a[ox * pixel_step + r];
                acc[r][0] += av * b0;
                acc[r][1] += av * b1;
            }
        }
    }
    NAME(store_tile)(rows, acc, PANEL, dw, ldw);
}

/* The kernel's gradient summed over images [begin, end), added to dw [kernel_h * kernel_w * c][ldw]
 * (ldw: filters rounded up to whole panels): x the padded input, dy the output gradient
 * [n][out_h][out_w][filters], scratch room for out_h * out_w * PANEL values. */
void NAME(conv_grad_filter)(const NAME(conv_shape) *s, long begin, long end, const REAL *x, const REAL *dy,
                            REAL *dw, long ldw, REAL *scratch) {
    const long pixels = s->out_h * s->out_w, f = s->filters, c = s->c;
    for (long image = begin; image < end; image++) {
        const REAL *x_image = x + image * s->h * s->w * c, *dy_image = dy + image * pixels * f;
        for (long j0 = 0; j0 < f; j0 += PANEL) {
            for (long p = 0; p < pixels; p++)
                for (long j = 0; j < PANEL; j++) scratch[p * PANEL + j] = j0 + j < f ? dy_image[p * f + j0 + j] : 0;
            for (long i = 0; i < s->kernel_h; i++)
                for (long j = 0; j < s->kernel_w; j++) {
                    const REAL *a = x_image + (i * s->dilation_h * s->w + j * s->dilation_w) * c;
                    REAL *d = dw + (i * s->kernel_w + j) * c * ldw + j0;
                    long r = 0;
                    for (; r + 6 <= c; r += 6) NAME(filter_tile)(6, s, a + r, scratch, d + r * ldw, ldw);
                    if (r + 4 <= c) {
                        NAME(filter_tile)(4, s, a + r, scratch, d + r * ldw, ldw);
                        r += 4;
                    }
                    if (r + 2 <= c) {
                        NAME(filter_tile)(2, s, a + r, scratch, d + r * ldw, ldw);
                        r += 2;
                    }
                    if (r < c) NAME(filter_tile)(1, s, a + r, scratch, d + r * ldw, ldw);
                }
        }
    }
}

#undef LANES
#undef PANEL
#undef MAX_TILE_ROWS
#undef VEC
