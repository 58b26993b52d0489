import math

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper

from lrptool import kernels as K

RTOL, ATOL = 1e-4, 1e-5

# (N, C, H, W, O, kh, kw, strides, dilations, pads(t, l, b, r), group)
CONV_CASES = [
    (2, 3, 7, 8, 4, 3, 3, (1, 1), (1, 1), (1, 1, 1, 1), 1),
    (2, 4, 9, 7, 6, 3, 2, (2, 1), (1, 2), (0, 1, 2, 0), 2),
    (1, 4, 8, 8, 8, 3, 3, (2, 2), (2, 2), (2, 1, 0, 2), 4),  # depthwise x2
    (2, 3, 1, 11, 5, 1, 3, (1, 2), (1, 2), (0, 2, 0, 1), 1),  # 1-D
    (1, 2, 6, 5, 3, 1, 1, (1, 1), (1, 1), (0, 0, 0, 0), 1),  # 1x1
    (1, 2, 9, 9, 3, 2, 2, (3, 3), (1, 1), (1, 0, 0, 1), 1),  # stride > kernel
]

# (N, C_in, H, W, O/group, kh, kw, strides, dilations, pads, output_padding, group)
CONVT_CASES = [
    (2, 3, 4, 5, 2, 3, 3, (2, 2), (1, 1), (1, 1, 1, 1), (1, 1), 1),
    (1, 4, 3, 4, 3, 2, 3, (2, 3), (1, 1), (0, 1, 1, 0), (1, 2), 2),
    (2, 4, 5, 3, 1, 3, 3, (1, 2), (2, 1), (2, 0, 1, 1), (0, 1), 4),  # depthwise
    (1, 2, 1, 6, 3, 1, 4, (1, 2), (1, 1), (0, 1, 0, 2), (0, 1), 1),  # 1-D
    (1, 2, 3, 3, 2, 2, 2, (1, 1), (1, 1), (0, 0, 0, 0), (0, 0), 1),
    (2, 4, 3, 5, 3, 1, 1, (1, 1), (1, 1), (0, 0, 0, 0), (0, 0), 2),  # pointwise
]

# (N, C, H, W, kernel, strides, dilations, pads, ceil_mode)
POOL_CASES = [
    (2, 3, 7, 8, (2, 2), (2, 2), (1, 1), (0, 0, 0, 0), False),
    (2, 3, 7, 8, (3, 3), (2, 2), (1, 1), (1, 1, 1, 1), True),
    (1, 2, 9, 10, (3, 2), (2, 3), (2, 1), (1, 0, 2, 1), True),
    (2, 2, 1, 11, (1, 3), (1, 2), (1, 1), (0, 1, 0, 1), True),  # 1-D
    (1, 1, 5, 5, (2, 2), (3, 3), (1, 1), (0, 0, 1, 1), True),  # ceil overflow
    (1, 2, 6, 7, (3, 3), (1, 1), (1, 1), (1, 1, 1, 1), False),
    (1, 2, 8, 9, (2, 3), (3, 2), (1, 2), (1, 2, 0, 1), True),
]


def _ids(cases):
    return [f"case{i}" for i in range(len(cases))]


def rng(seed=0):
    return np.random.default_rng(seed)


# ---------------------------------------------------------------------------
# naive references (plain loops)
# ---------------------------------------------------------------------------

def out_len(size, k, s, d, pb, pe, ceil_mode=False):
    span = size + pb + pe - d * (k - 1) - 1
    if not ceil_mode:
        return span // s + 1
    o = math.ceil(span / s) + 1
    if (o - 1) * s >= size + pb:  # window starting inside the end padding is dropped
        o -= 1
    return o


def pool_out_hw(H, W, kernel, strides, dilations, pads, ceil_mode):
    return (out_len(H, kernel[0], strides[0], dilations[0], pads[0], pads[2], ceil_mode),
            out_len(W, kernel[1], strides[1], dilations[1], pads[1], pads[3], ceil_mode))


