"""Signals in: WAV and ``.npy`` files cut into a model's frames, and per-sample relevance out.

A 1-D signal model reads frames of a fixed length. Two layouts:

* ``frames``: the model's first input axis is a batch; every frame is a sample of its own (a frame
  classifier, or a streaming model whose state is bound to a constant).
* ``sequence``: the first axis is the sequence of frames the model runs over (a recurrent model that
  carries its state from frame to frame, such as silero-vad's LSTM form); the whole clip is one
  sequence, and the model is read at each clip's frame count.

The signal is cut into consecutive frames, the last one padded with zeros. The explained score is one
output value per frame (``output`` picks the model output, ``klass`` the value within a frame where
there are several); ``target`` picks the frames whose scores are explained: one frame, the frame with
the highest score (``max``), a range ``A:B`` or ``all`` (their sum). Relevance is per input sample;
what falls on the padding is reported on its own.
"""

import os
import re
from dataclasses import dataclass, field

import numpy as np

from .errors import LrpToolError
from .lrp.canonize import model_outputs

LAYOUTS = ("auto", "sequence", "frames")
#: Names of a model input that carries the sample rate.
RATE_INPUTS = ("sr", "sample_rate", "sampling_rate", "samplerate", "fs")
#: Metadata keys that give the sample rate a model expects.
RATE_KEYS = ("sample_rate", "sampling_rate", "sr")
#: A first input axis with one of these in its name is a sequence of frames.
SEQUENCE_AXIS = re.compile(r"seq|time|step|chunk|frame|len", re.IGNORECASE)
#: Methods the signal walk supports besides the LRP rule maps.
SIGNAL_GRADIENTS = ("gradient", "gradient-x-input")
WAV_FORMATS = {1: "PCM", 3: "float"}


class SignalError(ValueError):
    """A problem with one input file (not a WAV, empty, NaN, a wrong rate): that file is skipped and reported."""


@dataclass
class Signal:
    samples: np.ndarray      # float64, mono
    rate: int = None         # samples per second, None where the file does not say (.npy)
    channels: int = 1        # in the file, before mixing to mono
    kind: str = "wav"        # wav or npy


# -- reading signals -------------------------------------------------------------------------------

def read_signal(path, channel=None):
    """A WAV file or a 1-D ``.npy`` array as a ``Signal``, by its content; ``SignalError`` says why not.
    ``channel``: take that channel of a WAV (counted from 0) instead of the average of all."""
    from .limits import BudgetError, check_bytes

    try:
        # 8-bit samples become 8-byte floats, then frames and relevance: about 32 bytes per byte of the file
        check_bytes(os.path.getsize(path) * 32, "reading the signal")
        with open(path, "rb") as handle:
            data = handle.read()
    except BudgetError as error:
        raise SignalError(str(error)) from None
    except OSError as error:
        raise SignalError(f"cannot read ({error.strerror or error})") from None
    if data[:4] in (b"RIFF", b"RIFX", b"RF64"):
        return read_wav_bytes(data, channel)
    if data[:6] == b"\x93NUMPY":
        return read_npy_bytes(data)
    if not data:
        raise SignalError("the file is empty; give a WAV file or a 1-D .npy array")
    raise SignalError("not a WAV file or a .npy array; give a PCM or float WAV, or a 1-D .npy array")


