"""Forward passes that record every tensor, for the reverse walk.

In float32 the forward pass runs in onnxruntime (a dependency already, and faster than NumPy on
convolutions): the canonical graph is written out as ONNX with the tensors the walk reads made
graph outputs. Other dtypes, and graphs onnxruntime refuses, run in lrptool's own executor. Tensors
the walk does not read are given as zero-stride placeholders of the right shape, which cost no
memory.
"""

import numpy as np

from ..executor import run_graph


class RecordingForward:
    def __init__(self, graph, dtype, backend="auto", needed=None):
        self.graph = graph
        self.dtype = np.dtype(dtype)
        self.needed = needed
        self.session = None
        self.buffers, self.buffers_batch = {}, None
        # the reverse walk only reads the recorded tensors before the next batch is run
        self.copy_out = False
        if backend in ("auto", "onnxruntime") and self.dtype == np.float32:
            self.session = self.make_session(strict=backend == "onnxruntime")
        self.backend = "onnxruntime" if self.session is not None else "lrptool"

    def make_session(self, strict):
        try:
            import onnxruntime
            from converters.onnx_writer import graph_to_onnx

            self.constants = {n.outputs[0]: n.params["value"].astype(self.dtype) for n in self.graph.nodes
                              if n.op == "Constant"}
            exposed = [t for n in self.graph.nodes for t in n.outputs
                       if t not in self.constants and (self.needed is None or t in self.needed)]
            arrays = {}
            model = graph_to_onnx(self.graph, expose=exposed, external=arrays)
            options = onnxruntime.SessionOptions()
            # the weights reach onnxruntime without being copied into a serialised model first
            options.add_external_initializers(list(arrays), [onnxruntime.OrtValue.ortvalue_from_numpy(a)
                                                             for a in arrays.values()])
            options.log_severity_level = 3
            options.enable_cpu_mem_arena = False  # the arena would keep every internal buffer
            # spinning pool threads would take the cores the NumPy steps between two runs need
            options.add_session_config_entry("session.intra_op.allow_spinning", "0")
            session = onnxruntime.InferenceSession(model.SerializeToString(), options,
                                                   providers=["CPUExecutionProvider"])
            self.names = [o.name for o in session.get_outputs()]
            return session
        except Exception:
            if strict:
                raise
            return None

    def __call__(self, x):
        x = np.ascontiguousarray(x, dtype=self.graph.input_dtype(next(iter(self.graph.inputs)), self.dtype))
        if self.session is None:
            values = run_graph(self.graph, x, dtype=self.dtype, keep_all=self.needed is None,
                               keep=self.needed)
        else:
            values = self.run_bound(x)
        return self.with_placeholders(values, x.shape[0])

    def run_bound(self, x):
        """Run with every output bound to a NumPy buffer of ours: no copies out of onnxruntime, and
        the buffers are reused from batch to batch."""
        batch = x.shape[0]
        if self.buffers_batch != batch:
            self.buffers = {n: np.empty(tuple(batch if d is None else d for d in self.graph.shapes[n]), self.dtype)
                            for n in self.names}
            self.buffers_batch = batch
        binding = self.session.io_binding()
        name = next(iter(self.graph.inputs))
        binding.bind_cpu_input(name, x)
        for output, buffer in self.buffers.items():
            binding.bind_output(output, "cpu", 0, self.dtype, buffer.shape, buffer.ctypes.data)
        self.session.run_with_iobinding(binding)
        values = {n: b.copy() if self.copy_out else b for n, b in self.buffers.items()}
        values[name] = x
        values.update(self.constants)
        return values

    def with_placeholders(self, values, batch):
        zero = np.zeros((), dtype=self.dtype)
        for tensor, shape in self.graph.shapes.items():
            if tensor not in values:
                values[tensor] = np.broadcast_to(zero, tuple(batch if d is None else d for d in shape))
        return values
