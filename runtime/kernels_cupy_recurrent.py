"""The recurrent scans' default paths on CuPy (Keras' default activations, no padding mask): the whole scan
in one launch (`nnd.runtime.kernels_cupy_scan`); or, with `NND_CUDA_SCAN=steps`, per time step one cuBLAS
GEMM for the recurrent projection and one kernel for all of the step's gate math, where the generic loop
launches about a dozen elementwise kernels a step. One thread per (sample, unit): the gates of a unit
sit u apart in a row of 4u (LSTM) or 3u (GRU). float16 and bfloat16 take the generic loop.

These fill the cupy entries of `LSTM_DEFAULT_PATHS` and `GRU_DEFAULT_PATHS` (`nnd.runtime.kernels_recurrent`).
"""
from __future__ import annotations

import numpy as np

from nnd.runtime import kernels_cupy_scan
from nnd.runtime.kernels_cupy import fixed_kernel, has_cuda_kernels, launch_shape

STEP_PRELUDE = r"""
#ifndef NND_STEP_PRELUDE  /* both step sources carry it; compiled together, one copy counts */
#define NND_STEP_PRELUDE
template <typename T> __device__ T nnd_sigmoid(T v) {
    T e = exp(-fabs(v));
    return v >= (T)0 ? (T)1 / ((T)1 + e) : e / ((T)1 + e);
}
#endif
"""

# ------------------------------------------------------------------------------------------ LSTM

LSTM_STEP_SOURCE = STEP_PRELUDE + r"""
template <typename T>
__device__ void lstm_forward_step(const T* z, const T* x, const T* c_prev, T* gates, T* c_new, T* h_new,
                                  unsigned long long n, unsigned long long u) {
    for (unsigned long long i = blockIdx.x * (unsigned long long)blockDim.x + threadIdx.x; i < n;
         i += (unsigned long long)blockDim.x * gridDim.x) {
        unsigned long long b = i / u, j = i % u, row = b * 4 * u + j;
        T gi = nnd_sigmoid(z[row] + x[row]);
        T gf = nnd_sigmoid(z[row + u] + x[row + u]);
        T gc = tanh(z[row + 2 * u] + x[row + 2 * u]);
        T go = nnd_sigmoid(z[row + 3 * u] + x[row + 3 * u]);
        T c = gf * c_prev[i] + gi * gc;
        gates[row] = gi; gates[row + u] = gf; gates[row + 2 * u] = gc; gates[row + 3 * u] = go;
        c_new[i] = c;
        h_new[i] = go * tanh(c);
    }
}

template <typename T>
__device__ void lstm_backward_step(const T* dout, int has_dout, T* dh, T* dc, const T* gates, const T* c,
                                   const T* c_prev, T* dgates, unsigned long long n, unsigned long long u) {
    for (unsigned long long i = blockIdx.x * (unsigned long long)blockDim.x + threadIdx.x; i < n;
         i += (unsigned long long)blockDim.x * gridDim.x) {
        unsigned long long b = i / u, j = i % u, row = b * 4 * u + j;
        T gi = gates[row], gf = gates[row + u], gc = gates[row + 2 * u], go = gates[row + 3 * u];
        T h_grad = dh[i] + (has_dout ? dout[i] : (T)0);
        T cell = tanh(c[i]);
        T c_grad = dc[i] + h_grad * go * ((T)1 - cell * cell);
        dgates[row + 3 * u] = h_grad * cell * go * ((T)1 - go);
        dgates[row] = c_grad * gc * gi * ((T)1 - gi);
        dgates[row + u] = c_grad * c_prev[i] * gf * ((T)1 - gf);
        dgates[row + 2 * u] = c_grad * gi * ((T)1 - gc * gc);
        dc[i] = c_grad * gf;
    }
}

extern "C" __global__ void nnd_lstm_forward_step_float(const float* z, const float* x, const float* c_prev,
        float* gates, float* c_new, float* h_new, unsigned long long n, unsigned long long u) {
    lstm_forward_step<float>(z, x, c_prev, gates, c_new, h_new, n, u);
}
extern "C" __global__ void nnd_lstm_forward_step_double(const double* z, const double* x, const double* c_prev,
        double* gates, double* c_new, double* h_new, unsigned long long n, unsigned long long u) {
    lstm_forward_step<double>(z, x, c_prev, gates, c_new, h_new, n, u);
}
extern "C" __global__ void nnd_lstm_backward_step_float(const float* dout, int has_dout, float* dh, float* dc,
        const float* gates, const float* c, const float* c_prev, float* dgates, unsigned long long n,
        unsigned long long u) {
    lstm_backward_step<float>(dout, has_dout, dh, dc, gates, c, c_prev, dgates, n, u);
}
extern "C" __global__ void nnd_lstm_backward_step_double(const double* dout, int has_dout, double* dh,
        double* dc, const double* gates, const double* c, const double* c_prev, double* dgates,
        unsigned long long n, unsigned long long u) {
    lstm_backward_step<double>(dout, has_dout, dh, dc, gates, c, c_prev, dgates, n, u);
}
"""