def read_wav_bytes(data, channel=None):
    """Little-endian RIFF/WAVE: PCM 8 (unsigned), 16, 24 or 32-bit, or 32/64-bit float, in
    ``WAVE_FORMAT_EXTENSIBLE`` too. Integers are scaled to [-1, 1); several channels are averaged."""
    if data[:4] != b"RIFF" or data[8:12] != b"WAVE":
        what = "a big-endian RIFX" if data[:4] == b"RIFX" else ("an RF64" if data[:4] == b"RF64" else "a RIFF")
        raise SignalError(f"{what} file that is not a little-endian RIFF/WAVE file; save it as a standard WAV")
    position, fmt, samples = 12, None, None
    while position + 8 <= len(data):
        chunk, size = data[position:position + 4], int.from_bytes(data[position + 4:position + 8], "little")
        body = data[position + 8:position + 8 + size]
        if chunk == b"fmt ":
            fmt = wav_format(body)
        elif chunk == b"data":
            if fmt is None:
                raise SignalError("the WAV's data comes before its format chunk; save it again as a standard WAV")
            samples = body      # a size beyond the file's end (a stream's placeholder): what is there
            break
        position += 8 + size + (size & 1)
    if fmt is None:
        raise SignalError("a WAV file without a format chunk (truncated?)")
    if samples is None:
        raise SignalError("a WAV file without a data chunk (truncated?)")
    tag, channels, rate, bits = fmt
    width = bits // 8
    count = len(samples) // (width * channels)
    if count == 0:
        raise SignalError("the WAV holds no samples")
    raw = np.frombuffer(samples[:count * width * channels], dtype=np.uint8).reshape(count * channels, width)
    if tag == 3:
        values = raw.copy().view("<f4" if width == 4 else "<f8").reshape(-1).astype(np.float64)
    elif width == 1:
        values = (raw[:, 0].astype(np.float64) - 128.0) / 128.0
    else:
        # sign-extend the little-endian integer of ``width`` bytes into 32 bits
        padded = np.zeros((raw.shape[0], 4), dtype=np.uint8)
        padded[:, 4 - width:] = raw
        values = padded.view("<i4").reshape(-1).astype(np.float64) / 2.0 ** 31
    values = values.reshape(count, channels)
    if not np.all(np.isfinite(values)):
        raise SignalError(f"the WAV holds NaN or Inf at sample {int(np.argmin(np.isfinite(values).all(axis=1)))}")
    if channel is not None:
        if channel >= channels:
            raise SignalError(f"--channel {channel}: the WAV has {channels} channel(s), counted from 0")
        return Signal(values[:, channel], rate, channels, "wav")
    return Signal(values.mean(axis=1) if channels > 1 else values[:, 0], rate, channels, "wav")


def wav_format(body):
    if len(body) < 16:
        raise SignalError("the WAV's format chunk is cut short")
    tag, channels, rate = int.from_bytes(body[0:2], "little"), int.from_bytes(body[2:4], "little"), \
        int.from_bytes(body[4:8], "little")
    bits = int.from_bytes(body[14:16], "little")
    if tag == 0xFFFE and len(body) >= 26:
        tag = int.from_bytes(body[24:26], "little")   # the sub-format GUID's first two bytes
    if tag not in WAV_FORMATS:
        raise SignalError(f"WAV format tag {tag} (compressed audio?) is not read; convert it to PCM or float WAV")
    if (tag == 1 and bits not in (8, 16, 24, 32)) or (tag == 3 and bits not in (32, 64)):
        raise SignalError(f"{bits}-bit {WAV_FORMATS[tag]} samples are not read; convert to 16, 24 or 32-bit "
                          "PCM or 32-bit float")
    if channels < 1 or rate < 1:
        raise SignalError(f"the WAV's format chunk says {channels} channel(s) at {rate} Hz")
    return tag, channels, rate, bits


def read_npy_bytes(data):
    import io

    try:
        array = np.load(io.BytesIO(data), allow_pickle=False)
    except Exception as error:  # noqa: BLE001 - a damaged header raises ValueError, SyntaxError, TokenError, …
        reason = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise SignalError(f"not a readable .npy array ({reason})") from None
    if array.dtype.kind not in "iuf":
        raise SignalError(f"a .npy array of {array.dtype}; give real numbers")
    if array.ndim != 1:
        raise SignalError(f"a .npy array of shape {array.shape}; give a 1-D signal (one value per sample)")
    if array.size == 0:
        raise SignalError("the .npy array is empty")
    values = array.astype(np.float64)
    bad = ~np.isfinite(values)
    if bad.any():
        raise SignalError(f"the array holds NaN or Inf (first at sample {int(np.argmax(bad))})")
    return Signal(values, None, 1, "npy")


