"""Kernels of the recurrent scans (`nnd.compiler.ops.recurrent`), written against `ctx.xp`.

Each step of a scan is one GEMM of the batch's h against the recurrent kernel plus the gate math on
[N, G*units] arrays; the loop over time steps is the only Python loop. The forward pass writes its saved
tensors time-major ([T, N, ...], processing order) so that every step reads and writes contiguous
blocks. Backprop through time walks the steps in reverse with one GEMM per step for dh @ U^T (two for a
GRU with reset_after=False), stores every step's pre-activation gradients and finishes with one GEMM
for the recurrent kernel's gradient: dU = sum_t h_{t-1}^T dgates_t.

A recurrent dropout mask m ([N, u], the same at every step) multiplies h_{t-1} before its GEMM; the
backward pass masks dgates_t U^T the same way and takes dU = sum_t (h_{t-1} * m)^T dgates_t, masking
every saved h at once for that one GEMM. A scalar mask of 1 (no recurrent dropout) is detected once per
scan, so the unmasked loops run as before.

Arrays keep the dtype of the projected inputs (float32 or float64). Gate derivatives are taken from the
activated values (sigmoid: y(1-y), tanh: 1-y^2, ...), so nothing is recomputed but the cell's tanh.
"""
from __future__ import annotations

from nnd.compiler.ops.recurrent import scan_attrs
from nnd.runtime.kernel_table import kernel
from nnd.runtime.precision import wide_sum


# ---------------------------------------------------------------------------------------------------
# Activations and their derivatives from the activated value


def _sigmoid(xp, x):
    e = xp.exp(-xp.abs(x))
    r = 1.0 / (1.0 + e)
    return xp.where(x >= 0, r, e * r)


def _activate(xp, name: str, x):
    if name == "tanh":
        return xp.tanh(x)
    if name == "sigmoid":
        return _sigmoid(xp, x)
    if name == "hard_sigmoid":
        return xp.clip(x * (1.0 / 6.0) + 0.5, 0.0, 1.0)
    if name == "relu":
        return xp.maximum(x, 0)
    if name == "linear":
        return x
    raise ValueError(f"unknown activation {name!r}")


def _backprop(xp, name: str, dy, y):
    """dy times the activation's derivative, written in terms of its output y."""
    if name == "tanh":
        return dy * (1.0 - y * y)
    if name == "sigmoid":
        return dy * (y * (1.0 - y))
    if name == "hard_sigmoid":
        return xp.where((y > 0) & (y < 1), dy * (1.0 / 6.0), 0)
    if name == "relu":
        return dy * (y > 0)
    if name == "linear":
        return dy
    raise ValueError(f"unknown activation {name!r}")


# ---------------------------------------------------------------------------------------------------
# Layout helpers


def _time_major(x, backwards: bool):
    """A [T, N, ...] view of a batch-major [N, T, ...] array, in processing order."""
    x = x.transpose(1, 0, 2)
    return x[::-1] if backwards else x


def _valid_steps(ctx, mask, n: int, steps: int, backwards: bool):
    """[T, N, 1] booleans in processing order, or None when every step of every sequence is valid (known
    from the data in an eager run; a captured run must serve any data, so only a constant mask counts)."""
    xp = ctx.xp
    if mask.ndim == 0:
        if ctx.scalar(mask) != 0:
            return None
        return xp.zeros((steps, n, 1), dtype=bool)
    valid = (mask != 0).T
    if backwards:
        valid = valid[::-1]
    if not ctx.capturing and bool(valid.all()):
        return None
    return xp.ascontiguousarray(valid)[:, :, None]


def _batch_major(xp, parts, n: int, steps: int, backwards: bool, dtype):
    """Concatenate time-major [T, N, w_k] parts along the last axis into one batch-major [N, T, sum w_k]
    array in input time order."""
    width = sum(p.shape[2] for p in parts)
    out = xp.empty((n, steps, width), dtype=dtype)
    start = 0
    for p in parts:
        view = p.transpose(1, 0, 2)
        out[:, :, start:start + p.shape[2]] = view[:, ::-1] if backwards else view
        start += p.shape[2]
    return out


