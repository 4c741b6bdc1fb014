/* Direct convolution over NHWC arrays for one element type (REAL, names ending in SUFFIX): the forward
 * pass and the kernel's gradient, with no im2col matrix and no padded copy of the input.
 *
 * im2col copies every input cell kernel_h x kernel_w times into a matrix that, for a 32 x 32 x 16 batch of
 * 64, is 38 MB: more time goes into writing and reading it than into the GEMM, and the GEMM's shape (65,536
 * rows by 16 columns) is one BLAS runs at half speed. Here the GEMM's tiles read the input in place: the
 * window cell of an output pixel at kernel offset (i, j) is `c` contiguous values, so for each offset a
 * tile of output pixels is a block of rows of A, one pointer per pixel. A cell in the padding points at a
 * row of zeros instead, so the input is never copied to pad it.
 *
 * The register tiling is gemm_impl.h's: a tile of up to 6 output pixels by one panel of PANEL filters
 * (two vectors), accumulated in registers over every kernel offset and channel before it is stored once.
 * The input gradient of a stride-1 convolution is a convolution too (of the output gradient, padded by
 * the window's reach less the forward padding, with the flipped, transposed kernel), so the caller runs
 * it through `conv_forward`.
 */

#define LANES (int)(32 / sizeof(REAL))
#define PANEL (2 * LANES)
#define MAX_TILE_ROWS 6
typedef REAL NAME(conv_vec) __attribute__((vector_size(32), aligned(sizeof(REAL))));
#define VEC NAME(conv_vec)

/* The geometry: the input (unpadded), the output grid, the kernel, strides, dilation, filters and the
 * padding before the first row and column (the padding after them follows from the output's size). */