SIGNAL_SUFFIXES = (".wav", ".wave", ".npy")


def signal_files(inputs, outdir=None):
    """The files to explain: files as given, folders as their WAV and .npy files (sorted, not recursive;
    not the relevance files of ``outdir`` where a folder is the output folder)."""
    from .files import inside as within
    found = []
    for item in inputs:
        if os.path.isdir(item):
            inside = sorted(os.path.join(item, name) for name in os.listdir(item)
                            if name.lower().endswith(SIGNAL_SUFFIXES) and os.path.isfile(os.path.join(item, name))
                            and not (outdir and name.endswith(".relevance.npy")
                                     and within(outdir, os.path.join(item, name))))
            if not inside:
                raise LrpToolError(f"{item}: no .wav or .npy file in this folder")
            found += inside
        else:
            found.append(item)
    return found


# -- targets ---------------------------------------------------------------------------------------

def parse_frames(text):
    """``max``, ``all``, ``N`` or ``A:B`` (frames A to B−1; either end may be left out)."""
    text = str(text).strip()
    if text in ("max", "all"):
        return text
    if text.isdigit():
        return int(text)
    match = re.fullmatch(r"(\d*):(\d*)", text)
    if match and (match.group(1) or match.group(2)):
        start = int(match.group(1)) if match.group(1) else 0
        stop = int(match.group(2)) if match.group(2) else None
        if stop is not None and stop <= start:
            raise LrpToolError(f"--target {text!r}: the range is empty")
        return (start, stop)
    raise LrpToolError(f"--target {text!r}: give max, all, a frame index N or a range A:B")


def parse_class(text):
    text = str(text).strip()
    if text == "pred":
        return None
    if text.isdigit():
        return int(text)
    raise LrpToolError(f"--class {text!r}: give pred or an index of the output's values")


def selected_frames(target, scores):
    """The frame indices ``target`` picks out of ``scores`` (one per frame)."""
    count = len(scores)
    if target == "max":
        return [int(np.argmax(scores))]
    if target == "all":
        return list(range(count))
    if isinstance(target, tuple):
        start, stop = target
        stop = count if stop is None else stop
        if start >= count or stop > count:
            raise SignalError(f"frames {start}:{stop} reach beyond the signal's {count} frame(s)")
        return list(range(start, stop))
    if target >= count:
        raise SignalError(f"frame {target} is beyond the signal's {count} frame(s) (counted from 0)")
    return [int(target)]


# -- the model -------------------------------------------------------------------------------------

@dataclass
class ModelInput:
    name: str
    dims: list          # ints, None where free
    names: list         # the dimension names (dim_param) or None
    dtype: np.dtype

    def describe(self):
        return "×".join("?" if d is None else str(d) for d in self.dims) or "a scalar"


def onnx_inputs(proto):
    from onnx import helper

    initializers = {init.name for init in proto.graph.initializer}
    inputs = []
    for value_info in proto.graph.input:
        if value_info.name in initializers:
            continue
        tensor = value_info.type.tensor_type
        dims = [d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else None for d in tensor.shape.dim]
        names = [d.dim_param or None for d in tensor.shape.dim]
        try:
            dtype = np.dtype(helper.tensor_dtype_to_np_dtype(tensor.elem_type))
        except (KeyError, TypeError, ValueError):
            dtype = np.dtype(np.float32)
        inputs.append(ModelInput(value_info.name, dims, names, dtype))
    return inputs


def parse_binds(items):
    """{name: text} from ``NAME=VALUE`` items."""
    binds = {}
    for item in items or ():
        name, sign, value = item.partition("=")
        if not sign or not name.strip() or not value.strip():
            raise LrpToolError(f"--bind {item!r}: give NAME=VALUE (a number, broadcast to the input's shape, or a "
                               ".npy file)")
        if name.strip() in binds:
            raise LrpToolError(f"--bind {name.strip()!r} is given twice")
        binds[name.strip()] = value.strip()
    return binds