def _outputs(xp, hs, h0, seq: bool):
    """(outputs, h_last) from the h states: outputs is [N, T, u] in processing order or h_last."""
    h_last = (hs[-1] if hs.shape[0] else h0).copy()
    if seq:
        return xp.ascontiguousarray(hs.transpose(1, 0, 2)), h_last
    return h_last.copy(), h_last


def _h_prev_gemm(xp, h0, hs, d, rmask=None):
    """sum over steps of (h_{t-1} * rmask)^T d_t, with h_{-1} = h0: one GEMM over every later step (the
    recurrent mask, when there is one, applied to all the saved states in one multiplication)."""
    u, width = hs.shape[2], d.shape[2]
    first = h0 if rmask is None else h0 * rmask
    result = xp.matmul(first.T, d[0])
    if hs.shape[0] > 1:
        prev = hs[:-1] if rmask is None else hs[:-1] * rmask
        result += xp.matmul(prev.reshape(-1, u).T, d[1:].reshape(-1, width))
    return result


def _masks(ctx, a: dict, mask, recurrent_mask, n: int, steps: int, dtype):
    """A scan's valid steps (`_valid_steps`) and its recurrent mask (`_recurrent_mask`)."""
    return _valid_steps(ctx, mask, n, steps, a["go_backwards"]), _recurrent_mask(ctx, recurrent_mask, dtype)


def _recurrent_mask(ctx, recurrent_mask, dtype):
    """The array multiplying h_{t-1} in the recurrent projection, or None for a scalar 1 (no recurrent
    dropout), so that the loops branch on it once."""
    if recurrent_mask.ndim == 0 and ctx.scalar(recurrent_mask) == 1.0:
        return None
    return recurrent_mask.astype(dtype, copy=False)


def _masked(h, rmask):
    return h if rmask is None else h * rmask


def _start(xp, shape, dtype, *incoming):
    """A zero array plus each incoming gradient (a full array or a broadcast scalar)."""
    total = xp.zeros(shape, dtype=dtype)
    for d in incoming:
        total += d
    return total


def _step_grad(d_out, dout_tm, s: int):
    return dout_tm[s] if dout_tm is not None else d_out


# ---------------------------------------------------------------------------------------------------
# LSTM


@kernel("lstm_scan")
def _lstm_scan(ctx, attrs, xproj, h0, c0, recurrent_kernel, mask, recurrent_mask):
    xp = ctx.xp
    a = scan_attrs(attrs, "lstm_scan")
    u, act, ract = a["units"], a["activation"], a["recurrent_activation"]
    n, steps, _ = xproj.shape
    dt = xproj.dtype
    xt = _time_major(xproj, a["go_backwards"])
    valid, rmask = _masks(ctx, a, mask, recurrent_mask, n, steps, dt)
    hs = xp.empty((steps, n, u), dtype=dt)
    cs = xp.empty((steps, n, u), dtype=dt)
    gates = xp.empty((steps, n, 4 * u), dtype=dt)
    if valid is None and act == "tanh" and ract == "sigmoid":
        forward, _ = LSTM_DEFAULT_PATHS.get(xp.__name__, (_lstm_forward_default, None))
        forward(xp, xt, h0, c0, recurrent_kernel, rmask, hs, cs, gates)
        outputs, h_last = _outputs(xp, hs, h0, a["return_sequences"])
        return outputs, h_last, (cs[-1] if steps else c0).copy(), hs, cs, gates
    h, c = h0, c0
    for s in range(steps):
        z = xp.matmul(_masked(h, rmask), recurrent_kernel)
        z += xt[s]
        g = gates[s]
        g[:, :2 * u] = _activate(xp, ract, z[:, :2 * u])
        g[:, 2 * u:3 * u] = _activate(xp, act, z[:, 2 * u:3 * u])
        g[:, 3 * u:] = _activate(xp, ract, z[:, 3 * u:])
        c_new = g[:, u:2 * u] * c
        c_new += g[:, :u] * g[:, 2 * u:3 * u]
        h_new = g[:, 3 * u:] * _activate(xp, act, c_new)
        if valid is not None:
            c_new = xp.where(valid[s], c_new, c)
            h_new = xp.where(valid[s], h_new, h)
        cs[s] = c_new
        hs[s] = h_new
        h, c = hs[s], cs[s]
    outputs, h_last = _outputs(xp, hs, h0, a["return_sequences"])
    c_last = (cs[-1] if steps else c0).copy()
    return outputs, h_last, c_last, hs, cs, gates


