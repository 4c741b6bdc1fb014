/* The kernels of `nnd_native.c` for one element type: REAL, with names ending in SUFFIX and EXP as e^x.
 *
 * Layouts follow `nnd.runtime.kernels_recurrent`: saved tensors are time-major and contiguous
 * ([T][N][units], gates [T][N][4 units] in Keras' order i, f, c, o); the projected inputs and the
 * incoming output gradients are strided views, passed as a pointer to their first element in
 * processing order and the element strides between steps and between rows.
 */

static inline REAL NAME(sigmoid)(REAL x) { return (REAL)1 / ((REAL)1 + EXP(-x)); }

/* tanh(x) = 2 sigmoid(2x) - 1: exact limits at both ends, absolute error of a few ulps of 1 near 0. */
static inline REAL NAME(tanh)(REAL x) { return (REAL)2 / ((REAL)1 + EXP(-2 * x)) - (REAL)1; }

/* One row of an LSTM step: z (the 4 units pre-activations) becomes the activated gates in place; writes
 * the new cell state c and output h. Separate restrict pointers per gate let the loop vectorize. */
static inline void NAME(lstm_row)(long units, REAL *restrict z, const REAL *restrict c_prev,
                                  REAL *restrict c_out, REAL *restrict h_out) {
    REAL *restrict zi = z, *restrict zf = z + units, *restrict zc = z + 2 * units, *restrict zo = z + 3 * units;
    for (long j = 0; j < units; j++) {
        REAL i = NAME(sigmoid)(zi[j]), f = NAME(sigmoid)(zf[j]);
        REAL cand = NAME(tanh)(zc[j]), o = NAME(sigmoid)(zo[j]);
        REAL c = f * c_prev[j] + i * cand;
        zi[j] = i;
        zf[j] = f;
        zc[j] = cand;
        zo[j] = o;
        c_out[j] = c;
        h_out[j] = o * NAME(tanh)(c);
    }
}

/* One row of an LSTM step backwards: from the gradients dh, dc of the step's outputs (dc updated in
 * place to the gradient of c_{t-1}) to the gradients dg of the four pre-activations. */
static inline void NAME(lstm_row_backward)(long units, const REAL *restrict g, const REAL *restrict c,
                                           const REAL *restrict c_prev, const REAL *restrict dh,
                                           REAL *restrict dc, REAL *restrict dg) {
    const REAL *restrict gi = g, *restrict gf = g + units, *restrict gc = g + 2 * units;
    const REAL *restrict go = g + 3 * units;
    REAL *restrict di = dg, *restrict df = dg + units, *restrict dcand = dg + 2 * units;
    REAL *restrict d_o = dg + 3 * units;
    for (long j = 0; j < units; j++) {
        REAL i = gi[j], f = gf[j], cand = gc[j], o = go[j];
        REAL tc = NAME(tanh)(c[j]);
        REAL dcj = dc[j] + dh[j] * o * (1 - tc * tc);
        di[j] = dcj * cand * i * (1 - i);
        df[j] = dcj * c_prev[j] * f * (1 - f);
        dcand[j] = dcj * i * (1 - cand * cand);
        d_o[j] = dh[j] * tc * o * (1 - o);
        dc[j] = dcj * f;
    }
}

/* Forward LSTM scan over batch rows [row_begin, row_end) with Keras' default activations.
 *   x       projected inputs (x W + b): step s, row r at x + s * x_step + r * x_row
 *   h0, c0  [n][units] initial states; kernel: the recurrent kernel [units][4 units], packed by
 *           pack_panels
 *   rmask   [n][units] recurrent dropout mask multiplying h_{t-1}, or NULL
 *   hs, cs  [steps][n][units] outputs; gates [steps][n][4 units] activated gates (output)
 *   work    [n][units] scratch for the masked state (only read when rmask is given) */
void NAME(lstm_forward)(long steps, long n, long units, long row_begin, long row_end, const REAL *x,
                        long x_step, long x_row, const REAL *h0, const REAL *c0, const REAL *kernel,
                        const REAL *rmask, REAL *hs, REAL *cs, REAL *gates, REAL *work) {
    const long rows = row_end - row_begin, width = 4 * units;
    for (long s = 0; s < steps; s++) {
        const REAL *h_prev = (s ? hs + (s - 1) * n * units : h0) + row_begin * units;
        const REAL *c_prev = (s ? cs + (s - 1) * n * units : c0) + row_begin * units;
        REAL *z = gates + (s * n + row_begin) * width;
        for (long r = 0; r < rows; r++)
            for (long j = 0; j < width; j++) z[r * width + j] = x[s * x_step + (row_begin + r) * x_row + j];
        if (rmask) {
            REAL *masked = work + row_begin * units;
            const REAL *m = rmask + row_begin * units;
            for (long k = 0; k < rows * units; k++) masked[k] = h_prev[k] * m[k];
            h_prev = masked;
        }
        NAME(gemm_acc)(rows, width, units, h_prev, units, kernel, z, width);
        REAL *c_out = cs + (s * n + row_begin) * units, *h_out = hs + (s * n + row_begin) * units;
        for (long r = 0; r < rows; r++)
            NAME(lstm_row)(units, z + r * width, c_prev + r * units, c_out + r * units, h_out + r * units);
    }
}

