/* Convolution helpers over NHWC arrays for one element type (REAL, names ending in SUFFIX): the
 * bias-and-activation epilogue in one pass, and col2im for the input gradient.
 *
 * NumPy's epilogue is two passes (the bias add, then the activation), and its maximum runs at half the
 * speed of an add; its col2im is one strided add per kernel offset. Here each is one pass over memory.
 */

/* out[r][c] = activation(out[r][c] + bias[c]) for rows [begin, end), in place. */
void NAME(bias_activation)(long channels, long begin, long end, REAL *out, const REAL *bias, int activation) {
    for (long r = begin; r < end; r++) {
        REAL *restrict row = out + r * channels;
        const REAL *restrict b = bias;
        switch (activation) {
        case ACTIVATION_RELU:
            for (long c = 0; c < channels; c++) {
                REAL v = row[c] + b[c];
                row[c] = v > 0 ? v : 0;
            }
            break;
        case ACTIVATION_SIGMOID:
            for (long c = 0; c < channels; c++) row[c] = NAME(sigmoid)(row[c] + b[c]);
            break;
        case ACTIVATION_TANH:
            for (long c = 0; c < channels; c++) row[c] = NAME(tanh)(row[c] + b[c]);
            break;
        default:
            for (long c = 0; c < channels; c++) row[c] += b[c];
        }
    }
}

/* The geometry of col2im: the padded input, the output grid, the kernel, strides and dilation. */
typedef struct {
    long h, w, c, out_h, out_w, kernel_h, kernel_w, stride_h, stride_w, dilation_h, dilation_w;
} NAME(col2im_shape);

/* dx[b] (padded: h x w x c), for batch items [begin, end), as the sum of every window's columns: row
 * (b, oy, ox) of cols holds kernel_h x kernel_w x c values, each added to the input cell it came from. */
void NAME(col2im)(const NAME(col2im_shape) *s, long begin, long end, const REAL *cols, REAL *dx) {
    const long image = s->h * s->w * s->c, row_width = s->kernel_h * s->kernel_w * s->c;
    for (long b = begin; b < end; b++) {
        REAL *grad = dx + b * image;
        memset(grad, 0, sizeof(REAL) * image);
        for (long oy = 0; oy < s->out_h; oy++)
            for (long ox = 0; ox < s->out_w; ox++) {
                const REAL *row = cols + ((b * s->out_h + oy) * s->out_w + ox) * row_width;
                for (long i = 0; i < s->kernel_h; i++)
                    for (long j = 0; j < s->kernel_w; j++) {
                        long y = oy * s->stride_h + i * s->dilation_h, x = ox * s->stride_w + j * s->dilation_w;
                        REAL *restrict target = grad + (y * s->w + x) * s->c;
                        const REAL *restrict source = row + (i * s->kernel_w + j) * s->c;
                        for (long k = 0; k < s->c; k++) target[k] += source[k];
                    }
            }
    }
}