@kernel("lstm_scan_grad")
def _lstm_scan_grad(ctx, attrs, h0, c0, recurrent_kernel, mask, recurrent_mask, hs, cs, gates, d_out, d_h,
                    d_c):
    xp = ctx.xp
    a = scan_attrs(attrs, "lstm_scan_grad")
    u, act, ract, seq = a["units"], a["activation"], a["recurrent_activation"], a["return_sequences"]
    steps, n, _ = hs.shape
    dt = hs.dtype
    valid, rmask = _masks(ctx, a, mask, recurrent_mask, n, steps, dt)
    dout_tm = d_out.transpose(1, 0, 2) if seq and d_out.ndim else None
    dh = _start(xp, (n, u), dt, d_h) if seq else _start(xp, (n, u), dt, d_h, d_out)
    dc = _start(xp, (n, u), dt, d_c)
    dgates = xp.empty((steps, n, 4 * u), dtype=dt)
    kernel_t = recurrent_kernel.T
    if valid is None and act == "tanh" and ract == "sigmoid":
        _, backward = LSTM_DEFAULT_PATHS.get(xp.__name__, (None, _lstm_backward_default))
        d_xproj = xp.empty((n, steps, 4 * u), dtype=dt)
        dh, dc = backward(xp, c0, recurrent_kernel, rmask, cs, gates, dout_tm if seq else None, dh, dc, dgates,
                          _time_major(d_xproj, a["go_backwards"]))
        return d_xproj, dh, dc, _h_prev_gemm(xp, h0, hs, dgates, rmask)
    for s in range(steps - 1, -1, -1):
        if seq:
            dh = dh + _step_grad(d_out, dout_tm, s)
        if valid is not None:
            m = valid[s]
            dh_kept, dc_kept = xp.where(m, 0, dh), xp.where(m, 0, dc)
            dh, dc = xp.where(m, dh, 0), xp.where(m, dc, 0)
        g = gates[s]
        i, f, cand, o = g[:, :u], g[:, u:2 * u], g[:, 2 * u:3 * u], g[:, 3 * u:]
        c_prev = cs[s - 1] if s else c0
        tc = _activate(xp, act, cs[s])
        dg = dgates[s]
        dg[:, 3 * u:] = _backprop(xp, ract, dh * tc, o)
        dc = dc + _backprop(xp, act, dh * o, tc)
        dg[:, :u] = _backprop(xp, ract, dc * cand, i)
        dg[:, u:2 * u] = _backprop(xp, ract, dc * c_prev, f)
        dg[:, 2 * u:3 * u] = _backprop(xp, act, dc * i, cand)
        dc = dc * f
        dh = xp.matmul(dg, kernel_t)
        if rmask is not None:
            dh *= rmask
        if valid is not None:
            dh += dh_kept
            dc += dc_kept
    d_kernel = _h_prev_gemm(xp, h0, hs, dgates, rmask)
    d_xproj = _batch_major(xp, [dgates], n, steps, a["go_backwards"], dt)
    return d_xproj, dh, dc, d_kernel


