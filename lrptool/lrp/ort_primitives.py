"""Convolution primitives of the LRP rules run in onnxruntime: its convolution kernels are faster
than an im2col + BLAS product in NumPy. Each (node, weight mode, bias mode, direction) becomes a
one-node ONNX model — Conv for the forward pass, ConvTranspose with the same kernel for its
transpose — whose session is built once and reused for every batch."""

import numpy as np

try:
    import onnxruntime
    from onnx import TensorProto, helper, numpy_helper
except ImportError:  # pragma: no cover - both are dependencies; this keeps the NumPy path usable alone
    onnxruntime = None


def available():
    return onnxruntime is not None


class ConvSessions:
    def __init__(self):
        self.sessions = {}

    def get(self, key, build):
        session = self.sessions.get(key)
        if session is None:
            model = build()
            options = onnxruntime.SessionOptions()
            options.log_severity_level = 3
            options.enable_cpu_mem_arena = False  # one arena per session would keep each one's peak
            # spinning pool threads would take the cores the NumPy steps between two runs need
            options.add_session_config_entry("session.intra_op.allow_spinning", "0")
            session = onnxruntime.InferenceSession(model.SerializeToString(), options,
                                                   providers=["CPUExecutionProvider"])
            self.sessions[key] = session
        return session


def one_node_model(op_type, x_shape, weight, bias, attrs):
    rank = weight.ndim - 2
    initializers = [numpy_helper.from_array(np.ascontiguousarray(weight, dtype=np.float32), "w")]
    inputs = ["x", "w"]
    if bias is not None:
        initializers.append(numpy_helper.from_array(np.ascontiguousarray(bias, dtype=np.float32), "b"))
        inputs.append("b")
    node = helper.make_node(op_type, inputs, ["y"], kernel_shape=list(weight.shape[2:]), **attrs)
    graph = helper.make_graph(
        [node], "primitive", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N"] + list(x_shape[1:]))],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], initializer=initializers)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    del rank
    return model


def conv_forward(sessions, node, x, weight, bias, key):
    a = node.attrs

    def build():
        return one_node_model("Conv", x.shape, weight, bias, dict(strides=list(a["strides"]),
                              dilations=list(a["dilations"]), pads=list(a["pads"]), group=a["group"]))
    session = sessions.get(("forward",) + key, build)
    return session.run(None, {"x": np.ascontiguousarray(x, dtype=np.float32)})[0]


def conv_transpose(sessions, node, s, weight, input_shape, key):
    """The adjoint of the convolution: ConvTranspose with the same kernel, sized back to the input."""
    a = node.attrs
    rank = weight.ndim - 2
    output_padding = []
    for i in range(rank):
        produced = (a["strides"][i] * (s.shape[2 + i] - 1) + (weight.shape[2 + i] - 1) * a["dilations"][i] + 1
                    - a["pads"][i] - a["pads"][rank + i])
        output_padding.append(input_shape[2 + i] - produced)

    def build():
        return one_node_model("ConvTranspose", s.shape, weight, None, dict(
            strides=list(a["strides"]), dilations=list(a["dilations"]), pads=list(a["pads"]), group=a["group"],
            output_padding=output_padding))
    session = sessions.get(("transpose",) + key + (tuple(output_padding),), build)
    return session.run(None, {"x": np.ascontiguousarray(s, dtype=np.float32)})[0]