def bound_value(spec, model_input):
    """The array ``--bind NAME=VALUE`` gives: a number broadcast to the input's declared shape (free sizes
    taken as 1), or a .npy file of a shape that broadcasts to it."""
    shape = tuple(1 if d is None else d for d in model_input.dims)
    where = f"--bind {model_input.name}={spec}"
    if spec.lower().endswith(".npy"):
        problem = read_npy_file(spec)
        try:
            value = np.broadcast_to(problem, shape) if problem.shape != shape else problem
        except ValueError:
            raise LrpToolError(f"{where}: an array of shape {problem.shape}; the input takes "
                               f"{model_input.describe()}") from None
    else:
        try:
            number = float(spec)
        except ValueError:
            raise LrpToolError(f"{where}: not a number or a .npy file") from None
        if not np.isfinite(number):
            raise LrpToolError(f"{where}: give a finite number")
        if model_input.dtype.kind in "iu" and number != int(number):
            raise LrpToolError(f"{where}: the input takes integers ({model_input.dtype})")
        value = np.full(shape, number)
    return np.ascontiguousarray(value, dtype=model_input.dtype)


def read_npy_file(path):
    from .files import regular_file_problem

    problem = regular_file_problem(path)
    if problem:
        raise LrpToolError(f"{path}: {problem}")
    try:
        array = np.load(path, allow_pickle=False)
    except Exception as error:  # noqa: BLE001 - a damaged header raises ValueError, SyntaxError, TokenError, …
        raise LrpToolError(f"{path}: not a readable .npy array ({str(error).splitlines()[0] if str(error) else ''})")\
            from None
    if array.dtype.kind not in "iuf" or not np.all(np.isfinite(array)):
        raise LrpToolError(f"{path}: give finite real numbers")
    return array


def frame_length_of(dims, source, name, frame):
    """The frame length in a signal input's sizes after the first axis: the one size that is not 1
    (``frame`` where it is free)."""
    rest = dims[1:]
    long = [i for i, d in enumerate(rest) if d != 1]
    if len(long) != 1:
        raise LrpToolError(f"{source}: the input {name!r} has shape {format_dims(dims)}; a 1-D signal model takes "
                           "(frames, length), (frames, 1, length) or (frames, length, 1)")
    size = rest[long[0]]
    if size is None:
        if not frame:
            raise LrpToolError(f"{source}: the model leaves the frame length of its input {name!r} free "
                               f"({format_dims(dims)}); give --frame N")
        return frame, True
    if frame and frame != size:
        raise LrpToolError(f"--frame {frame}: the model's input {name!r} takes frames of {size} samples")
    return size, False


def format_dims(dims):
    return "×".join("?" if d is None else str(d) for d in dims)