def _lstm_forward_default(xp, xt, h0, c0, recurrent_kernel, rmask, hs, cs, gates) -> None:
    """The LSTM recurrence for Keras' default activations (tanh, sigmoid) and no padding mask, in place.

    The general loop allocates a dozen temporaries a step; this one writes into preallocated buffers, and
    takes the sigmoid of all four gates at once as 1 / (1 + exp(-z)) (exp is vectorized where tanh is
    not; a huge -z gives exp = inf and the exact limit 0) before overwriting the candidate's quarter with
    its tanh, so a step is about a dozen array operations. A recurrent mask adds one multiplication a step
    (chosen once, before the loop).
    """
    steps, n, u = hs.shape
    z = xp.empty((n, 4 * u), dtype=hs.dtype)
    product = xp.empty((n, u), dtype=hs.dtype)
    project = _projection(xp, recurrent_kernel, rmask, (n, u), hs.dtype)
    h, c = h0, c0
    for s in range(steps):
        project(h, z)
        z += xt[s]
        g = gates[s]
        xp.negative(z, out=g)
        with _quiet_overflow(xp):
            xp.exp(g, out=g)
        g += 1.0
        xp.reciprocal(g, out=g)
        xp.tanh(z[:, 2 * u:3 * u], out=g[:, 2 * u:3 * u])
        c_new = cs[s]
        xp.multiply(g[:, u:2 * u], c, out=c_new)
        xp.multiply(g[:, :u], g[:, 2 * u:3 * u], out=product)
        c_new += product
        xp.tanh(c_new, out=product)
        xp.multiply(g[:, 3 * u:], product, out=hs[s])
        h, c = hs[s], c_new


# Backends with a faster way to run the default LSTM path (the cupy kernels fuse each step's gate math
# into one CUDA kernel, the native ones run the whole scan in C) register (forward, backward) here under
# their array module's name, with the signatures of the two functions above.
LSTM_DEFAULT_PATHS: dict[str, tuple] = {}


def _projection(xp, recurrent_kernel, rmask, shape, dtype):
    """out <- (h * rmask) @ recurrent_kernel as a function (h, out), picked once for the whole scan."""
    if rmask is None:
        return lambda h, out: xp.matmul(h, recurrent_kernel, out=out)
    masked = xp.empty(shape, dtype=dtype)

    def project(h, out):
        xp.multiply(h, rmask, out=masked)
        xp.matmul(masked, recurrent_kernel, out=out)

    return project


def _backprojection(xp, kernel_t, rmask):
    """out <- (d @ kernel_t) * rmask as a function (d, out), picked once for the whole scan."""
    if rmask is None:
        return lambda d, out: xp.matmul(d, kernel_t, out=out)

    def back(d, out):
        xp.matmul(d, kernel_t, out=out)
        out *= rmask

    return back


def _quiet_overflow(xp):
    """exp(-z) may overflow to inf on purpose (the sigmoid is then exactly 0): no warning for it."""
    import contextlib

    return xp.errstate(over="ignore") if hasattr(xp, "errstate") else contextlib.nullcontext()


