"""Constant folding at load time: a node whose inputs are all constants is evaluated with ONNX's reference
evaluator, so that shape arithmetic and weight transforms reach the IR as plain arrays.

A file is not trusted here either: the size of every result is bounded before it is computed (against the
memory budget), and operators the evaluator runs in Python loops are folded only on small constants.
"""

import math
import warnings

import numpy as np
import onnx
from onnx import helper

from lrptool.limits import check_bytes

from .onnx_ops import Unsupported, brief


def shortened(text, limit):
    return text if len(text) <= limit else f"{text[:limit * 2 // 3]} … {text[-limit // 3:]}"


#: ONNX's integer element types (INT8 … UINT64).
INTEGER_TYPES = {2, 3, 4, 5, 6, 7, 12, 13}


def fold_constant_node(ctx, node, attrs):
    """Evaluate a node whose inputs are all constants with ONNX's reference evaluator."""
    if node.op_type == "Constant":
        if len(attrs) != 1:
            raise ctx.invalid(f"a Constant needs exactly one value attribute, it has {len(attrs)}")
        (name, value), = attrs.items()
        if name in ("sparse_value",):
            raise Unsupported("sparse constants")
        if isinstance(value, np.ndarray):
            return [value]
        if name not in ("value_float", "value_floats", "value_int", "value_ints", "value_string", "value_strings"):
            raise ctx.invalid(f"a Constant with attribute {name!r}")
        return [np.asarray(value, dtype=np.int64 if name.startswith("value_int") else
                           (np.float32 if name.startswith("value_float") else None))]
    feeds = {name: ctx.const(name) for name in node.input if name}
    check_fold_size(ctx, node, attrs, feeds)
    if node.op_type == "Cast" and int(attrs.get("to", 0)) in INTEGER_TYPES:
        from .onnx_reader import BATCH_MARKER

        value = np.asarray(feeds.get(node.input[0]))
        if value.dtype.kind in "iu" and np.any(value == BATCH_MARKER):
            # shape arithmetic on the free batch size (jax2tf casts it to int32 and back): the marker stays
            return [value.astype(np.int64)]
    if node.op_type == "Reshape" and ctx.opset < 5:
        # opset 1 takes the target shape as an attribute, which the reference evaluator lacks
        if "shape" not in attrs:
            raise ctx.invalid("lacks the target shape (attribute 'shape')")
        data = np.asarray(ctx.const(node.input[0]))
        target = [d if d != 0 else data.shape[i] if i < data.ndim else 0 for i, d in enumerate(attrs["shape"])]
        try:
            return [np.reshape(data, target)]
        except ValueError:
            raise ctx.invalid(f"cannot reshape a constant of shape {data.shape} into {brief(attrs['shape'])}") from None
    from onnx.reference import ReferenceEvaluator

    try:
        inputs = [helper.make_tensor_value_info(n, helper.np_dtype_to_tensor_dtype(np.asarray(v).dtype),
                                                np.shape(v)) for n, v in feeds.items()]
    except (KeyError, ValueError, TypeError):
        raise Unsupported("a constant input of a type ONNX has no tensor for") from None
    outputs = [helper.make_tensor_value_info(n, onnx.TensorProto.UNDEFINED, None) for n in node.output if n]
    graph = helper.make_graph([node], "fold", inputs, outputs)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", ctx.opset)])
    model.ir_version = min(max(ctx.model.ir_version, 7), onnx.IR_VERSION)
    if node.op_type not in CHEAP_FOLDS:
        check_slow_fold(ctx, node, attrs, model, feeds)
    try:
        with warnings.catch_warnings(), np.errstate(all="ignore"):
            warnings.simplefilter("ignore")
            results = ReferenceEvaluator(model).run(None, {k: np.asarray(v) for k, v in feeds.items()})
    except MemoryError:
        raise
    except Exception as error:  # noqa: BLE001 - the evaluator's failures are the node's problem
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise Unsupported(f"could not evaluate constant node: {shortened(reason, 200)}") from None
    results = [np.asarray(r) for r in results]
    if len(results) < sum(1 for n in node.output if n):
        raise Unsupported("evaluating the constant node gave fewer outputs than it names")
    for result in results:
        check_bytes(result.nbytes, f"{ctx.source}: {ctx.where()}: folding a constant")
    return results