def naive_im2col(x, kernel, strides, dilations, pads):
    N, C, H, W = x.shape
    kh, kw = kernel
    OH, OW = pool_out_hw(H, W, kernel, strides, dilations, pads, False)
    cols = np.zeros((N, C * kh * kw, OH * OW), x.dtype)
    for n in range(N):
        for c in range(C):
            for i in range(kh):
                for j in range(kw):
                    for oh in range(OH):
                        for ow in range(OW):
                            h = oh * strides[0] - pads[0] + i * dilations[0]
                            w = ow * strides[1] - pads[1] + j * dilations[1]
                            if 0 <= h < H and 0 <= w < W:
                                cols[n, c * kh * kw + i * kw + j, oh * OW + ow] = x[n, c, h, w]
    return cols


def naive_col2im(cols, shape, kernel, strides, dilations, pads):
    N, C, H, W = shape
    kh, kw = kernel
    OH, OW = pool_out_hw(H, W, kernel, strides, dilations, pads, False)
    x = np.zeros(shape, cols.dtype)
    for n in range(N):
        for c in range(C):
            for i in range(kh):
                for j in range(kw):
                    for oh in range(OH):
                        for ow in range(OW):
                            h = oh * strides[0] - pads[0] + i * dilations[0]
                            w = ow * strides[1] - pads[1] + j * dilations[1]
                            if 0 <= h < H and 0 <= w < W:
                                x[n, c, h, w] += cols[n, c * kh * kw + i * kw + j, oh * OW + ow]
    return x


def naive_conv2d(x, wt, b, strides, dilations, pads, group):
    N, C, H, W = x.shape
    O, Cg, kh, kw = wt.shape
    Og = O // group
    OH, OW = pool_out_hw(H, W, (kh, kw), strides, dilations, pads, False)
    y = np.zeros((N, O, OH, OW), np.float64)
    for n in range(N):
        for o in range(O):
            g = o // Og
            for oh in range(OH):
                for ow in range(OW):
                    s = 0.0 if b is None else float(b[o])
                    for c in range(Cg):
                        for i in range(kh):
                            for j in range(kw):
                                h = oh * strides[0] - pads[0] + i * dilations[0]
                                w = ow * strides[1] - pads[1] + j * dilations[1]
                                if 0 <= h < H and 0 <= w < W:
                                    s += x[n, g * Cg + c, h, w] * wt[o, c, i, j]
                    y[n, o, oh, ow] = s
    return y


def naive_conv_transpose2d(x, wt, b, strides, dilations, pads, output_padding, group):
    # scatter every input pixel onto an uncropped canvas, then crop the pads
    N, C, H, W = x.shape
    _, Og, kh, kw = wt.shape
    Cg = C // group
    O = Og * group
    Hc = strides[0] * (H - 1) + (kh - 1) * dilations[0] + 1 + output_padding[0]
    Wc = strides[1] * (W - 1) + (kw - 1) * dilations[1] + 1 + output_padding[1]
    canvas = np.zeros((N, O, Hc, Wc), np.float64)
    for n in range(N):
        for c in range(C):
            g = c // Cg
            for h in range(H):
                for w in range(W):
                    for oc in range(Og):
                        for i in range(kh):
                            for j in range(kw):
                                canvas[n, g * Og + oc, h * strides[0] + i * dilations[0],
                                       w * strides[1] + j * dilations[1]] += x[n, c, h, w] * wt[c, oc, i, j]
    y = canvas[:, :, pads[0]:Hc - pads[2], pads[1]:Wc - pads[3]]
    if b is not None:
        y = y + np.asarray(b).reshape(1, -1, 1, 1)
    return y