/* Backprop through the forward scan above, over batch rows [row_begin, row_end).
 *   kernel_t  the recurrent kernel transposed ([4 units][units]), packed by pack_panels
 *   dout      incoming gradient of every step's output (step s, row r at dout + s * d_step + r * d_row),
 *             or NULL when only the last state has one
 *   dh, dc    [n][units]: the gradients of the last states in, of the initial states out
 *   dgates    [steps][n][4 units]: the gradients of the gate pre-activations (output)
 *   dx        the same gradients again, as the gradient of the projected inputs: a strided view like x of
 *             the forward scan (step s, row r at dx + s * dx_step + r * dx_row) */
void NAME(lstm_backward)(long steps, long n, long units, long row_begin, long row_end, const REAL *c0,
                         const REAL *kernel_t, const REAL *rmask, const REAL *cs, const REAL *gates,
                         const REAL *dout, long d_step, long d_row, REAL *dh, REAL *dc, REAL *dgates,
                         REAL *dx, long dx_step, long dx_row) {
    const long rows = row_end - row_begin, width = 4 * units;
    REAL *dh_rows = dh + row_begin * units, *dc_rows = dc + row_begin * units;
    for (long s = steps - 1; s >= 0; s--) {
        const REAL *c_now = cs + (s * n + row_begin) * units;
        const REAL *c_prev = (s ? cs + (s - 1) * n * units : c0) + row_begin * units;
        const REAL *g_rows = gates + (s * n + row_begin) * width;
        REAL *dg_rows = dgates + (s * n + row_begin) * width;
        for (long r = 0; r < rows; r++) {
            REAL *dhr = dh_rows + r * units;
            if (dout) {
                const REAL *d = dout + s * d_step + (row_begin + r) * d_row;
                for (long j = 0; j < units; j++) dhr[j] += d[j];
            }
            NAME(lstm_row_backward)(units, g_rows + r * width, c_now + r * units, c_prev + r * units, dhr,
                                    dc_rows + r * units, dg_rows + r * width);
            memcpy(dx + s * dx_step + (row_begin + r) * dx_row, dg_rows + r * width, sizeof(REAL) * width);
        }
        for (long k = 0; k < rows * units; k++) dh_rows[k] = 0;
        NAME(gemm_acc)(rows, units, width, dg_rows, width, kernel_t, dh_rows, units);
        if (rmask) {
            const REAL *m = rmask + row_begin * units;
            for (long k = 0; k < rows * units; k++) dh_rows[k] *= m[k];
        }
    }
}


/* One row of a GRU step (reset_after, Keras' default): x holds the projected inputs (z, r, candidate),
 * rec the recurrent projection h_{t-1} U + b; writes the gates (z, r, candidate) and the new state. */
static inline void NAME(gru_row)(long units, const REAL *restrict x, const REAL *restrict rec,
                                 const REAL *restrict h_prev, REAL *restrict gates, REAL *restrict aux,
                                 REAL *restrict h_out) {
    for (long j = 0; j < units; j++) {
        REAL z = NAME(sigmoid)(x[j] + rec[j]);
        REAL r = NAME(sigmoid)(x[units + j] + rec[units + j]);
        REAL cand = NAME(tanh)(x[2 * units + j] + r * rec[2 * units + j]);
        gates[j] = z;
        gates[units + j] = r;
        gates[2 * units + j] = cand;
        aux[j] = rec[2 * units + j];
        h_out[j] = z * h_prev[j] + (1 - z) * cand;
    }
}

/* Forward GRU scan (reset_after, tanh and sigmoid) over batch rows [row_begin, row_end).
 *   x          projected inputs: step s, row r at x + s * x_step + r * x_row (3 units wide)
 *   h0         [n][units]; kernel: the recurrent kernel [units][3 units] packed by pack_panels;
 *   bias       the recurrent bias [3 units]; rmask: [n][units] or NULL
 *   hs         [steps][n][units]; gates [steps][n][3 units] (z, r, candidate); aux [steps][n][units]
 *              (the candidate's recurrent projection, which the gradient of r needs)
 *   rec, work  scratch: [n][3 units] and [n][units] */
