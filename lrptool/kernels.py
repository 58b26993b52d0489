"""NCHW numerical kernels: im2col/col2im, convolutions, pooling and their adjoints.

All arrays are 4-D NCHW (1-D data uses H=1). Loops run in Numba; dense
products go through BLAS via ``np.matmul``. The output dtype follows the
input dtype (float32 or float64).
"""

import os
import threading

# Idle OpenMP workers that spin steal the cores BLAS needs between two kernels; must be set
# before Numba starts its thread pool.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numba  # noqa: E402
import numpy as np  # noqa: E402
from numba import prange  # noqa: E402

__all__ = [
    "conv_output_size",
    "im2col",
    "col2im",
    "conv2d",
    "conv2d_transpose_input",
    "conv_transpose2d",
    "max_pool2d",
    "avg_pool2d",
    "avg_pool2d_transpose",
    "max_pool2d_route",
]

# Upper bound for one im2col buffer; larger batches are processed in chunks.
# The buffer is reused from call to call: touching freshly allocated pages
# costs more than the unfolding itself.
_COLS_BUDGET_BYTES = 32 * 1024 * 1024

_workspaces = threading.local()


def _scratch(shape, dtype):
    """A reusable per-thread buffer of ``shape``; valid until the next call in this thread."""
    size = int(np.prod(shape))
    key = np.dtype(dtype).str
    pool = _workspaces.__dict__.setdefault("buffers", {})
    buffer = pool.get(key)
    if buffer is None or buffer.size < size:
        buffer = np.empty(max(size, 1), dtype=dtype)
        pool[key] = buffer
    return buffer[:size].reshape(shape)


# ---------------------------------------------------------------------------
# Numba kernels
# ---------------------------------------------------------------------------

@numba.njit(cache=True)
def _valid_range(n, step, off, size):
    """Indices k in [0, n) with 0 <= k*step + off < size, as (lo, hi)."""
    if off >= 0:
        lo = 0
    else:
        lo = (-off + step - 1) // step
    lim = size - 1 - off
    if lim < 0:
        hi = 0
    else:
        hi = lim // step + 1
        if hi > n:
            hi = n
    if lo > hi:
        lo = hi
    return lo, hi


@numba.njit(cache=True, parallel=True)
def _im2col_kernel(x, kh, kw, sh, sw, dh, dw, top, left, OH, OW, cols):
    N, C, H, W = x.shape
    K = kh * kw
    zero = x.dtype.type(0)
    for p in prange(N * C):
        n = p // C
        c = p - n * C
        for i in range(kh):
            oh_lo, oh_hi = _valid_range(OH, sh, i * dh - top, H)
            for j in range(kw):
                r = c * K + i * kw + j
                ow_lo, ow_hi = _valid_range(OW, sw, j * dw - left, W)
                for oh in range(OH):
                    base = oh * OW
                    if oh < oh_lo or oh >= oh_hi:
                        for ow in range(OW):
                            cols[n, r, base + ow] = zero
                        continue
                    h = oh * sh - top + i * dh
                    for ow in range(ow_lo):
                        cols[n, r, base + ow] = zero
                    for ow in range(ow_lo, ow_hi):
                        cols[n, r, base + ow] = x[n, c, h, ow * sw - left + j * dw]
                    for ow in range(ow_hi, OW):
                        cols[n, r, base + ow] = zero
    return cols


@numba.njit(cache=True, parallel=True)
def _col2im_kernel(cols, C, H, W, kh, kw, sh, sw, dh, dw, top, left, OH, OW):
    N = cols.shape[0]
    K = kh * kw
    x = np.zeros((N, C, H, W), dtype=cols.dtype)
    # One (n, c) plane per iteration: planes are disjoint, so no write races.
    for p in prange(N * C):
        n = p // C
        c = p - n * C
        for i in range(kh):
            oh_lo, oh_hi = _valid_range(OH, sh, i * dh - top, H)
            for j in range(kw):
                r = c * K + i * kw + j
                ow_lo, ow_hi = _valid_range(OW, sw, j * dw - left, W)
                for oh in range(oh_lo, oh_hi):
                    h = oh * sh - top + i * dh
                    base = oh * OW
                    for ow in range(ow_lo, ow_hi):
                        x[n, c, h, ow * sw - left + j * dw] += cols[n, r, base + ow]
    return x