def _lstm_backward_default(xp, c0, recurrent_kernel, rmask, cs, gates, dout_tm, dh, dc, dgates, d_xproj_tm):
    """Backprop through time for `_lstm_forward_default`: the gate derivatives and tanh(c) of every step
    are computed in bulk before the loop, leaving about ten in-place operations a step. The gradients of
    the pre-activations go to `dgates` (time-major) and to `d_xproj_tm`, the processing-order view of
    the batch-major gradient of the projected inputs."""
    steps, n, u = cs.shape
    cell = xp.tanh(cs)
    derivative = 1.0 - gates
    derivative *= gates  # sigmoid' = y (1 - y) for i, f, o
    candidate = gates[:, :, 2 * u:3 * u]
    derivative[:, :, 2 * u:3 * u] = 1.0 - candidate * candidate  # tanh' = 1 - y^2
    through_cell = gates[:, :, 3 * u:] * (1.0 - cell * cell)  # dh_t/dc_t = o (1 - tanh(c)^2)
    kernel_t = xp.ascontiguousarray(recurrent_kernel.T)
    back = _backprojection(xp, kernel_t, rmask)
    product = xp.empty((n, u), dtype=cs.dtype)
    for s in range(steps - 1, -1, -1):
        if dout_tm is not None:
            dh += dout_tm[s]
        g, dg = gates[s], dgates[s]
        xp.multiply(dh, through_cell[s], out=product)
        dc += product
        xp.multiply(dh, cell[s], out=dg[:, 3 * u:])
        xp.multiply(dc, g[:, 2 * u:3 * u], out=dg[:, :u])
        xp.multiply(dc, cs[s - 1] if s else c0, out=dg[:, u:2 * u])
        xp.multiply(dc, g[:, :u], out=dg[:, 2 * u:3 * u])
        dg *= derivative[s]
        dc *= g[:, u:2 * u]
        back(dg, dh)
    d_xproj_tm[...] = dgates
    return dh, dc


# ---------------------------------------------------------------------------------------------------
# GRU

# Backends with a whole-scan GRU for reset_after, tanh and sigmoid without a padding mask register
# (forward, backward) here under their array module's name (the native kernels do, for numpy):
#   forward(xt, h0, recurrent_kernel, recurrent_bias, rmask, hs, gates, aux) fills hs, gates, aux and
#   returns True, or returns False (the loop below runs instead);
#   backward(h0, recurrent_kernel, rmask, hs, gates, aux, dout_tm, dh, drec, d_xproj_tm) fills drec and
#   the processing-order view of the projected inputs' gradient and returns the initial state's
#   gradient, or returns None.
GRU_DEFAULT_PATHS: dict[str, tuple] = {}


@kernel("gru_scan")
def _gru_scan(ctx, attrs, xproj, h0, recurrent_kernel, recurrent_bias, mask, recurrent_mask):
    xp = ctx.xp
    a = scan_attrs(attrs, "gru_scan")
    u, act, ract = a["units"], a["activation"], a["recurrent_activation"]
    n, steps, _ = xproj.shape
    dt = xproj.dtype
    xt = _time_major(xproj, a["go_backwards"])
    valid, rmask = _masks(ctx, a, mask, recurrent_mask, n, steps, dt)
    hs = xp.empty((steps, n, u), dtype=dt)
    gates = xp.empty((steps, n, 3 * u), dtype=dt)
    aux = xp.empty((steps, n, u), dtype=dt)
    reset_after = a["reset_after"]
    fast = GRU_DEFAULT_PATHS.get(xp.__name__)
    if (fast is not None and valid is None and reset_after and act == "tanh" and ract == "sigmoid"
            and fast[0](xt, h0, recurrent_kernel, recurrent_bias, rmask, hs, gates, aux)):
        outputs, h_last = _outputs(xp, hs, h0, a["return_sequences"])
        return outputs, h_last, hs, gates, aux
    if not reset_after:
        kernel_zr = xp.ascontiguousarray(recurrent_kernel[:, :2 * u])
        kernel_h = xp.ascontiguousarray(recurrent_kernel[:, 2 * u:])
    h = h0
    for s in range(steps):
        x = xt[s]
        g = gates[s]
        hm = _masked(h, rmask)  # h as the recurrent projection sees it; the carry z*h keeps h
        if reset_after:
            rec = xp.matmul(hm, recurrent_kernel)
            rec += recurrent_bias
            pre = x[:, :2 * u] + rec[:, :2 * u]
            g[:, :2 * u] = _activate(xp, ract, pre)
            aux[s] = rec[:, 2 * u:]
            g[:, 2 * u:] = _activate(xp, act, x[:, 2 * u:] + g[:, u:2 * u] * aux[s])
        else:
            pre = xp.matmul(hm, kernel_zr)
            pre += x[:, :2 * u]
            pre += recurrent_bias[:2 * u]
            g[:, :2 * u] = _activate(xp, ract, pre)
            aux[s] = g[:, u:2 * u] * hm
            cand = xp.matmul(aux[s], kernel_h)
            cand += x[:, 2 * u:]
            cand += recurrent_bias[2 * u:]
            g[:, 2 * u:] = _activate(xp, act, cand)
        z, hh = g[:, :u], g[:, 2 * u:]
        h_new = h - hh
        h_new *= z
        h_new += hh
        if valid is not None:
            h_new = xp.where(valid[s], h_new, h)
        hs[s] = h_new
        h = hs[s]
    outputs, h_last = _outputs(xp, hs, h0, a["return_sequences"])
    return outputs, h_last, hs, gates, aux