#: Operators ONNX's reference evaluator computes with a few NumPy calls, in time linear in their inputs and
#: outputs (MatMul and Gemm are bounded by ``MOST_FOLD_PRODUCTS``); others loop in Python over windows or
#: regions and are folded only on small inputs (``check_slow_fold``).
CHEAP_FOLDS = {
    "Identity", "Cast", "CastLike", "Reshape", "Flatten", "Squeeze", "Unsqueeze", "Transpose", "Concat", "Split",
    "Slice", "Gather", "GatherElements", "Shape", "Size", "ConstantOfShape", "Range", "Expand", "Tile", "Pad",
    "Add", "Sub", "Mul", "Div", "Pow", "Mod", "Neg", "Abs", "Sqrt", "Exp", "Log", "Reciprocal", "Floor", "Ceil",
    "Round", "Sign", "Relu", "Sigmoid", "Tanh", "Erf", "Clip", "Min", "Max", "Mean", "Sum", "Equal", "Less",
    "Greater", "LessOrEqual", "GreaterOrEqual", "Not", "And", "Or", "Xor", "Where", "IsNaN", "IsInf",
    "ReduceSum", "ReduceMean", "ReduceProd", "ReduceMax", "ReduceMin", "ArgMax", "ArgMin", "MatMul", "Gemm",
    "DequantizeLinear", "QuantizeLinear", "BatchNormalization", "Softmax", "LogSoftmax", "Constant",
}

#: Operators never evaluated at load time: random ones would give other constants at every run, and the region
#: and sequence operators can loop for hours on a few bytes of attributes.
NEVER_FOLDED = {
    "RandomNormal", "RandomUniform", "RandomNormalLike", "RandomUniformLike", "Multinomial", "Bernoulli",
    "RoiAlign", "MaxRoiPool", "GridSample", "NonMaxSuppression", "DeformConv", "Col2Im", "STFT", "DFT",
    "MelWeightMatrix", "RNN", "GRU", "LSTM", "Loop", "Scan", "If",
}

#: Inputs and outputs (elements) up to which a Python-looping operator is folded at load time: well under
#: a second in ONNX's reference evaluator.
MOST_SLOW_FOLD_ELEMENTS = 2 ** 16

#: Multiply-adds up to which a constant MatMul or Gemm is folded (a few seconds at most).
MOST_FOLD_PRODUCTS = 2 ** 32


def check_slow_fold(ctx, node, attrs, model, feeds):
    """Fold an operator outside CHEAP_FOLDS only when ONNX's shape inference bounds its output and inputs,
    outputs and attribute values are small: the reference evaluator loops in Python (and pads inputs by the
    pads given), and a tiny file could keep it busy for hours."""
    if node.op_type in NEVER_FOLDED:
        raise Unsupported("constant inputs (lrptool does not evaluate this operator at load time)")
    too_large = "evaluating it at load time on constants this large would take too long"
    if sum(int(np.size(v)) for v in feeds.values()) > MOST_SLOW_FOLD_ELEMENTS:
        raise Unsupported(too_large)
    numbers = [v for value in attrs.values() if isinstance(value, (int, float, list))
               for v in (value if isinstance(value, list) else [value]) if isinstance(v, (int, float))]
    if any(not math.isfinite(v) or abs(v) > MOST_SLOW_FOLD_ELEMENTS for v in numbers):
        raise Unsupported(too_large)
    try:
        inferred = onnx.shape_inference.infer_shapes(model, strict_mode=True)
    except Exception as error:  # noqa: BLE001 - InferenceError and friends: the node does not fit its inputs
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise Unsupported(f"could not evaluate constant node: {shortened(reason, 200)}") from None
    for output in inferred.graph.output:
        tensor = output.type.tensor_type
        dims = [d.dim_value if d.HasField("dim_value") else None for d in tensor.shape.dim]
        if not tensor.HasField("shape") or None in dims:
            raise Unsupported("a constant node whose output size ONNX cannot tell before evaluating it")
        if math.prod(dims) > MOST_SLOW_FOLD_ELEMENTS:
            raise Unsupported(too_large)


