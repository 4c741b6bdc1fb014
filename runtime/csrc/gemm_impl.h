/* A small GEMM for the steps of a recurrent scan, for one element type (REAL, names ending in SUFFIX):
 * c[rows][cols] += a[rows][depth] b[depth][cols].
 *
 * The matrix b is the recurrent kernel, the same at every step, so it is packed once per scan into
 * column panels (`pack_panels`): PANEL columns (two vectors) by depth rows, contiguous, zero-padded
 * at the right edge. Each panel is read once per row tile with unit stride and stays in L1 while every
 * tile of rows passes over it; a tile keeps its 2 x rows accumulators in registers (6 rows: 12 of the
 * 16 AVX registers, the rest for the panel's row and the broadcast value of a).
 */

/* 32-byte vectors: one AVX register of 8 floats or 4 doubles; the compiler splits them elsewhere. */
#define LANES (int)(32 / sizeof(REAL))
#define PANEL (2 * LANES)
#define MAX_TILE_ROWS 6
typedef REAL NAME(vec) __attribute__((vector_size(32), aligned(sizeof(REAL))));
#define VEC NAME(vec)

/* The number of columns of a panel, for the caller sizing the packed buffer. */
long NAME(panel_width)(void) { return PANEL; }

/* b[depth][cols] (row stride ldb) into ceil(cols / PANEL) panels of depth x PANEL values each. */
void NAME(pack_panels)(long depth, long cols, const REAL *b, long ldb, REAL *out) {
    for (long j0 = 0; j0 < cols; j0 += PANEL)
        for (long p = 0; p < depth; p++, out += PANEL)
            for (long j = 0; j < PANEL; j++) out[j] = j0 + j < cols ? b[p * ldb + j0 + j] : 0;
}

/* c[rows][PANEL] += a[rows][depth] panel[depth][PANEL]. `rows` is a constant at every call site, so
 * the loops over it unroll and the accumulators become registers. */
static inline __attribute__((always_inline)) void NAME(gemm_tile)(const int rows, long depth,
                                                                  const REAL *restrict a, long lda,
                                                                  const REAL *restrict panel,
                                                                  REAL *restrict c, long ldc) {
    VEC acc[MAX_TILE_ROWS][2];
    for (int r = 0; r < rows; r++) {
        acc[r][0] = *(const VEC *)(c + r * ldc);
        acc[r][1] = *(const VEC *)(c + r * ldc + LANES);
    }
    for (long p = 0; p < depth; p++) {
        VEC b0 = *(const VEC *)(panel + p * PANEL), b1 = *(const VEC *)(panel + p * PANEL + LANES);
        for (int r = 0; r < rows; r++) {
            REAL av = a[r * lda + p];
            acc[r][0] += av * b0;
            acc[r][1] += av * b1;
        }
    }
    for (int r = 0; r < rows; r++) {
        *(VEC *)(c + r * ldc) = acc[r][0];
        *(VEC *)(c + r * ldc + LANES) = acc[r][1];
    }
}

/* All rows against one full panel: tiles of 6 rows, then one of 4, 2 or 1 for the rest. */
static void NAME(gemm_panel)(long rows, long depth, const REAL *a, long lda, const REAL *panel, REAL *c,
                             long ldc) {
    long i = 0;
    for (; i + 6 <= rows; i += 6) NAME(gemm_tile)(6, depth, a + i * lda, lda, panel, c + i * ldc, ldc);
    if (i + 4 <= rows) {
        NAME(gemm_tile)(4, depth, a + i * lda, lda, panel, c + i * ldc, ldc);
        i += 4;
    }
    if (i + 2 <= rows) {
        NAME(gemm_tile)(2, depth, a + i * lda, lda, panel, c + i * ldc, ldc);
        i += 2;
    }
    if (i < rows) NAME(gemm_tile)(1, depth, a + i * lda, lda, panel, c + i * ldc, ldc);
}

/* c[rows][cols] += a[rows][depth] b, with b packed by `pack_panels`. A last, partial panel goes row by
 * row through a full-width copy of the row of c. */
static void NAME(gemm_acc)(long rows, long cols, long depth, const REAL *a, long lda, const REAL *packed,
                           REAL *c, long ldc) {
    for (long j0 = 0; j0 < cols; j0 += PANEL) {
        const REAL *panel = packed + (j0 / PANEL) * depth * PANEL;
        long width = cols - j0;
        if (width >= PANEL) {
            NAME(gemm_panel)(rows, depth, a, lda, panel, c + j0, ldc);
            continue;
        }
        for (long i = 0; i < rows; i++) {
            REAL row[PANEL] = {0};
            for (long j = 0; j < width; j++) row[j] = c[i * ldc + j0 + j];
            NAME(gemm_tile)(1, depth, a + i * lda, lda, panel, row, PANEL);
            for (long j = 0; j < width; j++) c[i * ldc + j0 + j] = row[j];
        }
    }
}

#undef LANES
#undef PANEL
#undef MAX_TILE_ROWS
#undef VEC
