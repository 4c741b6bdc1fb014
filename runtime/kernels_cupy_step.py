"""CuPy kernels for the ends of a training step: the sparse softmax cross-entropy (forward and gradient)
and the Adam, momentum-SGD and RMSprop updates, one launch each where the array-module code makes
several.

* `sparse_softmax_cross_entropy[_grad]`: one thread per row of logits (the classes are few: the row's
  maximum, the sum of exponentials and the picked logit in one pass over it, the gradient
  softmax - one_hot in a second);
* Adam, SGD with momentum and RMSprop (not centered): one thread per parameter over the optimizer's flat
  buffers (`optimizers.ADAM_UPDATES`, `SGD_MOMENTUM_UPDATES`, `RMSPROP_UPDATES`), the scalars passed as
  a small device array.

Both sources also build as host C++ for the tests, and CI compiles them with nvcc.
"""
from __future__ import annotations

import numpy as np

from nnd.runtime.kernel_table import kernel
from nnd.runtime.kernels_cupy import fixed_kernel, launch_over

STEP_KERNELS_SOURCE = r"""
typedef unsigned long long nnd_size;

template <typename T>
__device__ void sparse_softmax_ce(const T* logits, const long long* labels, T* loss, nnd_size rows,
                                  nnd_size classes) {
    for (nnd_size r = blockIdx.x * (nnd_size)blockDim.x + threadIdx.x; r < rows;
         r += (nnd_size)blockDim.x * gridDim.x) {
        const T* row = logits + r * classes;
        T top = row[0];
        for (nnd_size j = 1; j < classes; j++) top = row[j] > top ? row[j] : top;
        T total = (T)0;
        for (nnd_size j = 0; j < classes; j++) total += exp(row[j] - top);
        loss[r] = log(total) + top - row[labels[r]];
    }
}

template <typename T>
__device__ void sparse_softmax_ce_grad(const T* dloss, const T* logits, const long long* labels, T* grad,
                                       nnd_size rows, nnd_size classes) {
    for (nnd_size r = blockIdx.x * (nnd_size)blockDim.x + threadIdx.x; r < rows;
         r += (nnd_size)blockDim.x * gridDim.x) {
        const T* row = logits + r * classes;
        T* out = grad + r * classes;
        T top = row[0];
        for (nnd_size j = 1; j < classes; j++) top = row[j] > top ? row[j] : top;
        T total = (T)0;
        for (nnd_size j = 0; j < classes; j++) total += exp(row[j] - top);
        for (nnd_size j = 0; j < classes; j++)
            out[j] = (exp(row[j] - top) / total - ((long long)j == labels[r] ? (T)1 : (T)0)) * dloss[r];
    }
}

template <typename T>
__device__ void adam_update(T* p, const T* g, T* m, T* v, const T* scalars, nnd_size n) {
    const T alpha = scalars[0], keep_1 = (T)1 - scalars[1], keep_2 = (T)1 - scalars[2], eps = scalars[3];
    for (nnd_size i = blockIdx.x * (nnd_size)blockDim.x + threadIdx.x; i < n;
         i += (nnd_size)blockDim.x * gridDim.x) {
        T mi = m[i] + (g[i] - m[i]) * keep_1;
        T vi = v[i] + (g[i] * g[i] - v[i]) * keep_2;
        m[i] = mi;
        v[i] = vi;
        p[i] -= alpha * mi / (sqrt(vi) + eps);
    }
}

template <typename T>
__device__ void sgd_momentum_update(T* p, const T* g, T* m, const T* scalars, nnd_size nesterov, nnd_size n) {
    const T lr = scalars[0], mu = scalars[1];
    for (nnd_size i = blockIdx.x * (nnd_size)blockDim.x + threadIdx.x; i < n;
         i += (nnd_size)blockDim.x * gridDim.x) {
        T step = lr * g[i];
        T mi = mu * m[i] - step;
        m[i] = mi;
        p[i] += nesterov ? mu * mi - step : mi;
    }
}

template <typename T>
__device__ void rmsprop_update(T* p, const T* g, T* v, T* m, const T* scalars, nnd_size has_momentum, nnd_size n) {
    const T lr = scalars[0], rho = scalars[1], eps = scalars[2], mu = scalars[3];
    for (nnd_size i = blockIdx.x * (nnd_size)blockDim.x + threadIdx.x; i < n;
         i += (nnd_size)blockDim.x * gridDim.x) {
        T vi = rho * v[i] + ((T)1 - rho) * g[i] * g[i];
        v[i] = vi;
        T step = lr * g[i] / sqrt(vi + eps);
        if (has_momentum) {
            m[i] = mu * m[i] + step;
            step = m[i];
        }
        p[i] -= step;
    }
}

#define NND_STEP_KERNELS(T)                                                                                 \
extern "C" __global__ void nnd_sparse_softmax_ce_##T(const T* logits, const long long* labels, T* loss,     \
        nnd_size rows, nnd_size classes) {                                                                  \
    sparse_softmax_ce<T>(logits, labels, loss, rows, classes);                                              \
}                                                                                                           \
extern "C" __global__ void nnd_sparse_softmax_ce_grad_##T(const T* dloss, const T* logits,                  \
        const long long* labels, T* grad, nnd_size rows, nnd_size classes) {                               \
    sparse_softmax_ce_grad<T>(dloss, logits, labels, grad, rows, classes);                                  \
}                                                                                                           \
extern "C" __global__ void nnd_adam_update_##T(T* p, const T* g, T* m, T* v, const T* scalars, nnd_size n) { \
    adam_update<T>(p, g, m, v, scalars, n);                                                                 \
}                                                                                                           \
extern "C" __global__ void nnd_sgd_momentum_update_##T(T* p, const T* g, T* m, const T* scalars,            \
        nnd_size nesterov, nnd_size n) {                                                                    \
    sgd_momentum_update<T>(p, g, m, scalars, nesterov, n);                                                  \
}                                                                                           \
extern "C" __global__ void nnd_rmsprop_update_##T(T* p, const T* g, T* v, T* m, const T* scalars,           \
        nnd_size has_momentum, nnd_size n) {                                                                \
    rmsprop_update<T>(p, g, v, m, scalars, has_momentum, n);                                                \
}

NND_STEP_KERNELS(float)
NND_STEP_KERNELS(double)
"""