def check_fold_size(ctx, node, attrs, feeds):
    """Refuse folding a node whose result would not fit the memory budget, before it is computed."""
    try:
        elements = fold_elements(node, attrs, [np.asarray(feeds[n]) if n else None for n in node.input])
    except (ValueError, TypeError, OverflowError, IndexError):
        return  # values the evaluator will refuse itself
    if elements is not None:
        check_bytes(max(int(elements), 0) * 8, f"{ctx.source}: {ctx.where()}: folding a constant of {elements:,} "
                                               "elements")


def fold_elements(node, attrs, values):
    """How many elements folding the node makes, at most; sizes read from the values themselves."""
    op = node.op_type
    present = [v for v in values if v is not None]
    sizes = [v.size for v in present]

    def product(v):
        return math.prod(int(d) for d in np.asarray(v).reshape(-1))
    if op == "ConstantOfShape":
        return product(values[0]) if present else 1
    if op == "Expand":
        target = [int(d) for d in values[1].reshape(-1)]
        rank = max(values[0].ndim, len(target))
        own = (1,) * (rank - values[0].ndim) + values[0].shape
        target = [1] * (rank - len(target)) + target
        return math.prod(max(a, b) for a, b in zip(own, target))
    if op == "Tile":
        return sizes[0] * product(values[1])
    if op == "Range":
        start, limit, delta = (float(np.asarray(v).reshape(-1)[0]) for v in values[:3])
        return 0 if delta == 0 else max(math.ceil((limit - start) / delta), 0)
    if op in ("Resize", "Upsample"):
        extents = [v for v in values[1:] if v is not None and v.size]
        scales = [float(s) for s in (extents[-1].reshape(-1) if extents else attrs.get("scales", []))]
        if len(extents) and extents[-1].dtype.kind in "iu":
            return product(extents[-1])
        return math.ceil(sizes[0] * math.prod(max(s, 1.0) for s in scales))
    if op == "Pad":
        pads = [int(p) for p in (values[1].reshape(-1) if len(values) > 1 and values[1] is not None
                                 else attrs.get("pads", []))]
        rank = values[0].ndim
        return math.prod(d + sum(pads[i::rank][:2]) for i, d in enumerate(values[0].shape)) if pads else sizes[0]
    if op == "OneHot":
        return sizes[0] * int(np.asarray(values[1]).reshape(-1)[0])
    if op in ("RandomNormal", "RandomUniform"):
        return math.prod(int(d) for d in attrs.get("shape", []))
    if op in ("MatMul", "Gemm") and len(present) >= 2 and min(v.ndim for v in present[:2]) >= 2:
        a, b = present[:2]
        batch = math.prod(np.broadcast_shapes(a.shape[:-2], b.shape[:-2]))
        rows, inner, columns = a.shape[-2], a.shape[-1], b.shape[-1]
        if op == "Gemm":
            rows, inner = (a.shape[1], a.shape[0]) if attrs.get("transA") else a.shape
            columns = b.shape[0] if attrs.get("transB") else b.shape[1]
        if batch * rows * inner * columns > MOST_FOLD_PRODUCTS:
            raise Unsupported("multiplying constant matrices this large at load time would take too long")
        return batch * rows * columns
    if op == "Gather" and len(present) == 2 and present[0].ndim:
        axis = int(attrs.get("axis", 0))
        return sizes[1] * sizes[0] // max(present[0].shape[axis], 1)
    try:
        broadcast = math.prod(np.broadcast_shapes(*(v.shape for v in present))) if present else 0
    except ValueError:
        broadcast = 0
    return max(broadcast, sum(sizes))