void NAME(gru_forward)(long steps, long n, long units, long row_begin, long row_end, const REAL *x,
                       long x_step, long x_row, const REAL *h0, const REAL *kernel, const REAL *bias,
                       const REAL *rmask, REAL *hs, REAL *gates, REAL *aux, REAL *rec, REAL *work) {
    const long rows = row_end - row_begin, width = 3 * units;
    REAL *rec_rows = rec + row_begin * width;
    for (long s = 0; s < steps; s++) {
        const REAL *h_prev = (s ? hs + (s - 1) * n * units : h0) + row_begin * units;
        const REAL *h_projected = h_prev;
        for (long r = 0; r < rows; r++) memcpy(rec_rows + r * width, bias, sizeof(REAL) * width);
        if (rmask) {
            REAL *masked = work + row_begin * units;
            const REAL *m = rmask + row_begin * units;
            for (long k = 0; k < rows * units; k++) masked[k] = h_prev[k] * m[k];
            h_projected = masked;
        }
        NAME(gemm_acc)(rows, width, units, h_projected, units, kernel, rec_rows, width);
        for (long r = 0; r < rows; r++) {
            long row = row_begin + r;
            NAME(gru_row)(units, x + s * x_step + row * x_row, rec_rows + r * width, h_prev + r * units,
                          gates + (s * n + row) * width, aux + (s * n + row) * units,
                          hs + (s * n + row) * units);
        }
    }
}

/* One row of a GRU step backwards: from dh (the gradient of the step's output) to the gradients of the
 * recurrent projection (drec: z, r, candidate parts), of the projected inputs (dx) and the part of
 * dh_{t-1} that flows through z (carry). */
static inline void NAME(gru_row_backward)(long units, const REAL *restrict g, const REAL *restrict aux,
                                          const REAL *restrict h_prev, const REAL *restrict dh,
                                          REAL *restrict drec, REAL *restrict dx, REAL *restrict carry) {
    for (long j = 0; j < units; j++) {
        REAL z = g[j], r = g[units + j], cand = g[2 * units + j];
        REAL d_cand = dh[j] * (1 - z) * (1 - cand * cand);
        REAL d_z = dh[j] * (h_prev[j] - cand) * z * (1 - z);
        REAL d_r = d_cand * aux[j] * r * (1 - r);
        drec[j] = d_z;
        drec[units + j] = d_r;
        drec[2 * units + j] = d_cand * r;
        dx[j] = d_z;
        dx[units + j] = d_r;
        dx[2 * units + j] = d_cand;
        carry[j] = dh[j] * z;
    }
}

/* Backprop through the GRU scan above, over batch rows [row_begin, row_end).
 *   kernel_t  the recurrent kernel transposed ([3 units][units]), packed by pack_panels
 *   dout      the incoming gradient of every step's output, or NULL (strides d_step, d_row)
 *   dh        [n][units]: the gradient of the last state in, of the initial state out
 *   drec      [steps][n][3 units]: gradients of the recurrent projection (output)
 *   dx        the projected inputs' gradient, strided like x (dx_step, dx_row), 3 units wide (output)
 *   work      scratch [n][units] */
void NAME(gru_backward)(long steps, long n, long units, long row_begin, long row_end, const REAL *h0,
                        const REAL *kernel_t, const REAL *rmask, const REAL *hs, const REAL *gates,
                        const REAL *aux, const REAL *dout, long d_step, long d_row, REAL *dh, REAL *drec,
                        REAL *dx, long dx_step, long dx_row, REAL *work) {
    const long rows = row_end - row_begin, width = 3 * units;
    REAL *dh_rows = dh + row_begin * units, *carry = work + row_begin * units;
    for (long s = steps - 1; s >= 0; s--) {
        const REAL *h_prev = (s ? hs + (s - 1) * n * units : h0) + row_begin * units;
        REAL *drec_rows = drec + (s * n + row_begin) * width;
        for (long r = 0; r < rows; r++) {
            long row = row_begin + r;
            REAL *dhr = dh_rows + r * units;
            if (dout) {
                const REAL *d = dout + s * d_step + row * d_row;
                for (long j = 0; j < units; j++) dhr[j] += d[j];
            }
            NAME(gru_row_backward)(units, gates + (s * n + row) * width, aux + (s * n + row) * units,
                                   h_prev + r * units, dhr, drec_rows + r * width, dx + s * dx_step + row * dx_row,
                                   carry + r * units);
        }
        for (long k = 0; k < rows * units; k++) dh_rows[k] = 0;
        NAME(gemm_acc)(rows, units, width, drec_rows, width, kernel_t, dh_rows, units);
        const REAL *m = rmask ? rmask + row_begin * units : 0;
        for (long k = 0; k < rows * units; k++) dh_rows[k] = (m ? dh_rows[k] * m[k] : dh_rows[k]) + carry[k];
    }
}