class SignalModel:
    """A model prepared to explain 1-D signals: see the module's documentation.

    ``model``: an ONNX, Keras or Caffe file (``bind`` and the ``sequence`` layout: ONNX only);
    ``bind``: {input name: number, array or ``.npy`` path}; ``output``: the explained output's name
    (needed where the model has several); ``frame``: the frame length where the model leaves it free;
    ``hop``: samples between the starts of consecutive frames (default: the frame length; less makes
    frames overlap, and a sample's relevance is the sum over the frames holding it);
    ``sample_rate``: the rate the model expects (default: a bound ``sr``-like input, or the model's
    metadata); further options go to ``lrptool.lrp.Explainer`` (``recurrent_bias="spread"`` conserves
    relevance exactly through recurrent layers)."""

    KEPT = 4

    def __init__(self, model, bind=None, output=None, frame=None, layout="auto", method="epsilon",
                 sample_rate=None, model_options=None, hop=None, **options):
        from .lrp import GRADIENT_METHODS

        if layout not in LAYOUTS:
            raise LrpToolError(f"layout {layout!r}: choose {', '.join(LAYOUTS)}")
        if method in GRADIENT_METHODS and method not in SIGNAL_GRADIENTS:
            raise LrpToolError(f"{method}: signals are explained with an LRP preset or rule map, gradient or "
                               "gradient-x-input")
        if method not in SIGNAL_GRADIENTS:
            from .lrp.presets import rule_map_from_spec

            rule_map_from_spec(method)      # an unknown preset or rule is refused before any file is read
        self.path = str(model)
        self.method = method
        self.options = dict(options)
        self.options.setdefault("dtype", np.float64)
        self.explainers = {}
        self.proto = None
        bind = dict(bind or {})
        if self.is_onnx():
            self.open_onnx(bind, output, frame, layout)
        else:
            if bind:
                raise LrpToolError(f"--bind: {self.path} is not an ONNX model; only ONNX inputs can be bound")
            if layout == "sequence":
                raise LrpToolError("--layout sequence needs an ONNX model (read at each clip's frame count)")
            self.open_other(output, frame, model_options or {})
        self.sample_rate = sample_rate if sample_rate is not None else self.model_rate()
        if hop is not None and not 1 <= hop <= self.frame:
            raise LrpToolError(f"--hop {hop}: give 1 to the frame length ({self.frame}); frames farther apart "
                               "would leave samples out")
        self.hop = hop or self.frame
        if self.layout == "frames":
            self.explainer(None)            # the rules are assigned (and refused) before any file is read

    # reading

    def is_onnx(self):
        if self.path.lower().endswith(".onnx"):
            return True
        return os.path.splitext(self.path)[1].lower() not in (".h5", ".hdf5", ".keras", ".prototxt", ".pbtxt",
                                                              ".caffemodel")

    def open_onnx(self, bind, output, frame, layout):
        from converters.onnx_checks import load_onnx_proto

        from converters import stand_in_problem
        from .files import regular_file_problem

        problem = regular_file_problem(self.path) or stand_in_problem(self.path)
        if problem:
            raise LrpToolError(f"{self.path}: {problem}; give the model file")
        proto = load_onnx_proto(self.path)
        inputs = onnx_inputs(proto)
        by_name = {i.name: i for i in inputs}
        unknown = [name for name in bind if name not in by_name]
        if unknown:
            listing = ", ".join(f"{i.name} ({i.describe()})" for i in inputs)
            raise LrpToolError(f"--bind {unknown[0]}: the model has no input of that name; its inputs: {listing}")
        self.bound = {name: np.ascontiguousarray(value, dtype=by_name[name].dtype) if isinstance(value, np.ndarray)
                      else bound_value(str(value), by_name[name]) for name, value in bind.items()}
        free = [i for i in inputs if i.name not in self.bound]
        if not free:
            raise LrpToolError("every input of the model is bound; leave the signal's input unbound")
        if len(free) > 1:
            extra = free[1]
            raise LrpToolError(f"{self.path}: the input {extra.name!r} ({extra.describe()}) is not bound; give "
                               f"--bind {extra.name}=VALUE (a number broadcast to its shape, or a .npy file)")
        signal = free[0]
        if signal.dtype.kind != "f":
            raise LrpToolError(f"{self.path}: the input {signal.name!r} takes {signal.dtype}, not a float signal; "
                               "bind it, or give the model whose input is the signal")
        if len(signal.dims) not in (2, 3):
            raise LrpToolError(f"{self.path}: the input {signal.name!r} has shape {signal.describe()}; a 1-D signal "
                               "model takes (frames, length), (frames, 1, length) or (frames, length, 1)")
        outputs = [o.name for o in proto.graph.output]
        self.output = chosen_output(outputs, output)
        keep = [o for o in proto.graph.output if o.name == self.output]
        del proto.graph.output[:]
        proto.graph.output.extend(keep)
        guessed = layout == "auto"
        if guessed:
            axis = signal.names[0] or ""
            layout = "sequence" if SEQUENCE_AXIS.search(axis) else "frames"
        self.layout = layout
        self.input = signal.name
        self.input_dims = signal.dims
        self.frame, self.free_frame = frame_length_of(signal.dims, self.path, signal.name, frame)
        self.proto = proto
        self.metadata = {p.key: p.value for p in proto.metadata_props}
        if layout == "frames":
            try:
                self.graph = self.read(None)
            except LrpToolError as error:
                # a model that moves its first axis elsewhere (an LSTM's time axis) reads it as a sequence
                if not (guessed and "moves the batch axis" in str(error)):
                    raise
                self.layout = "sequence"

    def read(self, frames):
        """The graph, its first axis fixed to ``frames`` (the sequence layout) or left as read."""
        from converters.onnx_reader import read_onnx

        if frames is not None:
            dim = self.proto.graph.input[[i.name for i in self.proto.graph.input].index(self.input)] \
                .type.tensor_type.shape.dim[0]
            dim.dim_value = frames
        try:
            return read_onnx(self.proto, bind=self.bound, input_size=(self.frame,) if self.free_frame else None)
        except LrpToolError as error:
            message = str(error).replace("<model>", self.path)
            if frames is None and "moves the batch axis" in message:
                message += "; if the first axis is a sequence of frames, give --layout sequence"
            raise type(error)(message) from None

    def open_other(self, output, frame, model_options):
        from .cli_options import open_model
        from .graph import Graph

        settings = dict(model_options)
        graph = open_model(self.path, **settings)
        if len(graph.inputs) != 1:
            raise LrpToolError(f"{self.path}: the model has {len(graph.inputs)} inputs; a signal model has one")
        (name, shape), = graph.inputs.items()
        self.output = chosen_output(graph.outputs, output)
        if len(graph.outputs) > 1:
            graph = Graph(graph.inputs, graph.nodes, [self.output], graph.name)
        self.layout, self.input, self.input_dims, self.bound, self.metadata = "frames", name, list(shape), {}, {}
        self.frame, self.free_frame = frame_length_of(list(shape), self.path, name, frame)
        if len(shape) not in (2, 3):
            raise LrpToolError(f"{self.path}: the input {name!r} has shape {format_dims(shape)}; a 1-D signal "
                               "model takes (frames, length), (frames, 1, length) or (frames, length, 1)")
        self.graph = graph.at_sizes(tuple(self.frame if d is None else d for d in shape[1:])) if self.free_frame \
            else graph

    def model_rate(self):
        for name, value in self.bound.items():
            if name.lower() in RATE_INPUTS and value.size == 1 and value.dtype.kind in "iuf" and value.item() > 0:
                return int(value.item())
        for key in RATE_KEYS:
            text = self.metadata.get(key, "")
            if text.strip().isdigit():
                return int(text)
        return None

    def describe(self):
        bound = ", ".join(f"{k}={format_value(v)}" for k, v in self.bound.items())
        rate = f"{self.sample_rate} Hz" if self.sample_rate else "any sample rate"
        hop = f" every {self.hop}" if self.hop != self.frame else ""
        return (f"input {self.input!r}, frames of {self.frame} samples{hop} ({self.layout} layout), output "
                f"{self.output!r}, {rate}" + (f"; bound: {bound}" if bound else ""))

    # explaining

    def explainer(self, frames):
        from .lrp import Explainer

        key = frames if self.layout == "sequence" else None
        found = self.explainers.pop(key, None)
        if found is None:
            graph = self.read(frames) if self.layout == "sequence" else self.graph
            found = Explainer(graph, "gradient" if self.method in SIGNAL_GRADIENTS else self.method,
                              compiled=False, quiet=bool(self.explainers), **self.options)
            while len(self.explainers) >= self.KEPT:
                self.explainers.pop(next(iter(self.explainers)))
        self.explainers[key] = found
        return found

    def framed(self, samples):
        """(frames × input shape, padding count): ``samples`` cut into frames ``hop`` samples apart, the
        last padded with zeros."""
        count = 1 if len(samples) <= self.frame else 1 + -(-(len(samples) - self.frame) // self.hop)
        padded = np.zeros((count - 1) * self.hop + self.frame, dtype=np.float64)
        padded[:len(samples)] = samples
        frames = np.lib.stride_tricks.sliding_window_view(padded, self.frame)[::self.hop][:count]
        shape = [count] + [self.frame if d in (None, self.frame) and i == self.long_axis() else 1
                           for i, d in enumerate(self.input_dims[1:])]
        return np.ascontiguousarray(frames).reshape(shape), len(padded) - len(samples)

    def overlap_add(self, relevance):
        """Per-sample relevance of the padded signal from per-frame relevance (frames × frame length)."""
        count = relevance.shape[0]
        positions = (np.arange(count)[:, None] * self.hop + np.arange(self.frame)[None, :]).reshape(-1)
        out = np.zeros((count - 1) * self.hop + self.frame, dtype=np.float64)
        np.add.at(out, positions, relevance.reshape(-1))
        return out

    def long_axis(self):
        return next(i for i, d in enumerate(self.input_dims[1:]) if d != 1)

    def forward(self, explainer, x):
        walk_owner = explainer.at_size(x) if explainer.by_size is not None else explainer
        x = walk_owner.input_array(x)
        values = walk_owner.walk.forward(x)
        return walk_owner, x, values

    def per_frame(self, output, frames):
        flat = np.array(output, dtype=np.float64)
        if flat.ndim == 0 or flat.shape[0] != frames:
            raise LrpToolError(f"the output {self.output!r} has shape {flat.shape}, not one value (or row) per frame; "
                               "choose another with --model-output")
        return flat.reshape(frames, -1)

    def explain(self, signal, target="max", klass=None, batch_size=256):
        """A ``SignalExplanation`` of one ``Signal`` (or a 1-D array)."""
        if not isinstance(signal, Signal):
            signal = Signal(np.asarray(signal, dtype=np.float64).reshape(-1), None, 1, "npy")
        x, padding = self.framed(signal.samples)
        frames = x.shape[0]
        if self.layout == "sequence":
            owner, xs, values = self.forward(self.explainer(frames), x)
            outputs = self.per_frame(values[owner.output], frames)
            shown = model_outputs(owner.canonization, outputs)
            klass = self.check_class(klass, shown)
            scores = shown[:, klass]
            chosen = selected_frames(target, scores)
            relevance, report = self.backward(owner, xs, values, outputs, chosen, klass)
            reports = [report]
        else:
            explainer = self.explainer(None)
            fixed = self.graph.inputs[self.input][0]
            size = fixed or batch_size      # a model with a fixed batch takes that many frames at a time

            def batch(start):
                """Frames start… of one batch, filled up with zero frames to a fixed batch size."""
                part = x[start:start + size]
                if fixed and len(part) < fixed:
                    part = np.concatenate([part, np.zeros((fixed - len(part),) + part.shape[1:])])
                return part
            rows = []
            for start in range(0, frames, size):
                owner, _, values = self.forward(explainer, batch(start))
                rows.append(self.per_frame(values[owner.output], len(batch(start))))
            outputs = np.concatenate(rows)[:frames]
            shown = model_outputs(owner.canonization, outputs)
            klass = self.check_class(klass, shown)
            scores = shown[:, klass]
            chosen = selected_frames(target, scores)
            relevance = np.zeros((frames, self.frame), dtype=np.float64)
            wanted = np.zeros(frames, dtype=bool)
            wanted[chosen] = True
            reports = []
            for start in range(0, frames, size):
                if not wanted[start:start + size].any():
                    continue
                owner, xs, values = self.forward(explainer, batch(start))
                here = [f - start for f in chosen if start <= f < start + size]
                batch_outputs = self.per_frame(values[owner.output], len(xs))
                part, report = self.backward(owner, xs, values, batch_outputs, here, klass)
                relevance[start:start + size] = part[:min(size, frames - start)]
                reports.append(report)
        flat = self.overlap_add(relevance) if self.hop != self.frame else relevance.reshape(-1)
        length = len(signal.samples)
        explained = float(np.sum(outputs[chosen, klass]))   # before an output sigmoid or softmax
        return SignalExplanation(flat[:length].copy(), float(np.sum(flat[length:])), scores, chosen, klass,
                                 explained, self.frame, padding, signal.rate, outputs.shape[1], reports, self.hop)

    def check_class(self, klass, outputs):
        values = outputs.shape[1]
        if klass is None:
            return int(np.unravel_index(np.argmax(outputs), outputs.shape)[1]) if values > 1 else 0
        if klass >= values:
            raise LrpToolError(f"--class {klass}: the output {self.output!r} has {values} value(s) per frame")
        return klass

    def backward(self, owner, x, values, outputs, chosen, klass):
        """The relevance of the chosen frames' scores (their sum) for input ``x``."""
        from .lrp.presets import default_start

        raw = np.array(values[owner.output])
        seed = np.zeros(outputs.shape, dtype=owner.dtype)
        start = default_start(self.method, self.method in SIGNAL_GRADIENTS)
        chosen = np.asarray(chosen, dtype=np.int64)
        seed[chosen, klass] = {"value": outputs[chosen, klass],
                               "positive": np.maximum(outputs[chosen, klass], 0)}.get(start, 1.0)
        result, report = owner.walk.run(values, {owner.output: seed.reshape(raw.shape)})
        relevance = np.asarray(result[next(iter(owner.graph.inputs))], dtype=np.float64)
        if self.method == "gradient-x-input":
            relevance = relevance * x
        return relevance.reshape(x.shape[0], -1), report


def chosen_output(outputs, output):
    if output is not None:
        if output not in outputs:
            raise LrpToolError(f"--model-output {output!r}: the model's outputs are {', '.join(outputs)}")
        return output
    if len(outputs) > 1:
        raise LrpToolError(f"the model has {len(outputs)} outputs ({', '.join(outputs)}); choose the explained one "
                           "with --model-output NAME")
    return outputs[0]


def format_value(value):
    flat = np.asarray(value).reshape(-1)
    if flat.size and np.all(flat == flat[0]):
        text = f"{flat[0]:g}"
        return text if flat.size == 1 else f"{text} ({format_dims(list(np.shape(value)))})"
    return f"an array {format_dims(list(np.shape(value)))}"


@dataclass
class SignalExplanation:
    relevance: np.ndarray     # one value per input sample
    padding: float            # Σ R on the zeros that fill the last frame
    scores: np.ndarray        # the model's output per frame (after its output sigmoid or softmax)
    frames: list              # the explained frames
    klass: int                # the value within a frame's output
    score: float              # Σ of the explained values of those frames (the logits: before such a sigmoid)
    frame_length: int
    padded: int               # zeros added to fill the last frame
    rate: int = None
    values: int = 1           # output values per frame
    reports: list = field(default_factory=list)   # the walk's conservation reports (one per batch of frames)
    hop: int = None           # samples from one frame's start to the next (the frame length: no overlap)

    @property
    def total(self):
        return float(np.sum(self.relevance) + self.padding)

    def frames_text(self):
        if len(self.frames) == 1:
            return f"frame {self.frames[0]}"
        if list(self.frames) == list(range(self.frames[0], self.frames[-1] + 1)):
            return f"frames {self.frames[0]}-{self.frames[-1]}"
        return f"{len(self.frames)} frames"


def explain_signal(model, signals, target="max", klass=None, method="epsilon", **options):
    """Explain a 1-D signal model for each of ``signals`` (arrays, ``Signal``s or file paths): one
    ``SignalExplanation`` each. ``model``: a path or a prepared ``SignalModel``; see ``SignalModel`` for
    ``bind``, ``output``, ``frame``, ``layout`` and the explainer's options. ``target``: ``max``,
    ``all``, a frame index or a ``(start, stop)`` range."""
    if not isinstance(model, SignalModel):
        model = SignalModel(model, method=method, **options)
    target = parse_frames(target) if isinstance(target, str) else target
    results = []
    for item in signals:
        if isinstance(item, (str, os.PathLike)):
            item = read_signal(str(item))
        results.append(model.explain(item, target, klass))
    return results