def lstm_forward_cuda(xp, xt, h0, c0, recurrent_kernel, rmask, hs, cs, gates) -> None:
    from nnd.runtime.kernels_recurrent import _lstm_forward_default, _projection

    if not has_cuda_kernels(hs.dtype):  # the step kernels are float and double: CuPy's own ops otherwise
        _lstm_forward_default(xp, xt, h0, c0, recurrent_kernel, rmask, hs, cs, gates)
        return
    if kernels_cupy_scan.usable(hs.dtype):
        kernels_cupy_scan.lstm_scan_forward(xp, xt, h0, c0, recurrent_kernel, rmask, hs, cs, gates)
        return

    steps, n, u = hs.shape
    xt = xp.ascontiguousarray(xt)  # time-major once, so each step reads one contiguous block
    c_prev = xp.ascontiguousarray(c0, dtype=hs.dtype)
    h = xp.ascontiguousarray(h0, dtype=hs.dtype)
    z = xp.empty((n, 4 * u), dtype=hs.dtype)
    project = _projection(xp, recurrent_kernel, rmask, (n, u), hs.dtype)
    step = fixed_kernel(LSTM_STEP_SOURCE, "lstm_forward_step", hs.dtype)
    grid, block = launch_shape(n * u)
    sizes = (np.uint64(n * u), np.uint64(u))  # converted once, not at every step
    for s in range(steps):
        project(h, z)
        step(grid, block, (z, xt[s], c_prev, gates[s], cs[s], hs[s], *sizes))
        h, c_prev = hs[s], cs[s]


def lstm_backward_cuda(xp, c0, recurrent_kernel, rmask, cs, gates, dout_tm, dh, dc, dgates, d_xproj_tm):
    from nnd.runtime.kernels_recurrent import _backprojection, _lstm_backward_default

    if not has_cuda_kernels(cs.dtype):
        return _lstm_backward_default(xp, c0, recurrent_kernel, rmask, cs, gates, dout_tm, dh, dc, dgates,
                                      d_xproj_tm)
    if kernels_cupy_scan.usable(cs.dtype):
        return kernels_cupy_scan.lstm_scan_backward(xp, c0, recurrent_kernel, rmask, cs, gates, dout_tm, dh, dc,
                                                    dgates, d_xproj_tm)

    steps, n, u = cs.shape
    kernel_t = xp.ascontiguousarray(recurrent_kernel.T)
    back = _backprojection(xp, kernel_t, rmask)
    dout = xp.ascontiguousarray(dout_tm, dtype=cs.dtype) if dout_tm is not None else xp.zeros((1,), dtype=cs.dtype)
    c0 = xp.ascontiguousarray(c0, dtype=cs.dtype)
    step = fixed_kernel(LSTM_STEP_SOURCE, "lstm_backward_step", cs.dtype)
    grid, block = launch_shape(n * u)
    sizes = (np.uint64(n * u), np.uint64(u))  # converted once, not at every step
    has_dout = np.int32(dout_tm is not None)
    for s in range(steps - 1, -1, -1):
        row = dout[s] if dout_tm is not None else dout
        step(grid, block, (row, has_dout, dh, dc, gates[s], cs[s], cs[s - 1] if s else c0, dgates[s], *sizes))
        back(dgates[s], dh)
    d_xproj_tm[...] = dgates
    return dh, dc


