"""Small ONNX recurrent models (LSTM, GRU, RNN) with random weights, for the recurrent tests."""

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

GATES = {"LSTM": 4, "GRU": 3, "RNN": 1}


def recurrent_model(op, direction="forward", batch=3, steps=5, features=4, hidden=3, seed=0, bias=True,
                    lengths=None, initial=False, peephole=False, linear_before_reset=0, layout=0, clip=None,
                    activation=None, free_batch=False, scale=0.6):
    """An ONNX model with one recurrent node whose outputs are all graph outputs; every parameter and
    optional input is an initializer. ``lengths``: a list, one per sample."""
    rng = np.random.default_rng(seed)
    d = 2 if direction == "bidirectional" else 1
    g = GATES[op]

    def rand(*shape):
        return (rng.normal(size=shape) * scale).astype(np.float32)

    inits = [numpy_helper.from_array(rand(d, g * hidden, features), "W"),
             numpy_helper.from_array(rand(d, g * hidden, hidden), "R")]
    inputs = ["X", "W", "R", ""]
    if bias:
        inits.append(numpy_helper.from_array(rand(d, 2 * g * hidden), "B"))
        inputs[3] = "B"
    inputs.append("")
    if lengths is not None:
        inits.append(numpy_helper.from_array(np.asarray(lengths, dtype=np.int32), "lengths"))
        inputs[4] = "lengths"
    state_shape = (d, batch, hidden) if layout == 0 else (batch, d, hidden)
    states = ["initial_h", "initial_c"][:2 if op == "LSTM" else 1]
    for name in states:
        if initial:
            inits.append(numpy_helper.from_array(rand(*state_shape), name))
            inputs.append(name)
        else:
            inputs.append("")
    if op == "LSTM" and peephole:
        inits.append(numpy_helper.from_array(rand(d, 3 * hidden), "P"))
        inputs.append("P")
    while inputs[-1] == "":
        inputs.pop()
    attrs = dict(hidden_size=hidden, direction=direction)
    if layout:
        attrs["layout"] = layout
    if op == "GRU":
        attrs["linear_before_reset"] = linear_before_reset
    if clip is not None:
        attrs["clip"] = clip
    if activation is not None:
        attrs["activations"] = [activation] * d
    outputs = ["Y", "Y_h"] + (["Y_c"] if op == "LSTM" else [])
    node = helper.make_node(op, inputs, outputs, **attrs)
    n = "N" if free_batch else batch
    x_shape = [steps, n, features] if layout == 0 else [n, steps, features]
    y_shape = [steps, d, n, hidden] if layout == 0 else [n, steps, d, hidden]
    state = [d, n, hidden] if layout == 0 else [n, d, hidden]
    out_shapes = [y_shape, state, state]
    graph = helper.make_graph([node], "recurrent", [helper.make_tensor_value_info("X", TensorProto.FLOAT, x_shape)],
                              [helper.make_tensor_value_info(o, TensorProto.FLOAT, shape) for o, shape in zip(outputs, out_shapes)], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 14 if layout else 13)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def onnxruntime_outputs(model, x):
    import onnxruntime

    session = onnxruntime.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, {"X": x.astype(np.float32)})


def reference_outputs(model, x):
    from onnx.reference import ReferenceEvaluator

    return ReferenceEvaluator(model).run(None, {"X": x.astype(np.float32)})