typedef struct {
    long h, w, c, out_h, out_w, kernel_h, kernel_w, stride_h, stride_w, dilation_h, dilation_w, filters;
    long pad_top, pad_left;
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

/* Where the windows of output pixels [first, first + rows) start (pixels numbered image by image, row by
 * row): each pixel's image and the input row and column of its window's first cell, which may lie in
 * the padding. */
typedef struct {
    const REAL *image[MAX_TILE_ROWS];
    long y[MAX_TILE_ROWS], x[MAX_TILE_ROWS];
} NAME(windows);

static inline __attribute__((always_inline)) void NAME(find_windows)(const int rows, const NAME(conv_shape) *s,
                                                                     const REAL *x, long first,
                                                                     NAME(windows) *found) {
    const long per_image = s->out_h * s->out_w;
    long image = first / per_image, oy = first % per_image / s->out_w, ox = first % s->out_w;
    for (int r = 0; r < rows; r++) {
        found->image[r] = x + image * s->h * s->w * s->c;
        found->y[r] = oy * s->stride_h - s->pad_top;
        found->x[r] = ox * s->stride_w - s->pad_left;
        if (++ox == s->out_w) {  /* the next pixel starts the next output row, or the next image */
            ox = 0;
            if (++oy == s->out_h) {
                oy = 0;
                image++;
            }
        }
    }
}

/* Output pixels [first, first + rows), one panel of filters: panel is the packed kernel
 * ([kernel_h][kernel_w][c] rows of PANEL values), zeros at least c zeros. Pixels anywhere in the batch
 * share a tile, so a tile is full whatever the output's width. */
static inline __attribute__((always_inline)) void NAME(conv_tile)(const int rows, const NAME(conv_shape) *s,
                                                                  const REAL *x, long first,
                                                                  const REAL *restrict panel, long width,
                                                                  const REAL *zeros, REAL *restrict out,
                                                                  long ldo) {
    NAME(windows) win;
    NAME(find_windows)(rows, s, x, first, &win);
    const VEC zero = {0};
    VEC acc[MAX_TILE_ROWS][2];
    for (int r = 0; r < rows; r++) acc[r][0] = acc[r][1] = zero;
    /* Most tiles lie wholly inside the input: their cells need no bounds checks. */
    const long reach_h = (s->kernel_h - 1) * s->dilation_h, reach_w = (s->kernel_w - 1) * s->dilation_w;
    int interior = 1;
    const REAL *origin[MAX_TILE_ROWS];
    for (int r = 0; r < rows; r++) {
        interior &= win.y[r] >= 0 && win.y[r] + reach_h < s->h && win.x[r] >= 0 && win.x[r] + reach_w < s->w;
        origin[r] = win.image[r] + (win.y[r] * s->w + win.x[r]) * s->c;
    }
    if (interior) {  /* each cell straight from its pixel's window origin: no per-offset pointer work */
        const REAL *b = panel;
        for (long i = 0; i < s->kernel_h; i++)
            for (long j = 0; j < s->kernel_w; j++) {
                const long offset = (i * s->dilation_h * s->w + j * s->dilation_w) * s->c;
                for (long p = 0; p < s->c; p++, b += PANEL) {
                    VEC b0 = *(const VEC *)b, b1 = *(const VEC *)(b + LANES);
                    for (int r = 0; r < rows; r++) {
                        REAL av = origin[r][offset + p];
                        acc[r][0] += av * b0;
                        acc[r][1] += av * b1;
                    }
                }
            }
        NAME(store_tile)(rows, acc, width, out, ldo);
        return;
    }
    for (long i = 0; i < s->kernel_h; i++)
        for (long j = 0; j < s->kernel_w; j++) {
            const REAL *a[MAX_TILE_ROWS];
            const long offset = (i * s->dilation_h * s->w + j * s->dilation_w) * s->c;
            for (int r = 0; r < rows; r++) {
                const long y = win.y[r] + i * s->dilation_h, x_ = win.x[r] + j * s->dilation_w;
                a[r] = y >= 0 && y < s->h && x_ >= 0 && x_ < s->w ? origin[r] + offset : zeros;
            }
            const REAL *b = panel + (i * s->kernel_w + j) * s->c * PANEL;
            for (long p = 0; p < s->c; p++) {
                VEC b0 = *(const VEC *)(b + p * PANEL), b1 = *(const VEC *)(b + p * PANEL + LANES);
                for (int r = 0; r < rows; r++) {
                    REAL av = a[r][p];
                    acc[r][0] += av * b0;
                    acc[r][1] += av * b1;
                }
            }
        }
    NAME(store_tile)(rows, acc, width, out, ldo);
}

/* Pixels per block: a block's windows stay in L2 while each panel of the kernel, read once per block,
 * stays in L1. */
#define PIXEL_BLOCK 96

/* Output pixels [begin, end) (numbered image by image, row by row) of activation(conv(x, kernel) +
 * bias): x the input [n][h][w][c], packed the kernel [kernel_h * kernel_w * c][filters] packed by
 * `pack_panels`, zeros c zeros, out [n][out_h][out_w][filters]. */
void NAME(conv_forward)(const NAME(conv_shape) *s, long begin, long end, const REAL *x, const REAL *packed,
                        const REAL *bias, int activation, const REAL *zeros, REAL *out) {
    const long depth = s->kernel_h * s->kernel_w * s->c, f = s->filters;
    for (long block = begin; block < end; block += PIXEL_BLOCK) {
        const long block_end = block + PIXEL_BLOCK < end ? block + PIXEL_BLOCK : end;
        for (long j0 = 0; j0 < f; j0 += PANEL) {
            const REAL *panel = packed + (j0 / PANEL) * depth * PANEL;
            const long width = f - j0 < PANEL ? f - j0 : PANEL;
            long q = block;
            for (; q + 6 <= block_end; q += 6)
                NAME(conv_tile)(6, s, x, q, panel, width, zeros, out + q * f + j0, f);
            if (q + 4 <= block_end) {
                NAME(conv_tile)(4, s, x, q, panel, width, zeros, out + q * f + j0, f);
                q += 4;
            }
            if (q + 2 <= block_end) {
                NAME(conv_tile)(2, s, x, q, panel, width, zeros, out + q * f + j0, f);
                q += 2;
            }
            if (q < block_end) NAME(conv_tile)(1, s, x, q, panel, width, zeros, out + q * f + j0, f);
        }
        NAME(bias_activation)(f, block, block_end, out, bias, activation);  /* while the block is in cache */
    }
}

/* A block of the filter gradient's pixels: output rows [oy_begin, oy_end) of `images` consecutive images.
 * Images of fewer than PIXEL_BLOCK pixels go several to a block, larger ones a few rows at a time. */
typedef struct {
    long images, oy_begin, oy_end;
} NAME(pixel_block);

/* The output pixels whose window at kernel offset (i, j) falls inside the input, within a block:
 * rows [oy_begin, oy_end), columns [ox_begin, ox_end); empty when a bound passes the other. */
typedef struct {
    long oy_begin, oy_end, ox_begin, ox_end;
} NAME(inside);

static inline long NAME(ceil_div)(long a, long b) { return a >= 0 ? (a + b - 1) / b : -((-a) / b); }

static NAME(inside) NAME(inside_window)(const NAME(conv_shape) *s, const NAME(pixel_block) *block, long i,
                                        long j) {
    const long dy = s->pad_top - i * s->dilation_h, dx = s->pad_left - j * s->dilation_w;
    NAME(inside) in = {NAME(ceil_div)(dy, s->stride_h), NAME(ceil_div)(s->h + dy, s->stride_h),
                       NAME(ceil_div)(dx, s->stride_w), NAME(ceil_div)(s->w + dx, s->stride_w)};
    in.oy_begin = in.oy_begin > block->oy_begin ? in.oy_begin : block->oy_begin;
    in.oy_end = in.oy_end < block->oy_end ? in.oy_end : block->oy_end;
    in.ox_begin = in.ox_begin > 0 ? in.ox_begin : 0;
    in.ox_end = in.ox_end < s->out_w ? in.ox_end : s->out_w;
    return in;
}

/* Channels [channel, channel + rows) of kernel offset (i, j), one panel of dw (row stride ldw): += the
 * sum over the block's pixels whose window cell is inside the input of x[cell][channel + r] dy[pixel][:],
 * x the block's first image, dy the block's output gradient packed as [pixels][PANEL]. */
static inline __attribute__((always_inline)) void NAME(filter_tile)(const int rows, const NAME(conv_shape) *s,
                                                                    long i, long j, long channel,
                                                                    const REAL *x,
                                                                    const NAME(pixel_block) *block,
                                                                    const NAME(inside) *in,
                                                                    const REAL *restrict dy,
                                                                    REAL *restrict dw, long ldw) {
    VEC acc[MAX_TILE_ROWS][2];
    for (int r = 0; r < rows; r++) {
        acc[r][0] = *(const VEC *)(dw + r * ldw);
        acc[r][1] = *(const VEC *)(dw + r * ldw + LANES);
    }
    const long pixel_step = s->stride_w * s->c, image = s->h * s->w * s->c;
    const long block_rows = block->oy_end - block->oy_begin;
    for (long k = 0; k < block->images; k++)
        for (long oy = in->oy_begin; oy < in->oy_end; oy++) {
            const long y = oy * s->stride_h - s->pad_top + i * s->dilation_h;
            const long x_ = in->ox_begin * s->stride_w - s->pad_left + j * s->dilation_w;
            const REAL *a = x + k * image + (y * s->w + x_) * s->c + channel;
            const REAL *d = dy + ((k * block_rows + oy - block->oy_begin) * s->out_w + in->ox_begin) * PANEL;
            for (long ox = in->ox_begin; ox < in->ox_end; ox++, a += pixel_step, d += PANEL) {
                VEC b0 = *(const VEC *)d, b1 = *(const VEC *)(d + LANES);
                for (int r = 0; r < rows; r++) {
                    REAL av = a[r];
                    acc[r][0] += av * b0;
                    acc[r][1] += av * b1;
                }
            }
        }
    NAME(store_tile)(rows, acc, PANEL, dw, ldw);
}

/* The scratch the filter gradient needs: one block's output gradient, one panel wide. */
long NAME(conv_grad_filter_scratch)(const NAME(conv_shape) *s) {
    return (s->out_w > PIXEL_BLOCK ? s->out_w : PIXEL_BLOCK) * PANEL;
}

/* Panel j0 of the block's output gradient (dy at its first image) as [pixels][PANEL], zero-padded. */
static void NAME(pack_gradient)(const NAME(conv_shape) *s, const NAME(pixel_block) *block, const REAL *dy,
                                long j0, REAL *out) {
    const long f = s->filters, pixels = s->out_h * s->out_w;
    for (long k = 0; k < block->images; k++)
        for (long p = block->oy_begin * s->out_w; p < block->oy_end * s->out_w; p++, out += PANEL)
            for (long j = 0; j < PANEL; j++) out[j] = j0 + j < f ? dy[(k * pixels + p) * f + j0 + j] : 0;
}

/* The filter gradient of one block and one panel: every kernel offset, its channels in tiles. */
static void NAME(filter_block)(const NAME(conv_shape) *s, const NAME(pixel_block) *block, const REAL *x,
                               const REAL *dy, REAL *dw, long ldw) {
    for (long i = 0; i < s->kernel_h; i++)
        for (long j = 0; j < s->kernel_w; j++) {
            const NAME(inside) in = NAME(inside_window)(s, block, i, j);
            if (in.oy_begin >= in.oy_end || in.ox_begin >= in.ox_end) continue;
            REAL *d = dw + (i * s->kernel_w + j) * s->c * ldw;
            long r = 0;
            for (; r + 6 <= s->c; r += 6) NAME(filter_tile)(6, s, i, j, r, x, block, &in, dy, d + r * ldw, ldw);
            if (r + 4 <= s->c) {
                NAME(filter_tile)(4, s, i, j, r, x, block, &in, dy, d + r * ldw, ldw);
                r += 4;
            }
            if (r + 2 <= s->c) {
                NAME(filter_tile)(2, s, i, j, r, x, block, &in, dy, d + r * ldw, ldw);
                r += 2;
            }
            if (r < s->c) NAME(filter_tile)(1, s, i, j, r, x, block, &in, dy, d + r * ldw, ldw);
        }
}

/* The kernel's gradient summed over images [begin, end), added to dw [kernel_h * kernel_w * c][ldw]
 * (ldw: filters rounded up to whole panels): x the input, dy the output gradient
 * [n][out_h][out_w][filters], scratch room for `conv_grad_filter_scratch` values. Every kernel row
 * passes over a block's input and gradient while they are in cache. */
void NAME(conv_grad_filter)(const NAME(conv_shape) *s, long begin, long end, const REAL *x, const REAL *dy,
                            REAL *dw, long ldw, REAL *scratch) {
    const long pixels = s->out_h * s->out_w;
    const long per_block = pixels < PIXEL_BLOCK ? PIXEL_BLOCK / pixels : 1;
    const long block_rows = pixels < PIXEL_BLOCK ? s->out_h : (s->out_w < PIXEL_BLOCK ? PIXEL_BLOCK / s->out_w : 1);
    for (long image = begin; image < end; image += per_block)
        for (long oy = 0; oy < s->out_h; oy += block_rows) {
            const NAME(pixel_block) block = {end - image < per_block ? end - image : per_block, oy,
                                             oy + block_rows < s->out_h ? oy + block_rows : s->out_h};
            for (long j0 = 0; j0 < s->filters; j0 += PANEL) {
                NAME(pack_gradient)(s, &block, dy + image * pixels * s->filters, j0, scratch);
                NAME(filter_block)(s, &block, x + image * s->h * s->w * s->c, scratch, dw + j0, ldw);
            }
        }
}

#undef LANES
#undef PANEL
#undef MAX_TILE_ROWS
#undef PIXEL_BLOCK
#undef VEC