# ------------------------------------------------------------------------------------------ GRU (reset_after)
# rec = (h * m) @ U; z = s(x_z + rec_z + b_z), r = s(x_r + rec_r + b_r), a = rec_h + b_h,
# c = tanh(x_h + r * a), h' = z * h + (1 - z) * c. Backward, the carried gradient z * dh waits in `carry`
# while cuBLAS writes drec @ U^T (* m) into dh, and the next step's kernel adds the two.

GRU_STEP_SOURCE = STEP_PRELUDE + r"""
template <typename T>
__device__ void gru_forward_step(const T* rec, const T* x, const T* bias, const T* h_prev, T* gates, T* aux,
                                 T* h_new, unsigned long long n, unsigned long long u) {
    for (unsigned long long i = blockIdx.x * (unsigned long long)blockDim.x + threadIdx.x; i < n;
         i += (unsigned long long)blockDim.x * gridDim.x) {
        unsigned long long b = i / u, j = i % u, row = b * 3 * u + j;
        T rec_h = rec[row + 2 * u] + bias[2 * u + j];
        T z = nnd_sigmoid(x[row] + rec[row] + bias[j]);
        T r = nnd_sigmoid(x[row + u] + rec[row + u] + bias[u + j]);
        T c = tanh(x[row + 2 * u] + r * rec_h);
        gates[row] = z; gates[row + u] = r; gates[row + 2 * u] = c;
        aux[i] = rec_h;
        h_new[i] = z * h_prev[i] + ((T)1 - z) * c;
    }
}

template <typename T>
__device__ void gru_backward_step(const T* dout, unsigned long long has_dout, const T* dh, T* carry,
                                  const T* gates, const T* aux, const T* h_prev, T* drec, T* dx,
                                  unsigned long long n, unsigned long long u) {
    for (unsigned long long i = blockIdx.x * (unsigned long long)blockDim.x + threadIdx.x; i < n;
         i += (unsigned long long)blockDim.x * gridDim.x) {
        unsigned long long b = i / u, j = i % u, row = b * 3 * u + j;
        T z = gates[row], r = gates[row + u], c = gates[row + 2 * u];
        T h_grad = dh[i] + carry[i] + (has_dout ? dout[i] : (T)0);
        T d_cand = h_grad * ((T)1 - z) * ((T)1 - c * c);
        T d_z = h_grad * (h_prev[i] - c) * z * ((T)1 - z);
        T d_r = d_cand * aux[i] * r * ((T)1 - r);
        drec[row] = d_z; drec[row + u] = d_r; drec[row + 2 * u] = d_cand * r;
        dx[row] = d_z; dx[row + u] = d_r; dx[row + 2 * u] = d_cand;
        carry[i] = h_grad * z;
    }
}

#define NND_GRU_STEP_KERNELS(T)                                                                             \
extern "C" __global__ void nnd_gru_forward_step_##T(const T* rec, const T* x, const T* bias,                \
        const T* h_prev, T* gates, T* aux, T* h_new, unsigned long long n, unsigned long long u) {           \
    gru_forward_step<T>(rec, x, bias, h_prev, gates, aux, h_new, n, u);                                     \
}                                                                                                           \
extern "C" __global__ void nnd_gru_backward_step_##T(const T* dout, unsigned long long has_dout,           \
        const T* dh, T* carry, const T* gates, const T* aux, const T* h_prev, T* drec, T* dx,               \
        unsigned long long n, unsigned long long u) {                                                       \
    gru_backward_step<T>(dout, has_dout, dh, carry, gates, aux, h_prev, drec, dx, n, u);                    \
}

NND_GRU_STEP_KERNELS(float)
NND_GRU_STEP_KERNELS(double)
"""


