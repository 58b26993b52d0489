"""Forward passes that record every tensor, for the reverse walk.

In float32 the forward pass runs in onnxruntime (a dependency already, and faster than NumPy on
convolutions): the canonical graph is written out as ONNX with every tensor made a graph output.
Other dtypes, and graphs onnxruntime refuses, run in lrptool's own executor.
"""

import numpy as np

from ..executor import run_graph


class RecordingForward:
    def __init__(self, graph, dtype, backend="auto"):
        self.graph = graph
        self.dtype = np.dtype(dtype)
        self.session = None
        if backend in ("auto", "onnxruntime") and self.dtype == np.float32:
            self.session = self.make_session(strict=backend == "onnxruntime")
        self.backend = "onnxruntime" if self.session is not None else "lrptool"

    def make_session(self, strict):
        try:
            import onnxruntime
            from converters.onnx_writer import graph_to_onnx

            self.constants = {n.outputs[0]: n.params["value"].astype(self.dtype) for n in self.graph.nodes
                              if n.op == "Constant"}
            exposed = [t for n in self.graph.nodes for t in n.outputs if t not in self.constants]
            model = graph_to_onnx(self.graph, expose=exposed)
            options = onnxruntime.SessionOptions()
            options.log_severity_level = 3
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
        if self.session is None:
            return run_graph(self.graph, x, dtype=self.dtype, keep_all=True)
        x = np.ascontiguousarray(x, dtype=self.dtype)
        name = next(iter(self.graph.inputs))
        values = dict(zip(self.names, self.session.run(self.names, {name: x})))
        values[name] = x
        values.update(self.constants)
        return values