@kernel("gru_scan_grad")
def _gru_scan_grad(ctx, attrs, h0, recurrent_kernel, mask, recurrent_mask, hs, gates, aux, d_out, d_h):
    xp = ctx.xp
    a = scan_attrs(attrs, "gru_scan_grad")
    u, act, ract, seq = a["units"], a["activation"], a["recurrent_activation"], a["return_sequences"]
    reset_after = a["reset_after"]
    steps, n, _ = hs.shape
    dt = hs.dtype
    valid, rmask = _masks(ctx, a, mask, recurrent_mask, n, steps, dt)
    dout_tm = d_out.transpose(1, 0, 2) if seq and d_out.ndim else None
    dh = _start(xp, (n, u), dt, d_h) if seq else _start(xp, (n, u), dt, d_h, d_out)
    fast = GRU_DEFAULT_PATHS.get(xp.__name__)
    if fast is not None and valid is None and reset_after and act == "tanh" and ract == "sigmoid":
        drec = xp.empty((steps, n, 3 * u), dtype=dt)
        d_xproj = xp.empty((n, steps, 3 * u), dtype=dt)
        d_h0 = fast[1](h0, recurrent_kernel, rmask, hs, gates, aux, dout_tm, dh, drec,
                       _time_major(d_xproj, a["go_backwards"]))
        if d_h0 is not None:
            return d_xproj, d_h0, _h_prev_gemm(xp, h0, hs, drec, rmask), wide_sum(xp, drec, (0, 1))
    # reset_after: d of (h U + b) per step, all three gates; otherwise d of the z and r pre-activations.
    drec = xp.empty((steps, n, 3 * u if reset_after else 2 * u), dtype=dt)
    dcand = xp.empty((steps, n, u), dtype=dt)      # d of the candidate's pre-activation
    if reset_after:
        kernel_t = recurrent_kernel.T
    else:
        kernel_zr_t = xp.ascontiguousarray(recurrent_kernel[:, :2 * u].T)
        kernel_h_t = xp.ascontiguousarray(recurrent_kernel[:, 2 * u:].T)
    for s in range(steps - 1, -1, -1):
        if seq:
            dh = dh + _step_grad(d_out, dout_tm, s)
        if valid is not None:
            m = valid[s]
            dh_kept = xp.where(m, 0, dh)
            dh = xp.where(m, dh, 0)
        g = gates[s]
        z, r, hh = g[:, :u], g[:, u:2 * u], g[:, 2 * u:]
        h_prev = hs[s - 1] if s else h0
        da_h = _backprop(xp, act, dh * (1.0 - z), hh)
        dcand[s] = da_h
        dr = drec[s]
        dr[:, :u] = _backprop(xp, ract, dh * (h_prev - hh), z)
        if reset_after:
            dr[:, u:2 * u] = _backprop(xp, ract, da_h * aux[s], r)
            dr[:, 2 * u:] = da_h * r
            dh_prev = xp.matmul(dr, kernel_t)
        else:
            drh = xp.matmul(da_h, kernel_h_t)
            dr[:, u:] = _backprop(xp, ract, drh * _masked(h_prev, rmask), r)
            dh_prev = xp.matmul(dr, kernel_zr_t)
            dh_prev += drh * r
        if rmask is not None:
            dh_prev *= rmask
        dh_prev += dh * z
        if valid is not None:
            dh_prev += dh_kept
        dh = dh_prev
    if reset_after:
        d_kernel = _h_prev_gemm(xp, h0, hs, drec, rmask)
        d_bias = wide_sum(xp, drec, (0, 1))
    else:
        d_kernel = xp.concatenate(
            [_h_prev_gemm(xp, h0, hs, drec, rmask), xp.matmul(aux.reshape(-1, u).T, dcand.reshape(-1, u))], axis=1)
        d_bias = xp.concatenate([wide_sum(xp, drec, (0, 1)), wide_sum(xp, dcand, (0, 1))])
    d_xproj = _batch_major(xp, [drec[:, :, :2 * u], dcand], n, steps, a["go_backwards"], dt)
    return d_xproj, dh, d_kernel, d_bias