def _step_kernel(name: str, dtype):
    return fixed_kernel(STEP_KERNELS_SOURCE, name, dtype)


@kernel("sparse_softmax_cross_entropy", backend="cupy")
def sparse_softmax_ce_cuda(ctx, attrs, logits, labels):
    from nnd.runtime.kernels_basic import _sparse_softmax_ce

    fn = _step_kernel("sparse_softmax_ce", logits.dtype)
    if fn is None or logits.ndim == 0:
        return _sparse_softmax_ce(ctx, attrs, logits, labels)
    xp = ctx.xp
    logits = xp.ascontiguousarray(logits)
    classes = logits.shape[-1]
    loss = xp.empty(logits.shape[:-1], dtype=logits.dtype)
    launch_over(fn, loss.size, [logits, xp.ascontiguousarray(labels, dtype=np.int64), loss, loss.size, classes])
    return loss


@kernel("sparse_softmax_cross_entropy_grad", backend="cupy")
def sparse_softmax_ce_grad_cuda(ctx, attrs, dloss, logits, labels):
    from nnd.runtime.kernels_basic import _sparse_softmax_ce_grad

    fn = _step_kernel("sparse_softmax_ce_grad", logits.dtype)
    if fn is None or logits.ndim == 0:
        return _sparse_softmax_ce_grad(ctx, attrs, dloss, logits, labels)
    xp = ctx.xp
    logits = xp.ascontiguousarray(logits)
    rows = logits.size // logits.shape[-1]
    dloss = xp.ascontiguousarray(xp.broadcast_to(dloss, logits.shape[:-1]), dtype=logits.dtype)
    grad = xp.empty_like(logits)
    labels = xp.ascontiguousarray(labels, dtype=np.int64)
    launch_over(fn, rows, [dloss, logits, labels, grad, rows, logits.shape[-1]])
    return grad


def _flat_update(name: str, buffers: list, scalars: list[float], flags: tuple[int, ...] = ()) -> bool:
    """Launch the update kernel `name` once over the optimizer's flat buffers: the float scalars go as a
    small device array (in the buffers' dtype), the flags and the size as integers."""
    from nnd.runtime.backend import get_backend

    xp = get_backend("cupy").xp
    p = buffers[0]
    fn = _step_kernel(name, p.dtype)
    if fn is None:
        return False
    launch_over(fn, p.size, [*buffers, xp.asarray(np.array(scalars, dtype=p.dtype)), *flags, p.size])
    return True


def adam_update_cuda(p, g, m, v, alpha: float, beta_1: float, beta_2: float, epsilon: float) -> bool:
    """`optimizers.ADAM_UPDATES` for cupy."""
    return _flat_update("adam_update", [p, g, m, v], [alpha, beta_1, beta_2, epsilon])


def sgd_momentum_update_cuda(p, g, m, lr: float, momentum: float, nesterov: bool) -> bool:
    """`optimizers.SGD_MOMENTUM_UPDATES` for cupy."""
    return _flat_update("sgd_momentum_update", [p, g, m], [lr, momentum], (int(nesterov),))


def rmsprop_update_cuda(p, g, v, m, lr: float, rho: float, epsilon: float, momentum: float) -> bool:
    """`optimizers.RMSPROP_UPDATES` for cupy (without momentum, the kernel's momentum buffer is v, never
    written)."""
    return _flat_update("rmsprop_update", [p, g, v, v if m is None else m], [lr, rho, epsilon, momentum],
                        (int(m is not None),))


def _register() -> None:
    from nnd.runtime.optimizers import ADAM_UPDATES, RMSPROP_UPDATES, SGD_MOMENTUM_UPDATES

    ADAM_UPDATES["cupy"] = adam_update_cuda
    SGD_MOMENTUM_UPDATES["cupy"] = sgd_momentum_update_cuda
    RMSPROP_UPDATES["cupy"] = rmsprop_update_cuda


_register()
