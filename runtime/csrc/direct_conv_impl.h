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

/* The input cell at which each of `rows` output pixels' windows starts, from pixel `first` on (pixels
 * numbered image by image, row by row). */
static inline __attribute__((always_inline)) void NAME(window_origins)(const int rows, const NAME(conv_shape) *s,
                                                                       const REAL *x, long first,
                                                                       const REAL **origin) {
    const long per_image = s->out_h * s->out_w;
    long image = first / per_image, oy = first % per_image / s->out_w, ox = first % s->out_w;
    for (int r = 0; r < rows; r++) {
        origin[r] = x + ((image * s->h + oy * s->stride_h) * s->w + ox * s->stride_w) * s->c;
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
 * ([kernel_h][kernel_w][c] rows of PANEL values). Pixels anywhere in the batch share a tile, so a tile
 * is full whatever the output's width. */
static inline __attribute__((always_inline)) void NAME(conv_tile)(const int rows, const NAME(conv_shape) *s,
                                                                  const REAL *x, long first,
                                                                  const REAL *restrict panel, long width,
                                                                  REAL *restrict out, long ldo) {
    const REAL *origin[MAX_TILE_ROWS];
    NAME(window_origins)(rows, s, x, first, origin);
    const VEC zero = {0};
    VEC acc[MAX_TILE_ROWS][2];
    for (int r = 0; r < rows; r++) acc[r][0] = acc[r][1] = zero;
    for (long i = 0; i < s->kernel_h; i++)
        for (long j = 0; j < s->kernel_w; j++) {
            const long offset = (i * s->dilation_h * s->w + j * s->dilation_w) * s->c;
            const REAL *b = panel + (i * s->kernel_w + j) * s->c * PANEL;
            for (long p = 0; p < s->c; p++) {
                VEC b0 = *(const VEC *)(b + p * PANEL), b1 = *(const VEC *)(b + p * PANEL + LANES);
                for (int r = 0; r < rows; r++) {
                    REAL av = origin[r][offset + p];
                    acc[r][0] += av * b0;
                    acc[r][1] += av * b1;
                }
            }
        }
    NAME(store_tile)(rows, acc, width, out, ldo);
}

/* Pixels per block of the forward pass: a block's windows stay in L2 while each panel of the kernel,
 * read once per block, stays in L1. */
#define PIXEL_BLOCK 96

/* Output pixels [begin, end) (numbered image by image, row by row) of activation(conv(x, kernel) +
 * bias): x the padded input [n][h][w][c], packed the kernel [kernel_h * kernel_w * c][filters] packed by
 * `pack_panels`, out [n][out_h][out_w][filters]. */
void NAME(conv_forward)(const NAME(conv_shape) *s, long begin, long end, const REAL *x, const REAL *packed,
                        const REAL *bias, int activation, REAL *out) {
    const long depth = s->kernel_h * s->kernel_w * s->c, f = s->filters;
    for (long block = begin; block < end; block += PIXEL_BLOCK) {
        const long block_end = block + PIXEL_BLOCK < end ? block + PIXEL_BLOCK : end;
        for (long j0 = 0; j0 < f; j0 += PANEL) {
            const REAL *panel = packed + (j0 / PANEL) * depth * PANEL;
            const long width = f - j0 < PANEL ? f - j0 : PANEL;
            long q = block;
            for (; q + 6 <= block_end; q += 6) NAME(conv_tile)(6, s, x, q, panel, width, out + q * f + j0, f);
            if (q + 4 <= block_end) {
                NAME(conv_tile)(4, s, x, q, panel, width, out + q * f + j0, f);
                q += 4;
            }
            if (q + 2 <= block_end) {
                NAME(conv_tile)(2, s, x, q, panel, width, out + q * f + j0, f);
                q += 2;
            }
            if (q < block_end) NAME(conv_tile)(1, s, x, q, panel, width, out + q * f + j0, f);
        }
        NAME(bias_activation)(f, block, block_end, out, bias, activation);  /* while the block is in cache */
    }
}

/* The input offsets (from a window's origin) of the kernel rows [first, first + rows) of the filter
 * gradient, row (i, j, channel) numbered as the HWIO kernel's. */
static inline __attribute__((always_inline)) void NAME(kernel_offsets)(const int rows, const NAME(conv_shape) *s,
                                                                       long first, long *offset) {
    for (int r = 0; r < rows; r++) {
        const long row = first + r, channel = row % s->c, ij = row / s->c;
        offset[r] = ((ij / s->kernel_w) * s->dilation_h * s->w + (ij % s->kernel_w) * s->dilation_w) * s->c + channel;
    }
}

/* A block of the filter gradient's pixels: output rows [oy_begin, oy_end) of `images` consecutive images.
 * Images of fewer than PIXEL_BLOCK pixels go several to a block, larger ones a few rows at a time. */
typedef struct {
    long images, oy_begin, oy_end;
} NAME(pixel_block);

/* Kernel rows [first, first + rows) of dw (row stride ldw), one panel: += the sum over the block's pixels
 * of x[window origin + offset of the row] dy[pixel][:], x the block's first image (padded), dy the
 * block's output gradient packed as [pixels][PANEL]. */
static inline __attribute__((always_inline)) void NAME(filter_tile)(const int rows, const NAME(conv_shape) *s,
                                                                    long first, const REAL *x,
                                                                    const NAME(pixel_block) *block,
                                                                    const REAL *restrict dy,
                                                                    REAL *restrict dw, long ldw) {
    long offset[MAX_TILE_ROWS];
    NAME(kernel_offsets)(rows, s, first, offset);
    VEC acc[MAX_TILE_ROWS][2];
    for (int r = 0; r < rows; r++) {
        acc[r][0] = *(const VEC *)(dw + r * ldw);
        acc[r][1] = *(const VEC *)(dw + r * ldw + LANES);
    }
    const long pixel_step = s->stride_w * s->c, row_step = s->stride_h * s->w * s->c, image = s->h * s->w * s->c;
    for (long k = 0; k < block->images; k++)
        for (long oy = block->oy_begin; oy < block->oy_end; oy++) {
            const REAL *a = x + k * image + oy * row_step;
            for (long ox = 0; ox < s->out_w; ox++, a += pixel_step, dy += PANEL) {
                VEC b0 = *(const VEC *)dy, b1 = *(const VEC *)(dy + LANES);
                for (int r = 0; r < rows; r++) {
                    REAL av = a[offset[r]];
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

/* The kernel's gradient summed over images [begin, end), added to dw [kernel_h * kernel_w * c][ldw]
 * (ldw: filters rounded up to whole panels): x the padded input, dy the output gradient
 * [n][out_h][out_w][filters], scratch room for `conv_grad_filter_scratch` values. Every kernel row
 * passes over a block's input and gradient while they are in cache. */
void NAME(conv_grad_filter)(const NAME(conv_shape) *s, long begin, long end, const REAL *x, const REAL *dy,
                            REAL *dw, long ldw, REAL *scratch) {
    const long pixels = s->out_h * s->out_w, depth = s->kernel_h * s->kernel_w * s->c;
    const long per_block = pixels < PIXEL_BLOCK ? PIXEL_BLOCK / pixels : 1;
    const long block_rows = pixels < PIXEL_BLOCK ? s->out_h : (s->out_w < PIXEL_BLOCK ? PIXEL_BLOCK / s->out_w : 1);
    for (long image = begin; image < end; image += per_block)
        for (long oy = 0; oy < s->out_h; oy += block_rows) {
            const NAME(pixel_block) block = {end - image < per_block ? end - image : per_block, oy,
                                             oy + block_rows < s->out_h ? oy + block_rows : s->out_h};
            const REAL *x_block = x + image * s->h * s->w * s->c;
            for (long j0 = 0; j0 < s->filters; j0 += PANEL) {
                NAME(pack_gradient)(s, &block, dy + image * pixels * s->filters, j0, scratch);
                REAL *d = dw + j0;
                long r = 0;
                for (; r + 6 <= depth; r += 6) NAME(filter_tile)(6, s, r, x_block, &block, scratch, d + r * ldw, ldw);
                if (r + 4 <= depth) {
                    NAME(filter_tile)(4, s, r, x_block, &block, scratch, d + r * ldw, ldw);
                    r += 4;
                }
                if (r + 2 <= depth) {
                    NAME(filter_tile)(2, s, r, x_block, &block, scratch, d + r * ldw, ldw);
                    r += 2;
                }
                if (r < depth) NAME(filter_tile)(1, s, r, x_block, &block, scratch, d + r * ldw, ldw);
            }
        }
}

#undef LANES
#undef PANEL
#undef MAX_TILE_ROWS
#undef PIXEL_BLOCK
#undef VEC