# ---------------------------------------------------------------------------------------------------
# SimpleRNN


@kernel("rnn_scan")
def _rnn_scan(ctx, attrs, xproj, h0, recurrent_kernel, mask, recurrent_mask):
    xp = ctx.xp
    a = scan_attrs(attrs, "rnn_scan")
    u, act = a["units"], a["activation"]
    n, steps, _ = xproj.shape
    xt = _time_major(xproj, a["go_backwards"])
    valid, rmask = _masks(ctx, a, mask, recurrent_mask, n, steps, xproj.dtype)
    hs = xp.empty((steps, n, u), dtype=xproj.dtype)
    h = h0
    for s in range(steps):
        pre = xp.matmul(_masked(h, rmask), recurrent_kernel)
        pre += xt[s]
        h_new = _activate(xp, act, pre)
        if valid is not None:
            h_new = xp.where(valid[s], h_new, h)
        hs[s] = h_new
        h = hs[s]
    outputs, h_last = _outputs(xp, hs, h0, a["return_sequences"])
    return outputs, h_last, hs


@kernel("rnn_scan_grad")
def _rnn_scan_grad(ctx, attrs, h0, recurrent_kernel, mask, recurrent_mask, hs, d_out, d_h):
    xp = ctx.xp
    a = scan_attrs(attrs, "rnn_scan_grad")
    u, act, seq = a["units"], a["activation"], a["return_sequences"]
    steps, n, _ = hs.shape
    dt = hs.dtype
    valid, rmask = _masks(ctx, a, mask, recurrent_mask, n, steps, dt)
    dout_tm = d_out.transpose(1, 0, 2) if seq and d_out.ndim else None
    dh = _start(xp, (n, u), dt, d_h) if seq else _start(xp, (n, u), dt, d_h, d_out)
    dpre = xp.empty((steps, n, u), dtype=dt)
    kernel_t = recurrent_kernel.T
    for s in range(steps - 1, -1, -1):
        if seq:
            dh = dh + _step_grad(d_out, dout_tm, s)
        if valid is not None:
            m = valid[s]
            dh_kept = xp.where(m, 0, dh)
            dh = xp.where(m, dh, 0)
        dpre[s] = _backprop(xp, act, dh, hs[s])
        dh = xp.matmul(dpre[s], kernel_t)
        if rmask is not None:
            dh *= rmask
        if valid is not None:
            dh += dh_kept
    d_kernel = _h_prev_gemm(xp, h0, hs, dpre, rmask)
    d_xproj = _batch_major(xp, [dpre], n, steps, a["go_backwards"], dt)
    return d_xproj, dh, d_kernel