def naive_pool(x, kernel, strides, dilations, pads, out_hw, mode, count_include_pad=False):
    N, C, H, W = x.shape
    OH, OW = out_hw
    top, left, bottom, right = pads
    y = np.zeros((N, C, OH, OW), np.float64)
    am = np.full((N, C, OH, OW), -1, np.int64)
    for n in range(N):
        for c in range(C):
            for oh in range(OH):
                for ow in range(OW):
                    vals, idx, padded = [], [], 0
                    for i in range(kernel[0]):
                        for j in range(kernel[1]):
                            h = oh * strides[0] - top + i * dilations[0]
                            w = ow * strides[1] - left + j * dilations[1]
                            if -top <= h < H + bottom and -left <= w < W + right:
                                padded += 1
                            if 0 <= h < H and 0 <= w < W:
                                vals.append(x[n, c, h, w])
                                idx.append(h * W + w)
                    if not vals:
                        continue
                    if mode == "max":
                        k = int(np.argmax(vals))  # first max wins
                        y[n, c, oh, ow] = vals[k]
                        am[n, c, oh, ow] = idx[k]
                    else:
                        d = padded if count_include_pad else len(vals)
                        y[n, c, oh, ow] = sum(vals) / d
    return y, am


# ---------------------------------------------------------------------------
# onnxruntime helpers
# ---------------------------------------------------------------------------

def run_onnx(op, inputs, n_outputs=1, **attrs):
    names = [f"in{i}" for i in range(len(inputs))]
    outs = [f"out{i}" for i in range(n_outputs)]
    node = helper.make_node(op, names, outs, **attrs)
    vi_in = [helper.make_tensor_value_info(nm, helper.np_dtype_to_tensor_dtype(a.dtype), a.shape)
             for nm, a in zip(names, inputs)]
    out_types = [helper.np_dtype_to_tensor_dtype(inputs[0].dtype), TensorProto.INT64]
    vi_out = [helper.make_tensor_value_info(nm, out_types[k], [None] * 4) for k, nm in enumerate(outs)]
    graph = helper.make_graph([node], "g", vi_in, vi_out)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 19)])
    model.ir_version = 9
    onnx.checker.check_model(model)
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return sess.run(None, dict(zip(names, inputs)))


def close(a, b):
    np.testing.assert_allclose(a, b, rtol=RTOL, atol=ATOL)


def dot(a, b):
    return float(np.dot(np.ravel(a).astype(np.float64), np.ravel(b).astype(np.float64)))


def assert_adjoint(lhs, rhs):
    assert abs(lhs - rhs) <= 1e-9 * max(1.0, abs(lhs), abs(rhs)), (lhs, rhs)


# ---------------------------------------------------------------------------
# im2col / col2im
# ---------------------------------------------------------------------------

@pytest.mark.parametrize("case", CONV_CASES, ids=_ids(CONV_CASES))
def test_im2col_col2im_naive_and_adjoint(case):
    N, C, H, W, O, kh, kw, s, d, p, g = case
    r = rng(1)
    x = r.standard_normal((N, C, H, W))
    cols = K.im2col(x, (kh, kw), s, d, p)
    np.testing.assert_array_equal(cols, naive_im2col(x, (kh, kw), s, d, p))
    c = r.standard_normal(cols.shape)
    back = K.col2im(c, x.shape, (kh, kw), s, d, p)
    np.testing.assert_allclose(back, naive_col2im(c, x.shape, (kh, kw), s, d, p), rtol=1e-12, atol=1e-12)
    assert_adjoint(dot(cols, c), dot(x, back))
    assert cols.dtype == back.dtype == np.float64
    assert K.im2col(x.astype(np.float32), (kh, kw), s, d, p).dtype == np.float32
    assert K.col2im(c.astype(np.float32), x.shape, (kh, kw), s, d, p).dtype == np.float32


# ---------------------------------------------------------------------------
# conv2d and its input adjoint
# ---------------------------------------------------------------------------