@numba.njit(cache=True, parallel=True)
def _max_pool_kernel(x, i_lo, i_hi, j_lo, j_hi, sh, sw, dh, dw, top, left, OH, OW, with_argmax):
    N, C, H, W = x.shape
    y = np.empty((N, C, OH, OW), dtype=x.dtype)
    am = np.empty((N, C, OH, OW) if with_argmax else (0, 0, 0, 0), dtype=np.int64)
    for p in prange(N * C):
        n = p // C
        c = p - n * C
        plane = x[n, c]
        for oh in range(OH):
            h0 = oh * sh - top
            for ow in range(OW):
                w0 = ow * sw - left
                best = x.dtype.type(0)
                arg = -1
                for i in range(i_lo[oh], i_hi[oh]):
                    h = h0 + i * dh
                    for j in range(j_lo[ow], j_hi[ow]):
                        v = plane[h, w0 + j * dw]
                        # strict '>' keeps the first maximum in tap order
                        if arg < 0 or v > best:
                            best = v
                            arg = h * W + w0 + j * dw
                y[n, c, oh, ow] = best
                if with_argmax:
                    am[n, c, oh, ow] = arg
    return y, am


@numba.njit(cache=True, parallel=True)
def _avg_pool_kernel(x, i_lo, i_hi, j_lo, j_hi, sh, sw, dh, dw, top, left, inverse_divisor):
    N, C, H, W = x.shape
    OH, OW = inverse_divisor.shape
    y = np.empty((N, C, OH, OW), dtype=x.dtype)
    for p in prange(N * C):
        n = p // C
        c = p - n * C
        plane = x[n, c]
        for oh in range(OH):
            h0 = oh * sh - top
            for ow in range(OW):
                w0 = ow * sw - left
                s = x.dtype.type(0)
                for i in range(i_lo[oh], i_hi[oh]):
                    h = h0 + i * dh
                    for j in range(j_lo[ow], j_hi[ow]):
                        s += plane[h, w0 + j * dw]
                y[n, c, oh, ow] = s * inverse_divisor[oh, ow]
    return y


@numba.njit(cache=True, parallel=True)
def _avg_pool_t_kernel(g, H, W, i_lo, i_hi, j_lo, j_hi, sh, sw, dh, dw, top, left, inverse_divisor):
    N, C, OH, OW = g.shape
    x = np.zeros((N, C, H, W), dtype=g.dtype)
    for p in prange(N * C):
        n = p // C
        c = p - n * C
        plane = x[n, c]
        for oh in range(OH):
            h0 = oh * sh - top
            for ow in range(OW):
                w0 = ow * sw - left
                v = g[n, c, oh, ow] * inverse_divisor[oh, ow]
                for i in range(i_lo[oh], i_hi[oh]):
                    h = h0 + i * dh
                    for j in range(j_lo[ow], j_hi[ow]):
                        plane[h, w0 + j * dw] += v
    return x