def gru_forward_cuda(xt, h0, recurrent_kernel, recurrent_bias, rmask, hs, gates, aux) -> bool:
    """The cupy `GRU_DEFAULT_PATHS` forward; False leaves the scan to the generic loop."""
    from nnd.runtime.backend import get_backend
    from nnd.runtime.kernels_recurrent import _projection

    xp = get_backend("cupy").xp  # its matmul can be captured in a CUDA graph, CuPy's cannot

    if not has_cuda_kernels(hs.dtype):
        return False
    if kernels_cupy_scan.usable(hs.dtype):
        kernels_cupy_scan.gru_scan_forward(xt, h0, recurrent_kernel, recurrent_bias, rmask, hs, gates, aux)
        return True
    steps, n, u = hs.shape
    dt = hs.dtype
    xt = xp.ascontiguousarray(xt, dtype=dt)  # time-major once, so each step reads one contiguous block
    bias = xp.ascontiguousarray(recurrent_bias, dtype=dt)
    h = xp.ascontiguousarray(h0, dtype=dt)
    rec = xp.empty((n, 3 * u), dtype=dt)
    project = _projection(xp, recurrent_kernel, rmask, (n, u), dt)
    step = fixed_kernel(GRU_STEP_SOURCE, "gru_forward_step", dt)
    grid, block = launch_shape(n * u)
    sizes = (np.uint64(n * u), np.uint64(u))  # converted once, not at every step
    for s in range(steps):
        project(h, rec)
        step(grid, block, (rec, xt[s], bias, h, gates[s], aux[s], hs[s], *sizes))
        h = hs[s]
    return True


def gru_backward_cuda(h0, recurrent_kernel, rmask, hs, gates, aux, dout_tm, dh, drec, d_xproj_tm):
    """The cupy `GRU_DEFAULT_PATHS` backward: the initial state's gradient, or None to leave the scan to
    the generic loop."""
    from nnd.runtime.backend import get_backend
    from nnd.runtime.kernels_recurrent import _backprojection

    xp = get_backend("cupy").xp  # its matmul can be captured in a CUDA graph, CuPy's cannot

    if not has_cuda_kernels(hs.dtype):
        return None
    if kernels_cupy_scan.usable(hs.dtype):
        return kernels_cupy_scan.gru_scan_backward(h0, recurrent_kernel, rmask, hs, gates, aux, dout_tm, dh, drec,
                                                   d_xproj_tm)
    steps, n, u = hs.shape
    dt = hs.dtype
    dh = xp.array(dh, dtype=dt, order="C")  # a copy: every step's GEMM rewrites it
    carry = xp.zeros((n, u), dtype=dt)
    dx = xp.empty((steps, n, 3 * u), dtype=dt)
    dout = xp.ascontiguousarray(dout_tm, dtype=dt) if dout_tm is not None else xp.zeros((1,), dtype=dt)
    h0 = xp.ascontiguousarray(h0, dtype=dt)
    back = _backprojection(xp, xp.ascontiguousarray(recurrent_kernel.T, dtype=dt), rmask)
    step = fixed_kernel(GRU_STEP_SOURCE, "gru_backward_step", dt)
    grid, block = launch_shape(n * u)
    sizes = (np.uint64(n * u), np.uint64(u))  # converted once, not at every step
    has_dout = np.uint64(dout_tm is not None)
    for s in range(steps - 1, -1, -1):
        row = dout[s] if dout_tm is not None else dout
        h_prev = hs[s - 1] if s else h0
        step(grid, block, (row, has_dout, dh, carry, gates[s], aux[s], h_prev, drec[s], dx[s], *sizes))
        back(drec[s], dh)
    d_xproj_tm[...] = dx
    return dh + carry


def _register() -> None:
    from nnd.runtime.kernels_recurrent import GRU_DEFAULT_PATHS, LSTM_DEFAULT_PATHS

    LSTM_DEFAULT_PATHS["cupy"] = (lstm_forward_cuda, lstm_backward_cuda)
    GRU_DEFAULT_PATHS["cupy"] = (gru_forward_cuda, gru_backward_cuda)


_register()