@pytest.mark.parametrize("case", CONV_CASES, ids=_ids(CONV_CASES))
def test_conv2d_naive_and_onnx(case):
    N, C, H, W, O, kh, kw, s, d, p, g = case
    r = rng(2)
    x = r.standard_normal((N, C, H, W)).astype(np.float32)
    wt = r.standard_normal((O, C // g, kh, kw)).astype(np.float32)
    b = r.standard_normal(O).astype(np.float32)
    y = K.conv2d(x, wt, b, s, d, p, g)
    assert y.dtype == np.float32
    close(y, naive_conv2d(x, wt, b, s, d, p, g))
    (ref,) = run_onnx("Conv", [x, wt, b], kernel_shape=[kh, kw], strides=list(s),
                      dilations=list(d), pads=[p[0], p[1], p[2], p[3]], group=g)
    close(y, ref)
    y0 = K.conv2d(x, wt, None, s, d, p, g)
    close(y0, y - b.reshape(1, -1, 1, 1))
    y64 = K.conv2d(x.astype(np.float64), wt.astype(np.float64), b.astype(np.float64), s, d, p, g)
    assert y64.dtype == np.float64
    close(y64, ref)


@pytest.mark.parametrize("case", CONV_CASES, ids=_ids(CONV_CASES))
def test_conv2d_transpose_input_adjoint(case):
    N, C, H, W, O, kh, kw, s, d, p, g = case
    r = rng(3)
    x = r.standard_normal((N, C, H, W))
    wt = r.standard_normal((O, C // g, kh, kw))
    y = K.conv2d(x, wt, None, s, d, p, g)
    gy = r.standard_normal(y.shape)
    gx = K.conv2d_transpose_input(gy, wt, x.shape, s, d, p, g)
    assert gx.shape == x.shape and gx.dtype == np.float64
    assert_adjoint(dot(y, gy), dot(x, gx))
    gx32 = K.conv2d_transpose_input(gy.astype(np.float32), wt.astype(np.float32), x.shape, s, d, p, g)
    assert gx32.dtype == np.float32
    close(gx32, gx)


def test_conv2d_batch_chunking(monkeypatch):
    # force one-sample chunks so the chunked path is exercised
    monkeypatch.setattr(K, "_COLS_BUDGET_BYTES", 1)
    r = rng(4)
    x = r.standard_normal((3, 4, 6, 5))
    wt = r.standard_normal((6, 2, 3, 3))
    y = K.conv2d(x, wt, None, (1, 2), (1, 1), (1, 0, 1, 2), 2)
    close(y, naive_conv2d(x, wt, None, (1, 2), (1, 1), (1, 0, 1, 2), 2))
    gy = r.standard_normal(y.shape)
    gx = K.conv2d_transpose_input(gy, wt, x.shape, (1, 2), (1, 1), (1, 0, 1, 2), 2)
    assert_adjoint(dot(y, gy), dot(x, gx))


# ---------------------------------------------------------------------------
# ConvTranspose
# ---------------------------------------------------------------------------

@pytest.mark.parametrize("case", CONVT_CASES, ids=_ids(CONVT_CASES))
def test_conv_transpose2d_naive_and_onnx(case):
    N, C, H, W, Og, kh, kw, s, d, p, op, g = case
    r = rng(5)
    x = r.standard_normal((N, C, H, W)).astype(np.float32)
    wt = r.standard_normal((C, Og, kh, kw)).astype(np.float32)
    b = r.standard_normal(Og * g).astype(np.float32)
    y = K.conv_transpose2d(x, wt, b, s, d, p, op, g)
    assert y.dtype == np.float32
    close(y, naive_conv_transpose2d(x, wt, b, s, d, p, op, g))
    (ref,) = run_onnx("ConvTranspose", [x, wt, b], kernel_shape=[kh, kw], strides=list(s),
                      dilations=list(d), pads=list(p), output_padding=list(op), group=g)
    assert y.shape == ref.shape
    close(y, ref)
    y64 = K.conv_transpose2d(x.astype(np.float64), wt.astype(np.float64), b.astype(np.float64),
                             s, d, p, op, g)
    assert y64.dtype == np.float64
    close(y64, ref)


@pytest.mark.parametrize("case", CONVT_CASES, ids=_ids(CONVT_CASES))
def test_conv_transpose2d_is_conv2d_adjoint(case):
    N, C, H, W, Og, kh, kw, s, d, p, op, g = case
    r = rng(6)
    x = r.standard_normal((N, C, H, W))
    wt = r.standard_normal((C, Og, kh, kw))
    y = K.conv_transpose2d(x, wt, None, s, d, p, op, g)
    z = r.standard_normal(y.shape)
    # same weight read as a conv2d kernel (out=C_in, in/group=Og) maps y's space back to x's
    cz = K.conv2d(z, wt, None, s, d, p, g)
    assert cz.shape == x.shape
    assert_adjoint(dot(y, z), dot(x, cz))
    close(y, K.conv2d_transpose_input(x, wt, y.shape, s, d, p, g))


# ---------------------------------------------------------------------------
# pooling
# ---------------------------------------------------------------------------

@pytest.mark.parametrize("case", POOL_CASES, ids=_ids(POOL_CASES))
def test_max_pool_naive_and_onnx(case):
    N, C, H, W, k, s, d, p, ceil_mode = case
    r = rng(7)
    x = r.standard_normal((N, C, H, W)).astype(np.float32)
    ohw = pool_out_hw(H, W, k, s, d, p, ceil_mode)
    y, am = K.max_pool2d(x, k, s, d, p, ohw)
    assert y.dtype == np.float32 and am.dtype == np.int64 and y.shape == am.shape == (N, C) + ohw
    ry, ram = naive_pool(x, k, s, d, p, ohw, "max")
    close(y, ry)
    np.testing.assert_array_equal(am, ram)
    ref_y, ref_idx = run_onnx("MaxPool", [x], n_outputs=2, kernel_shape=list(k), strides=list(s),
                              dilations=list(d), pads=list(p), ceil_mode=int(ceil_mode))
    assert y.shape == ref_y.shape
    close(y, ref_y)
    # onnx indices are flat over the whole tensor; continuous data has no ties
    np.testing.assert_array_equal(am, ref_idx % (H * W))
    y64, am64 = K.max_pool2d(x.astype(np.float64), k, s, d, p, ohw)
    assert y64.dtype == np.float64
    close(y64, ref_y)
    np.testing.assert_array_equal(am64, am)


@pytest.mark.parametrize("cip", [0, 1])
@pytest.mark.parametrize("case", POOL_CASES, ids=_ids(POOL_CASES))
def test_avg_pool_naive_and_onnx(case, cip):
    N, C, H, W, k, s, d, p, ceil_mode = case
    r = rng(8)
    x = r.standard_normal((N, C, H, W)).astype(np.float32)
    ohw = pool_out_hw(H, W, k, s, d, p, ceil_mode)
    y = K.avg_pool2d(x, k, s, d, p, ohw, bool(cip))
    assert y.dtype == np.float32 and y.shape == (N, C) + ohw
    close(y, naive_pool(x, k, s, d, p, ohw, "avg", bool(cip))[0])
    (ref,) = run_onnx("AveragePool", [x], kernel_shape=list(k), strides=list(s),
                      dilations=list(d), pads=list(p), ceil_mode=int(ceil_mode),
                      count_include_pad=cip)
    assert y.shape == ref.shape
    close(y, ref)
    y64 = K.avg_pool2d(x.astype(np.float64), k, s, d, p, ohw, bool(cip))
    assert y64.dtype == np.float64
    close(y64, ref)


@pytest.mark.parametrize("cip", [False, True])
@pytest.mark.parametrize("case", POOL_CASES, ids=_ids(POOL_CASES))
def test_avg_pool_adjoint(case, cip):
    N, C, H, W, k, s, d, p, ceil_mode = case
    r = rng(9)
    x = r.standard_normal((N, C, H, W))
    ohw = pool_out_hw(H, W, k, s, d, p, ceil_mode)
    y = K.avg_pool2d(x, k, s, d, p, ohw, cip)
    g = r.standard_normal(y.shape)
    gx = K.avg_pool2d_transpose(g, x.shape, k, s, d, p, cip)
    assert gx.shape == x.shape and gx.dtype == np.float64
    assert_adjoint(dot(y, g), dot(x, gx))
    assert K.avg_pool2d_transpose(g.astype(np.float32), x.shape, k, s, d, p, cip).dtype == np.float32


@pytest.mark.parametrize("case", POOL_CASES, ids=_ids(POOL_CASES))
def test_max_pool_route_adjoint(case):
    N, C, H, W, k, s, d, p, ceil_mode = case
    r = rng(10)
    x = r.standard_normal((N, C, H, W))
    ohw = pool_out_hw(H, W, k, s, d, p, ceil_mode)
    y, am = K.max_pool2d(x, k, s, d, p, ohw)

    def select(v):  # the linear map "pick the argmax entries" for fixed argmax
        flat = v.reshape(N, C, H * W)
        return np.take_along_axis(flat, am.reshape(N, C, -1), axis=2).reshape(am.shape)

    np.testing.assert_array_equal(select(x), y)
    g = r.standard_normal(y.shape)
    gx = K.max_pool2d_route(g, am, x.shape)
    assert gx.shape == x.shape and gx.dtype == np.float64
    xr = r.standard_normal(x.shape)
    assert_adjoint(dot(select(xr), g), dot(xr, gx))
    # every window's gradient lands somewhere: total mass is conserved
    assert abs(gx.sum() - g.sum()) < 1e-9
    assert K.max_pool2d_route(g.astype(np.float32), am, x.shape).dtype == np.float32


def test_max_pool_ties_first_wins():
    x = np.zeros((1, 1, 4, 4), np.float32)
    y, am = K.max_pool2d(x, (2, 2), (2, 2), (1, 1), (0, 0, 0, 0), (2, 2))
    np.testing.assert_array_equal(am[0, 0], [[0, 2], [8, 10]])
    x[0, 0, 1, 1] = x[0, 0, 0, 1] = 5.0
    y, am = K.max_pool2d(x, (2, 2), (2, 2), (1, 1), (0, 0, 0, 0), (2, 2))
    assert am[0, 0, 0, 0] == 1 and y[0, 0, 0, 0] == 5.0


def test_max_pool_all_negative_inf_and_empty_window():
    x = np.full((1, 1, 3, 3), -np.inf)
    y, am = K.max_pool2d(x, (2, 2), (1, 1), (1, 1), (0, 0, 0, 0), (2, 2))
    assert np.all(y == -np.inf) and np.all(am >= 0)
    # top pad of 2 with a 1x1 kernel: the first row of windows sees only padding
    x = np.arange(9, dtype=np.float64).reshape(1, 1, 3, 3)
    y, am = K.max_pool2d(x, (1, 1), (1, 1), (1, 1), (2, 0, 0, 0), (5, 3))
    np.testing.assert_array_equal(y[0, 0, :2], 0)
    np.testing.assert_array_equal(am[0, 0, :2], -1)
    np.testing.assert_array_equal(y[0, 0, 2:], x[0, 0])
    g = np.ones_like(y)
    np.testing.assert_array_equal(K.max_pool2d_route(g, am, x.shape), np.ones_like(x))
    avg = K.avg_pool2d(x, (1, 1), (1, 1), (1, 1), (2, 0, 0, 0), (5, 3), False)
    np.testing.assert_array_equal(avg[0, 0, :2], 0)