def _tap_ranges(n_out, kernel, stride, dilation, offset, size):
    """Per output index o, the taps k in [lo, hi) with 0 <= o*stride + offset + k*dilation < size."""
    starts = np.arange(n_out, dtype=np.int64) * stride + offset
    lo = np.where(starts >= 0, 0, (-starts + dilation - 1) // dilation)
    room = size - 1 - starts
    hi = np.where(room < 0, 0, np.minimum(kernel, room // dilation + 1))
    return lo, np.maximum(hi, lo)


def _pool_geometry(H, W, kernel, strides, dilations, pads, OH, OW):
    (kh, kw), (sh, sw), (dh, dw), (top, left) = kernel, strides, dilations, pads[:2]
    i_lo, i_hi = _tap_ranges(OH, kh, sh, dh, -top, H)
    j_lo, j_hi = _tap_ranges(OW, kw, sw, dw, -left, W)
    return i_lo, i_hi, j_lo, j_hi


def _inverse_divisor(H, W, kernel, strides, dilations, pads, OH, OW, count_include_pad, dtype):
    (kh, kw), (sh, sw), (dh, dw), (top, left, bottom, right) = kernel, strides, dilations, pads
    if count_include_pad:
        # taps inside the padded extent [-top, H+bottom) x [-left, W+right)
        i_lo, i_hi = _tap_ranges(OH, kh, sh, dh, 0, H + top + bottom)
        j_lo, j_hi = _tap_ranges(OW, kw, sw, dw, 0, W + left + right)
    else:
        i_lo, i_hi, j_lo, j_hi = _pool_geometry(H, W, kernel, strides, dilations, pads, OH, OW)
    count = np.outer(i_hi - i_lo, j_hi - j_lo).astype(np.float64)
    return np.where(count > 0, 1.0 / np.maximum(count, 1), 0.0).astype(dtype)


@numba.njit(cache=True, parallel=True)
def _max_route_kernel(g, argmax, H, W):
    N, C, OH, OW = g.shape
    x = np.zeros((N, C, H, W), dtype=g.dtype)
    for p in prange(N * C):
        n = p // C
        c = p - n * C
        for oh in range(OH):
            for ow in range(OW):
                a = argmax[n, c, oh, ow]
                if a >= 0:
                    h = a // W
                    x[n, c, h, a - h * W] += g[n, c, oh, ow]
    return x


# ---------------------------------------------------------------------------
# Helpers
# ---------------------------------------------------------------------------

def _ints(t, n, name):
    t = tuple(int(v) for v in t)
    if len(t) != n:
        raise ValueError(f"{name} must have {n} entries, got {t}")
    return t


def _float_array(a):
    a = np.asarray(a)
    if a.dtype not in (np.float32, np.float64):
        a = a.astype(np.float64)
    # C-contiguous inputs keep Numba from compiling extra layout variants.
    return np.ascontiguousarray(a)


def conv_output_size(size, k, s, d, pad_begin, pad_end):
    """Floor-mode output length of a conv/pool along one axis."""
    return (size + pad_begin + pad_end - d * (k - 1) - 1) // s + 1


def _out_hw(H, W, kernel, strides, dilations, pads):
    kh, kw = kernel
    sh, sw = strides
    dh, dw = dilations
    top, left, bottom, right = pads
    OH = conv_output_size(H, kh, sh, dh, top, bottom)
    OW = conv_output_size(W, kw, sw, dw, left, right)
    if OH <= 0 or OW <= 0:
        raise ValueError(f"empty output {OH}x{OW} for input {H}x{W}")
    return OH, OW


def _check_geometry(kernel, strides, dilations, pads):
    kernel = _ints(kernel, 2, "kernel")
    strides = _ints(strides, 2, "strides")
    dilations = _ints(dilations, 2, "dilations")
    pads = _ints(pads, 4, "pads")
    if min(kernel) < 1 or min(strides) < 1 or min(dilations) < 1:
        raise ValueError("kernel, strides and dilations must be >= 1")
    if min(pads) < 0:
        raise ValueError("pads must be >= 0")
    return kernel, strides, dilations, pads


def _is_pointwise(kernel, strides, pads):
    # 1x1, stride 1, no padding: im2col/col2im are plain reshapes
    return kernel == (1, 1) and strides == (1, 1) and pads == (0, 0, 0, 0)


def _chunk(n_batch, per_sample_bytes):
    return max(1, min(n_batch, _COLS_BUDGET_BYTES // max(1, per_sample_bytes)))


# ---------------------------------------------------------------------------
# Public API
# ---------------------------------------------------------------------------

def im2col(x, kernel, strides, dilations, pads):
    """Unfold x (N,C,H,W) into cols (N, C*kh*kw, OH*OW), row = c*kh*kw + i*kw + j."""
    x = _float_array(x)
    kernel, strides, dilations, pads = _check_geometry(kernel, strides, dilations, pads)
    OH, OW = _out_hw(x.shape[2], x.shape[3], kernel, strides, dilations, pads)
    cols = np.empty((x.shape[0], x.shape[1] * kernel[0] * kernel[1], OH * OW), dtype=x.dtype)
    return _im2col_kernel(x, kernel[0], kernel[1], strides[0], strides[1],
                          dilations[0], dilations[1], pads[0], pads[1], OH, OW, cols)


def _col2im_raw(cols, input_shape, kernel, strides, dilations, pads, OH, OW):
    N, C, H, W = input_shape
    return _col2im_kernel(cols, C, H, W, kernel[0], kernel[1], strides[0], strides[1],
                          dilations[0], dilations[1], pads[0], pads[1], OH, OW)


def col2im(cols, input_shape, kernel, strides, dilations, pads):
    """Adjoint of im2col: scatter-add cols back into an (N,C,H,W) array."""
    cols = _float_array(cols)
    input_shape = _ints(input_shape, 4, "input_shape")
    kernel, strides, dilations, pads = _check_geometry(kernel, strides, dilations, pads)
    N, C, H, W = input_shape
    OH, OW = _out_hw(H, W, kernel, strides, dilations, pads)
    expected = (N, C * kernel[0] * kernel[1], OH * OW)
    if cols.shape != expected:
        raise ValueError(f"cols shape {cols.shape} != expected {expected}")
    return _col2im_raw(cols, input_shape, kernel, strides, dilations, pads, OH, OW)


def conv2d(x, weight, bias, strides, dilations, pads, group=1):
    """Grouped 2-D convolution (cross-correlation, ONNX Conv semantics)."""
    x = _float_array(x)
    dtype = x.dtype
    weight = np.ascontiguousarray(weight, dtype=dtype)
    N, C, H, W = x.shape
    O, Cg, kh, kw = weight.shape
    group = int(group)
    if C != Cg * group or O % group:
        raise ValueError(f"conv2d: x {x.shape}, weight {weight.shape}, group {group}")
    kernel, strides, dilations, pads = _check_geometry((kh, kw), strides, dilations, pads)
    OH, OW = _out_hw(H, W, kernel, strides, dilations, pads)
    G, Og, K, L = group, O // group, Cg * kh * kw, OH * OW
    wg = weight.reshape(G, Og, K)
    pointwise = _is_pointwise(kernel, strides, pads)
    y = np.empty((N, O, OH, OW), dtype=dtype)
    step = _chunk(N, C * kh * kw * L * dtype.itemsize)
    for n0 in range(0, N, step):
        xs = x[n0:n0 + step]
        n = xs.shape[0]
        if pointwise:
            cols = xs.reshape(n, C, L)
        else:
            cols = _im2col_kernel(xs, kh, kw, strides[0], strides[1], dilations[0], dilations[1], pads[0],
                                  pads[1], OH, OW, _scratch((n, C * kh * kw, L), dtype))
        # group rows are contiguous in cols, so one batched matmul covers all groups
        np.matmul(wg, cols.reshape(n, G, K, L), out=y[n0:n0 + step].reshape(n, G, Og, L))
    if bias is not None:
        y += np.asarray(bias, dtype=dtype).reshape(1, O, 1, 1)
    return y


def _conv_t_core(g, weight, out_shape, kernel, strides, dilations, pads, group):
    # Shared by conv2d_transpose_input and conv_transpose2d: W^T @ g, then col2im.
    N, O, OH, OW = g.shape
    _, C, H, W = out_shape
    Cg = weight.shape[1]
    kh, kw = kernel
    G, Og, K, L = group, O // group, Cg * kh * kw, OH * OW
    wt = np.ascontiguousarray(weight.reshape(G, Og, K).transpose(0, 2, 1))
    pointwise = _is_pointwise(kernel, strides, pads)
    x = np.empty((N, C, H, W), dtype=g.dtype)
    step = _chunk(N, C * kh * kw * L * g.dtype.itemsize)
    for n0 in range(0, N, step):
        gs = g[n0:n0 + step]
        n = gs.shape[0]
        cols = _scratch((n, G, K, L), g.dtype)
        np.matmul(wt, gs.reshape(n, G, Og, L), out=cols)
        cols = cols.reshape(n, C * kh * kw, L)
        if pointwise and (OH, OW) == (H, W):
            x[n0:n0 + step] = cols.reshape(n, C, H, W)
        else:
            x[n0:n0 + step] = _col2im_raw(cols, (n, C, H, W), kernel, strides,
                                          dilations, pads, OH, OW)
    return x


def conv2d_transpose_input(y_grad, weight, input_shape, strides, dilations, pads, group=1):
    """Adjoint of conv2d (without bias) with respect to its input."""
    g = _float_array(y_grad)
    dtype = g.dtype
    weight = np.ascontiguousarray(weight, dtype=dtype)
    input_shape = _ints(input_shape, 4, "input_shape")
    N, C, H, W = input_shape
    O, Cg, kh, kw = weight.shape
    group = int(group)
    if C != Cg * group or O % group:
        raise ValueError(f"conv2d_transpose_input: input {input_shape}, "
                         f"weight {weight.shape}, group {group}")
    kernel, strides, dilations, pads = _check_geometry((kh, kw), strides, dilations, pads)
    OH, OW = _out_hw(H, W, kernel, strides, dilations, pads)
    if g.shape != (N, O, OH, OW):
        raise ValueError(f"y_grad shape {g.shape} != expected {(N, O, OH, OW)}")
    return _conv_t_core(g, weight, input_shape, kernel, strides, dilations, pads, group)


def conv_transpose2d(x, weight, bias, strides, dilations, pads, output_padding=(0, 0), group=1):
    """ONNX ConvTranspose: weight (C_in, O/group, kh, kw), explicit pads."""
    x = _float_array(x)
    dtype = x.dtype
    weight = np.ascontiguousarray(weight, dtype=dtype)
    N, C_in, H, W = x.shape
    wc, Og, kh, kw = weight.shape
    group = int(group)
    if wc != C_in or C_in % group:
        raise ValueError(f"conv_transpose2d: x {x.shape}, weight {weight.shape}, group {group}")
    kernel, strides, dilations, pads = _check_geometry((kh, kw), strides, dilations, pads)
    oph, opw = _ints(output_padding, 2, "output_padding")
    sh, sw = strides
    dh, dw = dilations
    top, left, bottom, right = pads
    O = Og * group
    H_out = sh * (H - 1) + oph + (kh - 1) * dh + 1 - top - bottom
    W_out = sw * (W - 1) + opw + (kw - 1) * dw + 1 - left - right
    if H_out <= 0 or W_out <= 0:
        raise ValueError(f"conv_transpose2d: empty output {H_out}x{W_out}")
    # This is the input-adjoint of a conv2d whose weight is `weight` read as
    # (out=C_in, in/group=Og, kh, kw). col2im drops the taps that land in the
    # pads (the crop); output_padding rows/cols receive nothing unless a tap
    # reaches them, matching the zero-extended canvas.
    y = _conv_t_core(x, weight, (N, O, H_out, W_out), kernel, strides, dilations, pads, group)
    if bias is not None:
        y += np.asarray(bias, dtype=dtype).reshape(1, O, 1, 1)
    return y


def max_pool2d(x, kernel, strides, dilations, pads, out_hw, with_argmax=True):
    """Max pooling; returns (y, argmax) with argmax = h*W + w in the (n, c) plane.

    Taps outside the input are ignored; a window with no valid tap gives 0 and -1. Without
    ``with_argmax`` the second result is an empty array (the forward pass needs no winners).
    """
    x = _float_array(x)
    kernel, strides, dilations, pads = _check_geometry(kernel, strides, dilations, pads)
    OH, OW = _ints(out_hw, 2, "out_hw")
    ranges = _pool_geometry(x.shape[2], x.shape[3], kernel, strides, dilations, pads, OH, OW)
    return _max_pool_kernel(x, *ranges, strides[0], strides[1], dilations[0], dilations[1], pads[0], pads[1],
                            OH, OW, bool(with_argmax))


def avg_pool2d(x, kernel, strides, dilations, pads, out_hw, count_include_pad=False):
    """Average pooling over valid taps (ONNX/onnxruntime divisor rules)."""
    x = _float_array(x)
    kernel, strides, dilations, pads = _check_geometry(kernel, strides, dilations, pads)
    OH, OW = _ints(out_hw, 2, "out_hw")
    H, W = x.shape[2:]
    ranges = _pool_geometry(H, W, kernel, strides, dilations, pads, OH, OW)
    inverse = _inverse_divisor(H, W, kernel, strides, dilations, pads, OH, OW, count_include_pad, x.dtype)
    return _avg_pool_kernel(x, *ranges, strides[0], strides[1], dilations[0], dilations[1], pads[0], pads[1],
                            inverse)


def avg_pool2d_transpose(g, input_shape, kernel, strides, dilations, pads,
                         count_include_pad=False):
    """Adjoint of avg_pool2d: out_hw is taken from g.shape[2:]."""
    g = _float_array(g)
    N, C, H, W = _ints(input_shape, 4, "input_shape")
    if g.shape[:2] != (N, C):
        raise ValueError(f"g shape {g.shape} does not match input_shape {input_shape}")
    kernel, strides, dilations, pads = _check_geometry(kernel, strides, dilations, pads)
    OH, OW = g.shape[2:]
    ranges = _pool_geometry(H, W, kernel, strides, dilations, pads, OH, OW)
    inverse = _inverse_divisor(H, W, kernel, strides, dilations, pads, OH, OW, count_include_pad, g.dtype)
    return _avg_pool_t_kernel(g, H, W, *ranges, strides[0], strides[1], dilations[0], dilations[1], pads[0],
                              pads[1], inverse)


def max_pool2d_route(g, argmax, input_shape):
    """Adjoint of max selection: scatter-add g to the argmax positions."""
    g = _float_array(g)
    argmax = np.ascontiguousarray(argmax, dtype=np.int64)
    N, C, H, W = _ints(input_shape, 4, "input_shape")
    if argmax.shape != g.shape or g.shape[:2] != (N, C):
        raise ValueError(f"g {g.shape} / argmax {argmax.shape} / input {input_shape} mismatch")
    return _max_route_kernel(g, argmax, H, W)
