/* Native CPU kernels of nnd's NumPy backend, compiled on first use by `nnd.runtime.native`: the
 * LSTM and GRU scans, max pooling, direct and depthwise convolution, the convolution's epilogue and
 * col2im, batch normalization's passes and the Adam update.
 *
 * NumPy runs a recurrent scan as a dozen array calls per time step, each on a few thousand elements,
 * so call overhead and NumPy's scalar float32 tanh bound it. Here a whole scan is one call: a small
 * register-blocked GEMM per step and the gate math in one pass over each row. Rows of the batch are
 * independent through a whole scan, so the caller splits them between threads with no synchronization.
 *
 * Every kernel exists for float32 (suffix _f32, a polynomial exp that the compiler vectorizes) and
 * float64 (suffix _f64, the C library's exp, for the finite-difference checks): the *_impl.h files
 * are included once per type.
 *
 * Max pooling is memory-bound: NumPy makes a pass over the input per window offset and, for the
 * gradient, a one-hot mask of the winners; here each window is read once.
 */
#include <math.h>
#include <stdint.h>
#include <string.h>

/* e^x for float32: x = n ln2 + r with |r| <= ln2 / 2, e^r by its Taylor polynomial of degree 7
 * (truncation below 2e-9 relative), 2^n built in the exponent bits. n is rounded by adding 1.5 * 2^23,
 * which leaves it in the low mantissa bits: branch-free, so loops over it vectorize. Inputs are clamped
 * to the range where 2^n stays a normal number; the sigmoid and tanh below only need the limits there. */
static inline float exp_f32(float x) {
    const float log2e = 1.44269504088896341f, shifter = 12582912.0f;
    const float ln2_hi = 0.693359375f, ln2_lo = -2.12194440e-4f;
    x = x < -87.0f ? -87.0f : x;
    x = x > 88.0f ? 88.0f : x;
    float t = x * log2e + shifter;
    float n = t - shifter;
    float r = x - n * ln2_hi - n * ln2_lo;
    float p = 1.0f / 5040.0f;
    p = p * r + 1.0f / 720.0f;
    p = p * r + 1.0f / 120.0f;
    p = p * r + 1.0f / 24.0f;
    p = p * r + 1.0f / 6.0f;
    p = p * r + 0.5f;
    p = p * r + 1.0f;
    p = p * r + 1.0f;
    int32_t bits;
    memcpy(&bits, &t, sizeof bits);
    bits = (bits - 0x4B400000 + 127) << 23;
    float scale;
    memcpy(&scale, &bits, sizeof scale);
    return p * scale;
}

static inline double exp_f64(double x) { return exp(x); }

/* The epilogue's activations, as `kernels_native.ACTIVATIONS` numbers them. */
enum { ACTIVATION_LINEAR, ACTIVATION_RELU, ACTIVATION_SIGMOID, ACTIVATION_TANH };

#define PASTE2(a, b) a##_##b
#define PASTE(a, b) PASTE2(a, b)
#define NAME(base) PASTE(base, SUFFIX)

#define REAL float
#define SUFFIX f32
#define EXP exp_f32
#include "gemm_impl.h"
#include "scan_impl.h"
#include "pool_impl.h"
#include "conv_impl.h"
#include "direct_conv_impl.h"
#include "depthwise_impl.h"
#include "norm_impl.h"
#include "optim_impl.h"
#undef REAL
#undef SUFFIX
#undef EXP

#define REAL double
#define SUFFIX f64
#define EXP exp_f64
#include "gemm_impl.h"
#include "scan_impl.h"
#include "pool_impl.h"
#include "conv_impl.h"
#include "direct_conv_impl.h"
#include "depthwise_impl.h"
#include "norm_impl.h"
#include "optim_impl.h"
#undef REAL
#undef SUFFIX
#undef EXP

/* Lets the loader check that the library it found is the one it compiled. */
int nnd_native_abi_version(void) { return 13; }
