"""1-D signals: WAV and .npy reading, framing, `lrptool explain-signal` on a synthetic Conv1D model (relevance
derived by hand), a tiny LSTM read as a sequence of frames, bad inputs, and the real silero-vad detector."""

import json
import struct
import subprocess
import sys
import wave

import numpy as np
import onnx
import onnxruntime
import pytest
from onnx import TensorProto, helper, numpy_helper

from conftest import shared_models
from lrptool.signal import SignalError, SignalModel, read_signal
from test_recurrent_models import speech_like

COMMAND = [sys.executable, "-m", "lrptool.cli"]
FRAME = 64


def run(*args):
    return subprocess.run(COMMAND + [str(a) for a in args], capture_output=True)


def write_pcm(path, ints, rate, width, channels=1):
    """A PCM WAV through the standard library's writer; ``ints`` (samples, channels) of the stored integers."""
    ints = np.asarray(ints).reshape(-1, channels)
    if width == 1:
        raw = ints.astype(np.uint8).tobytes()
    elif width == 3:
        raw = b"".join(int(v).to_bytes(3, "little", signed=True) for v in ints.reshape(-1))
    else:
        raw = ints.astype(f"<i{width}").tobytes()
    with wave.open(str(path), "wb") as handle:
        handle.setnchannels(channels)
        handle.setsampwidth(width)
        handle.setframerate(rate)
        handle.writeframes(raw)


def write_float_wav(path, values, rate, extensible=False):
    """A 32-bit float WAV written byte by byte (format 3, or WAVE_FORMAT_EXTENSIBLE with the float GUID)."""
    data = np.asarray(values, dtype="<f4").tobytes()
    if extensible:
        guid = struct.pack("<H", 3) + bytes.fromhex("000000001000800000aa00389b71")
        fmt = struct.pack("<HHIIHHHHI", 0xFFFE, 1, rate, rate * 4, 4, 32, 22, 32, 4) + guid
    else:
        fmt = struct.pack("<HHIIHH", 3, 1, rate, rate * 4, 4, 32)
    body = b"WAVE" + b"fmt " + struct.pack("<I", len(fmt)) + fmt + b"data" + struct.pack("<I", len(data)) + data
    path.write_bytes(b"RIFF" + struct.pack("<I", len(body)) + body)


# -- reading ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("width", [1, 2, 3, 4])
def test_pcm_wavs_of_every_width_read_as_floats_in_minus_one_to_one(tmp_path, width):
    rng = np.random.default_rng(width)
    bits = 8 * width
    if width == 1:
        stored = rng.integers(0, 256, size=50)
        expected = (stored - 128) / 128
    else:
        stored = rng.integers(-2 ** (bits - 1), 2 ** (bits - 1), size=50)
        stored[:2] = [-2 ** (bits - 1), 2 ** (bits - 1) - 1]
        expected = stored / 2 ** (bits - 1)
    write_pcm(tmp_path / "a.wav", stored, 8000, width)
    signal = read_signal(str(tmp_path / "a.wav"))
    assert signal.rate == 8000 and signal.channels == 1
    np.testing.assert_array_equal(signal.samples, expected)


def test_stereo_is_averaged_and_float_wavs_are_read(tmp_path):
    stereo = np.array([[1000, -3000], [20000, 0], [-32768, 32767]])
    write_pcm(tmp_path / "s.wav", stereo, 16000, 2, channels=2)
    signal = read_signal(str(tmp_path / "s.wav"))
    assert signal.channels == 2
    np.testing.assert_array_equal(signal.samples, stereo.mean(axis=1) / 32768)
    np.testing.assert_array_equal(read_signal(str(tmp_path / "s.wav"), channel=1).samples, stereo[:, 1] / 32768)
    with pytest.raises(SignalError, match="--channel 2: the WAV has 2 channel"):
        read_signal(str(tmp_path / "s.wav"), channel=2)
    values = np.array([0.5, -0.25, 1.0, 0.0], dtype=np.float32)
    for extensible in (False, True):
        write_float_wav(tmp_path / "f.wav", values, 22050, extensible)
        signal = read_signal(str(tmp_path / "f.wav"))
        assert signal.rate == 22050
        np.testing.assert_array_equal(signal.samples, values)


@pytest.mark.parametrize("content, message", [
    (b"hello, not audio", "not a WAV file or a .npy array"),
    (b"", "the file is empty"),
    (b"RIFF\x04\x00\x00\x00WAVE", "without a format chunk"),
])
def test_unreadable_signals_say_why(tmp_path, content, message):
    (tmp_path / "x.wav").write_bytes(content)
    with pytest.raises(SignalError, match=message):
        read_signal(str(tmp_path / "x.wav"))


def test_a_signal_beyond_the_memory_budget_is_refused_before_it_is_read(tmp_path, monkeypatch):
    write_pcm(tmp_path / "a.wav", np.zeros(4000, dtype=np.int16), 8000, 2)
    monkeypatch.setenv("LRPTOOL_MEMORY_BUDGET", "100K")
    with pytest.raises(SignalError, match="reading the signal needs .* more than the memory budget"):
        read_signal(str(tmp_path / "a.wav"))


def test_chunks_before_the_data_and_odd_sizes_are_skipped(tmp_path):
    values = np.array([100, -200, 300], dtype="<i2")
    fmt = struct.pack("<HHIIHH", 1, 1, 8000, 16000, 2, 16)
    data = values.tobytes()
    body = (b"WAVE" + b"fmt " + struct.pack("<I", len(fmt)) + fmt + b"LIST" + struct.pack("<I", 3) + b"abc\x00"
            + b"data" + struct.pack("<I", len(data)) + data)
    (tmp_path / "a.wav").write_bytes(b"RIFF" + struct.pack("<I", len(body)) + body)
    np.testing.assert_array_equal(read_signal(str(tmp_path / "a.wav")).samples, values / 32768)


def test_damaged_wav_and_npy_files_are_refused_with_a_reason_never_a_crash(tmp_path):
    import io

    write_pcm(tmp_path / "a.wav", np.arange(-300, 300) * 50, 8000, 3, channels=2)
    buffer = io.BytesIO()
    np.save(buffer, np.linspace(-1, 1, 50))
    seeds = [(tmp_path / "a.wav").read_bytes(), buffer.getvalue()]
    rng = np.random.default_rng(7)
    for index in range(400):
        data = bytearray(seeds[index % 2])
        for _ in range(int(rng.integers(1, 5))):
            position = int(rng.integers(len(data)))
            if rng.random() < 0.5:
                data[position] = int(rng.integers(256))
            else:
                del data[position:position + int(rng.integers(1, 30))]
        (tmp_path / "m").write_bytes(bytes(data))
        try:
            signal = read_signal(str(tmp_path / "m"))
        except SignalError as error:
            assert str(error) and "\n" not in str(error)
            continue
        assert signal.samples.ndim == 1 and signal.samples.size and np.all(np.isfinite(signal.samples))


# -- a synthetic Conv1D model, relevance derived by hand ----------------------------------------------

def conv_model(seed=0):
    """(N, 1, 64) → Conv1D (4 filters of 5, padding 2) → ReLU → GlobalMaxPool → Flatten → Gemm → 3 scores."""
    rng = np.random.default_rng(seed)
    weights = {"W": rng.normal(size=(4, 1, 5)), "B": rng.normal(size=4) * 0.1,
               "V": rng.normal(size=(3, 4)), "c": rng.normal(size=3) * 0.1}
    nodes = [helper.make_node("Conv", ["x", "W", "B"], ["conv"], pads=[2, 2]),
             helper.make_node("Relu", ["conv"], ["relu"]),
             helper.make_node("GlobalMaxPool", ["relu"], ["pool"]),
             helper.make_node("Flatten", ["pool"], ["flat"]),
             helper.make_node("Gemm", ["flat", "V", "c"], ["scores"], transB=1)]
    graph = helper.make_graph(nodes, "conv1d", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 1, FRAME])],
                              [helper.make_tensor_value_info("scores", TensorProto.FLOAT, ["N", 3])],
                              [numpy_helper.from_array(v.astype(np.float32), k) for k, v in weights.items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    return model, {k: v.astype(np.float32).astype(np.float64) for k, v in weights.items()}


def stabilised(z, epsilon=1e-6):
    return z + epsilon * np.where(z >= 0, 1.0, -1.0)


def conv_relevance_by_hand(weights, frame, klass):
    """The ε rule (ε = 1e-6, the bias in the denominator) on Gemm and Conv, the max pool's winner taking
    all, ReLU passing relevance: R of every sample of one frame for output ``klass``."""
    W, B, V, c = weights["W"], weights["B"], weights["V"], weights["c"]
    padded = np.pad(frame, 2)
    windows = np.stack([padded[t:t + 5] for t in range(FRAME)])          # (T, 5)
    conv = windows @ W[:, 0, :].T + B                                     # (T, 4)
    relu = np.maximum(conv, 0)
    winners = relu.argmax(axis=0)
    pooled = relu[winners, np.arange(4)]
    score = pooled @ V[klass] + c[klass]
    r_pool = pooled * V[klass] / stabilised(score) * score
    relevance = np.zeros(FRAME + 4)
    for channel in range(4):
        t = winners[channel]
        z = W[channel, 0] * windows[t]
        relevance[t:t + 5] += z / stabilised(conv[t, channel]) * r_pool[channel]
    return relevance[2:-2], score


def test_conv1d_frames_are_explained_as_derived_by_hand(tmp_path):
    model, weights = conv_model()
    path = tmp_path / "conv.onnx"
    onnx.save(model, str(path))
    rng = np.random.default_rng(1)
    signal = rng.normal(size=5 * FRAME - 20)           # five frames, the last padded with 20 zeros
    np.save(tmp_path / "signal.npy", signal)
    out = tmp_path / "out"
    result = run("explain-signal", path, tmp_path / "signal.npy", "-o", out, "--class", "1")
    assert result.returncode == 0, result.stderr
    assert b"20 zeros at the end" in result.stderr
    record = json.loads((out / "explanations.jsonl").read_text())
    frames = np.zeros(5 * FRAME)
    frames[:signal.size] = signal
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    expected = session.run(None, {"x": frames.reshape(5, 1, FRAME).astype(np.float32)})[0][:, 1]
    np.testing.assert_allclose(record["scores"], expected, rtol=1e-5, atol=1e-6)
    best = int(np.argmax(expected))
    assert record["explained_frames"] == [best] and record["class"] == 1 and record["frames"] == 5
    relevance = np.load(out / "signal.relevance.npy")
    assert relevance.shape == signal.shape
    by_hand, score = conv_relevance_by_hand(weights, frames[best * FRAME:(best + 1) * FRAME], 1)
    reference = np.zeros(5 * FRAME)
    reference[best * FRAME:(best + 1) * FRAME] = by_hand
    np.testing.assert_allclose(relevance, reference[:signal.size], rtol=1e-7, atol=1e-10)
    assert record["padding_relevance"] == pytest.approx(reference[signal.size:].sum(), abs=1e-10)
    assert record["score"] == pytest.approx(score, rel=1e-9)
    assert record["relevance_sum"] == pytest.approx(reference.sum(), rel=1e-7)
    # all frames: each frame's relevance is that frame's own explanation
    model_ = SignalModel(str(path), method="epsilon")
    every = model_.explain(signal, "all", 1)
    for index in range(5):
        own, _ = conv_relevance_by_hand(weights, frames[index * FRAME:(index + 1) * FRAME], 1)
        np.testing.assert_allclose(np.r_[every.relevance, np.zeros(20)][index * FRAME:(index + 1) * FRAME], own,
                                   rtol=1e-7, atol=1e-10)
    assert every.score == pytest.approx(float(np.sum(expected)), rel=1e-5)
    page = (out / "index.html").read_text()
    assert "signal.heatmap.png" in page and "1 file(s)" in page
    assert (out / "signal.heatmap.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # lrptool report rebuilds the page of a signal folder, counting files
    (out / "index.html").unlink()
    rebuilt = run("report", out)
    assert rebuilt.returncode == 0, rebuilt.stderr
    page = (out / "index.html").read_text()
    assert "signal.heatmap.png" in page and "1 file(s)" in page and "image(s)" not in page


@pytest.mark.parametrize("batch", [1, 2])
def test_a_model_with_a_fixed_batch_takes_its_frames_that_many_at_a_time(tmp_path, batch):
    model, weights = conv_model()
    model.graph.input[0].type.tensor_type.shape.dim[0].dim_value = batch
    model.graph.output[0].type.tensor_type.shape.dim[0].dim_value = batch
    onnx.save(model, str(tmp_path / "fixed.onnx"))
    signal = np.random.default_rng(6).normal(size=3 * FRAME)
    result = SignalModel(str(tmp_path / "fixed.onnx")).explain(signal, "all", 2)
    for index in range(3):
        own, score = conv_relevance_by_hand(weights, signal[index * FRAME:(index + 1) * FRAME], 2)
        assert result.scores[index] == pytest.approx(score, rel=1e-9)
        np.testing.assert_allclose(result.relevance[index * FRAME:(index + 1) * FRAME], own, rtol=1e-7, atol=1e-10)


def test_gradient_times_input_and_the_predicted_class(tmp_path):
    """gradient-x-input by hand: d score / d x of a ReLU-max network is the winning windows' filters times
    the output weights; --class pred takes the class of the clip's highest output."""
    model, weights = conv_model(seed=3)
    onnx.save(model, str(tmp_path / "conv.onnx"))
    signal = np.random.default_rng(8).normal(size=2 * FRAME)
    result = SignalModel(str(tmp_path / "conv.onnx"), method="gradient-x-input").explain(signal, "max")
    session = onnxruntime.InferenceSession(str(tmp_path / "conv.onnx"), providers=["CPUExecutionProvider"])
    outputs = session.run(None, {"x": signal.reshape(2, 1, FRAME).astype(np.float32)})[0]
    frame, klass = np.unravel_index(np.argmax(outputs), outputs.shape)
    assert result.frames == [frame] and result.klass == klass
    W, B, V = weights["W"], weights["B"], weights["V"]
    x = signal[frame * FRAME:(frame + 1) * FRAME]
    padded = np.pad(x, 2)
    conv = np.stack([padded[t:t + 5] for t in range(FRAME)]) @ W[:, 0, :].T + B
    gradient = np.zeros(FRAME + 4)
    for channel in range(4):
        t = int(np.argmax(np.maximum(conv[:, channel], 0)))
        if conv[t, channel] > 0:
            gradient[t:t + 5] += V[klass, channel] * W[channel, 0]
    expected = np.zeros(2 * FRAME)
    expected[frame * FRAME:(frame + 1) * FRAME] = gradient[2:-2] * x
    np.testing.assert_allclose(result.relevance, expected, rtol=1e-9, atol=1e-12)


def test_keras_conv1d_signal_model(tmp_path):
    """A Keras Conv1D (channels last, 'same' padding) read from .h5 explains as the same ONNX network does."""
    from test_keras_reader import dense_config, write_model

    _, weights = conv_model(seed=4)
    kernel = np.transpose(weights["W"], (2, 1, 0))            # (5, 1, 4): Keras' (width, in, out)
    config = dense_config([
        {"class_name": "Conv1D", "config": {"name": "conv", "filters": 4, "kernel_size": [5], "padding": "same",
                                            "activation": "relu"}},
        {"class_name": "GlobalMaxPooling1D", "config": {"name": "pool"}},
        {"class_name": "Dense", "config": {"name": "out", "units": 3, "activation": "linear"}}], [FRAME, 1])
    path = write_model(tmp_path / "signal.h5", config, {"conv": [kernel, weights["B"]],
                                                        "out": [weights["V"].T, weights["c"]]})
    signal = np.random.default_rng(9).normal(size=3 * FRAME)
    np.save(tmp_path / "s.npy", signal)
    result = run("explain-signal", path, tmp_path / "s.npy", "-o", tmp_path / "out", "--class", "0", "--target", "1")
    assert result.returncode == 0, result.stderr
    own, score = conv_relevance_by_hand(weights, signal[FRAME:2 * FRAME], 0)
    relevance = np.load(tmp_path / "out" / "s.relevance.npy")
    np.testing.assert_allclose(relevance[FRAME:2 * FRAME], own, rtol=1e-7, atol=1e-10)
    assert not relevance[:FRAME].any() and not relevance[2 * FRAME:].any()
    assert json.loads((tmp_path / "out" / "explanations.jsonl").read_text())["score"] == pytest.approx(score)
    beyond = run("explain-signal", path, tmp_path / "s.npy", "-o", tmp_path / "out2", "--class", "0", "--target", "3")
    assert beyond.returncode == 1
    assert b"skipped " + bytes(tmp_path / "s.npy") + b": frame 3 is beyond the signal's 3 frame(s)" in beyond.stderr
    bind = run("explain-signal", path, tmp_path / "s.npy", "-o", tmp_path / "out3", "--bind", "h=0")
    assert bind.returncode == 2 and b"not an ONNX model; only ONNX inputs can be bound" in bind.stderr


def test_overlapping_frames_add_their_relevance_where_they_overlap(tmp_path):
    model, weights = conv_model(seed=5)
    onnx.save(model, str(tmp_path / "conv.onnx"))
    hop = 48
    signal = np.random.default_rng(10).normal(size=200)       # frames at 0, 48, 96, 144: the last padded by 8
    prepared = SignalModel(str(tmp_path / "conv.onnx"), hop=hop)
    padded = np.r_[signal, np.zeros(8)]
    starts = [0, 48, 96, 144]
    session = onnxruntime.InferenceSession(str(tmp_path / "conv.onnx"), providers=["CPUExecutionProvider"])
    frames = np.stack([padded[s:s + FRAME] for s in starts])
    expected = session.run(None, {"x": frames[:, None].astype(np.float32)})[0][:, 2]
    every = prepared.explain(signal, "all", 2)
    np.testing.assert_allclose(every.scores, expected, rtol=1e-5, atol=1e-6)
    assert every.padded == 8 and every.hop == hop
    total = np.zeros(208)
    for index, start in enumerate(starts):
        own, _ = conv_relevance_by_hand(weights, frames[index], 2)
        total[start:start + FRAME] += own
        single = prepared.explain(signal, index, 2)
        alone = np.zeros(208)
        alone[start:start + FRAME] = own
        np.testing.assert_allclose(single.relevance, alone[:200], rtol=1e-7, atol=1e-10)
    np.testing.assert_allclose(every.relevance, total[:200], rtol=1e-7, atol=1e-10)
    assert every.padding == pytest.approx(total[200:].sum(), abs=1e-10)
    with pytest.raises(Exception, match="--hop 65: give 1 to the frame length"):
        SignalModel(str(tmp_path / "conv.onnx"), hop=65)


def test_resume_skips_finished_files_and_redoes_changed_ones(tmp_path):
    model, _ = conv_model()
    onnx.save(model, str(tmp_path / "conv.onnx"))
    inputs = tmp_path / "in"
    inputs.mkdir()
    rng = np.random.default_rng(2)
    np.save(inputs / "a.npy", rng.normal(size=3 * FRAME))
    write_pcm(inputs / "b.wav", rng.integers(-20000, 20000, size=2 * FRAME), 8000, 2)
    out = tmp_path / "out"
    first = run("explain-signal", tmp_path / "conv.onnx", inputs, "-o", out, "--class", "0")
    assert first.returncode == 0, first.stderr
    records = (out / "explanations.jsonl").read_text()
    again = run("explain-signal", tmp_path / "conv.onnx", inputs, "-o", out, "--class", "0", "--resume")
    assert again.returncode == 0 and b"resuming: 2 file(s)" in again.stderr
    assert (out / "explanations.jsonl").read_text() == records
    np.save(inputs / "a.npy", rng.normal(size=3 * FRAME))
    third = run("explain-signal", tmp_path / "conv.onnx", inputs, "-o", out, "--class", "0", "--resume")
    assert b"resuming: 1 file(s)" in third.stderr and b"explained 1 file(s)" in third.stderr
    # the input folder as the output folder: the relevance written there is not an input the next time
    for _ in range(2):
        inner = run("explain-signal", tmp_path / "conv.onnx", inputs, "-o", inputs, "--class", "0")
        assert inner.returncode == 0 and b"explained 2 file(s)" in inner.stderr, inner.stderr


# -- bad input ---------------------------------------------------------------------------------------

def test_bad_files_are_one_line_each_and_leave_nothing_behind(tmp_path):
    model, _ = conv_model()
    onnx.save(model, str(tmp_path / "conv.onnx"))
    folder = tmp_path / "in"
    folder.mkdir()
    (folder / "text.wav").write_bytes(b"just some text, not audio\n")
    write_pcm(folder / "empty.wav", np.zeros(0, dtype=np.int16), 16000, 2)
    nan = np.ones(100)
    nan[7] = np.nan
    np.save(folder / "nan.npy", nan)
    np.save(folder / "matrix.npy", np.ones((4, 4)))
    np.save(folder / "good.npy", np.ones(FRAME))
    out = tmp_path / "out"
    result = run("explain-signal", tmp_path / "conv.onnx", folder, "-o", out, "--class", "0")
    assert result.returncode == 1
    errors = result.stderr.decode()
    assert "Traceback" not in errors
    for name, message in (("text.wav", "not a WAV file or a .npy array"), ("empty.wav", "the WAV holds no samples"),
                          ("nan.npy", "NaN or Inf (first at sample 7)"), ("matrix.npy", "give a 1-D signal")):
        lines = [line for line in errors.splitlines() if name in line]
        assert len(lines) == 1 and message in lines[0], errors
    assert sorted(p.name for p in out.iterdir()) == [".lrptool-manifest.jsonl", "explanations.jsonl",
                                                     "good.heatmap.png", "good.relevance.npy", "index.html"]
    assert "explained 1 file(s)" in errors and "4 failed" in errors


def test_a_wav_at_another_rate_is_refused_unless_any_rate_is_asked_for(tmp_path):
    model, _ = conv_model()
    onnx.save(model, str(tmp_path / "conv.onnx"))
    write_pcm(tmp_path / "a.wav", np.arange(FRAME) * 100, 8000, 2)
    refused = run("explain-signal", tmp_path / "conv.onnx", tmp_path / "a.wav", "-o", tmp_path / "out",
                  "--sample-rate", "16000", "--class", "0")
    assert refused.returncode == 1
    lines = [line for line in refused.stderr.decode().splitlines() if "a.wav" in line]
    assert len(lines) == 1 and "sampled at 8000 Hz; the model expects 16000 Hz" in lines[0]
    assert not (tmp_path / "out" / "a.relevance.npy").exists()
    taken = run("explain-signal", tmp_path / "conv.onnx", tmp_path / "a.wav", "-o", tmp_path / "out",
                "--sample-rate", "any", "--class", "0")
    assert taken.returncode == 0, taken.stderr


def tiny_lstm(hidden=3, features=8, seed=4, gemm_bias=0.0):
    """(sequence_length, 8) → Unsqueeze → LSTM over the frames → Squeeze → Gemm → Sigmoid: one probability per
    frame, as silero-vad's sequence form; the initial state is an input ``h`` to bind."""
    rng = np.random.default_rng(seed)
    inits = [numpy_helper.from_array(rng.normal(size=(1, 4 * hidden, features)).astype(np.float32) * 0.5, "W"),
             numpy_helper.from_array(rng.normal(size=(1, 4 * hidden, hidden)).astype(np.float32) * 0.5, "R"),
             numpy_helper.from_array(rng.normal(size=(1, 8 * hidden)).astype(np.float32) * 0.2, "B"),
             numpy_helper.from_array(rng.normal(size=(1, hidden)).astype(np.float32), "V"),
             numpy_helper.from_array(np.array([gemm_bias], np.float32), "v0"),
             numpy_helper.from_array(np.array([1], np.int64), "one"),
             numpy_helper.from_array(np.array([1, 2], np.int64), "middle")]
    nodes = [helper.make_node("Unsqueeze", ["x", "one"], ["steps"]),
             helper.make_node("LSTM", ["steps", "W", "R", "B", "", "h"], ["Y", "Y_h"], hidden_size=hidden),
             helper.make_node("Squeeze", ["Y", "middle"], ["hs"]),
             helper.make_node("Gemm", ["hs", "V", "v0"], ["logit"], transB=1),
             helper.make_node("Sigmoid", ["logit"], ["prob"])]
    graph = helper.make_graph(nodes, "lstm", [
        helper.make_tensor_value_info("x", TensorProto.FLOAT, ["sequence_length", features]),
        helper.make_tensor_value_info("h", TensorProto.FLOAT, [1, 1, hidden])],
        [helper.make_tensor_value_info("prob", TensorProto.FLOAT, ["sequence_length", 1]),
         helper.make_tensor_value_info("Y_h", TensorProto.FLOAT, [1, 1, hidden])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 14)])
    model.ir_version = 8
    return model


def test_a_sequence_model_explains_one_frame_from_it_and_the_frames_before(tmp_path):
    path = tmp_path / "lstm.onnx"
    onnx.save(tiny_lstm(), str(path))
    signal = np.random.default_rng(5).normal(size=6 * 8)
    model = SignalModel(str(path), bind={"h": "0.1"}, output="prob", recurrent_bias="spread", epsilon=1e-12,
                        stabiliser=1e-12)
    assert model.layout == "sequence" and model.frame == 8
    unnamed = tiny_lstm()
    unnamed.graph.input[0].type.tensor_type.shape.dim[0].dim_param = "N"
    onnx.save(unnamed, str(tmp_path / "unnamed.onnx"))
    # the first axis is named like a batch, but the LSTM takes it as its time axis: still a sequence
    assert SignalModel(str(tmp_path / "unnamed.onnx"), bind={"h": "0.1"}, output="prob").layout == "sequence"
    with pytest.raises(Exception, match="moves the batch axis; .* give --layout sequence"):
        SignalModel(str(tmp_path / "unnamed.onnx"), bind={"h": "0.1"}, output="prob", layout="frames")
    result = model.explain(signal, 3)
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    expected = session.run(["prob"], {"x": signal.reshape(6, 8).astype(np.float32),
                                      "h": np.full((1, 1, 3), 0.1, np.float32)})[0][:, 0]
    np.testing.assert_allclose(result.scores, expected, atol=1e-6)
    assert np.all(result.relevance[4 * 8:] == 0) and np.any(result.relevance[3 * 8:4 * 8] != 0)
    # causal: the same relevance as explaining the last frame of the clip cut after frame 3
    prefix = model.explain(signal[:4 * 8], 3)
    np.testing.assert_allclose(result.relevance[:4 * 8], prefix.relevance, rtol=1e-9, atol=1e-12)
    # no bias outside the LSTM, its biases spread: the bound start state h absorbs its share, the rest conserves
    lstm = next(n for n in result.reports[0].nodes if n.op == "LSTM")
    assert abs(lstm.absorbed) <= 1e-9 * abs(lstm.relevance_out)


@pytest.mark.parametrize("args, message", [
    (["--bind", "x=0", "--bind", "h=0"], "every input of the model is bound"),
    ([], "the input 'h' (1×1×3) is not bound; give --bind h=VALUE"),
    (["--bind", "h=0", "--bind", "q=1"], "--bind q: the model has no input of that name; its inputs: x (?×8), h"),
    (["--bind", "h=0"], "the model has 2 outputs (prob, Y_h); choose the explained one with --model-output NAME"),
    (["--bind", "h=zero", "--model-output", "prob"], "--bind h=zero: not a number or a .npy file"),
    (["--bind", "h=0", "--model-output", "nope"], "--model-output 'nope': the model's outputs are prob, Y_h"),
    (["--bind", "h=0", "--model-output", "prob", "--frame", "9"], "--frame 9: the model's input 'x' takes frames of 8"),
    (["--bind", "h=0", "--model-output", "prob", "--target", "first"], "--target 'first': give max, all"),
    (["--bind", "h=0", "--model-output", "prob", "--preset", "nonsense"], "unknown preset 'nonsense'"),
    (["--bind", "h=0", "--model-output", "prob", "--preset", "smoothgrad"], "smoothgrad: signals are explained with"),
])
def test_model_and_option_mistakes_are_one_line(tmp_path, args, message):
    onnx.save(tiny_lstm(), str(tmp_path / "lstm.onnx"))
    np.save(tmp_path / "s.npy", np.ones(16))
    result = run("explain-signal", tmp_path / "lstm.onnx", tmp_path / "s.npy", "-o", tmp_path / "out", *args)
    assert result.returncode == 2
    lines = result.stderr.decode().strip().splitlines()
    assert len(lines) == 1 and message in lines[0], lines
    assert not (tmp_path / "out").exists()


# -- silero-vad --------------------------------------------------------------------------------------

CHUNK = 576


def silero_wav(tmp_path, chunks=12, cut=100):
    """speech_like's noise-then-tone as a 16 kHz 16-bit WAV, ``cut`` samples short of whole chunks."""
    samples = speech_like(chunks, seed=3).reshape(-1)[:chunks * CHUNK - cut]
    stored = np.round(np.clip(samples, -1, 1) * 32767).astype(np.int16)
    write_pcm(tmp_path / "clip.wav", stored, 16000, 2)
    framed = np.zeros(chunks * CHUNK, np.float32)
    framed[:stored.size] = stored / 32768
    return tmp_path / "clip.wav", framed.reshape(chunks, CHUNK)


def test_silero_vad_sequence_form_matches_onnxruntime_is_causal_and_conserves_in_its_lstm(tmp_path):
    path = shared_models() / "text" / "silero-vad" / "silero_vad_16k_sequence.onnx"
    wav, framed = silero_wav(tmp_path)
    model = SignalModel(str(path), bind={"h": "0", "c": "0"}, output="speech_probs", recurrent_bias="spread")
    result = model.explain(read_signal(str(wav)), "max")
    zeros = np.zeros((1, 1, 128), np.float32)
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    expected = session.run(["speech_probs"], {"input": framed, "h": zeros, "c": zeros})[0].reshape(-1)
    np.testing.assert_allclose(result.scores, expected, atol=1e-5)
    best = int(np.argmax(expected))
    assert result.frames == [best] and 0 < best < len(expected) - 1
    relevance = np.r_[result.relevance, np.zeros(result.padded)].reshape(len(expected), CHUNK)
    assert np.all(relevance[best + 1:] == 0)
    assert np.any(relevance[best] != 0)
    lstm = next(n for n in result.reports[0].nodes if n.op == "LSTM")
    assert abs(lstm.absorbed) <= 1e-9 * abs(lstm.relevance_out)
    # as silero-vad is run: 512 new samples a chunk, after the previous chunk's last 64
    overlapping = SignalModel(str(path), bind={"h": "0", "c": "0"}, output="speech_probs", hop=512)
    samples = read_signal(str(wav)).samples
    chunks = overlapping.framed(samples)[0].astype(np.float32)
    assert chunks.shape == (1 + -(-(samples.size - CHUNK) // 512), CHUNK)
    np.testing.assert_array_equal(chunks[1, :64], chunks[0, 512:])
    reference = session.run(["speech_probs"], {"input": chunks, "h": zeros, "c": zeros})[0].reshape(-1)
    np.testing.assert_allclose(overlapping.explain(samples).scores, reference, atol=1e-5)

    out = tmp_path / "out"
    cli = run("explain-signal", path, wav, "-o", out, "--bind", "h=0", "--bind", "c=0", "--model-output",
              "speech_probs", "--recurrent-bias", "spread")
    assert cli.returncode == 0, cli.stderr
    record = json.loads((out / "explanations.jsonl").read_text())
    assert record["explained_frames"] == [best] and record["frames"] == len(expected)
    assert record["score"] == pytest.approx(float(expected[best]), abs=1e-5)
    written = np.load(out / "clip.relevance.npy")
    assert written.shape == (framed.size - 100,) and np.all(np.isfinite(written))
    np.testing.assert_allclose(written, result.relevance, rtol=1e-9, atol=1e-12)
    assert all(np.isfinite(record[k]) for k in ("score", "relevance_sum", "padding_relevance"))
    assert (out / "clip.heatmap.png").stat().st_size > 1000


def test_silero_vad_unrolled_form_explains_every_frame_from_the_command_line(tmp_path):
    path = shared_models() / "text" / "silero-vad" / "silero_vad_op18_ifless.onnx"
    wav, framed = silero_wav(tmp_path, chunks=6)
    out = tmp_path / "out"
    wrong = run("explain-signal", path, wav, "-o", out, "--bind", "sr=8000", "--bind", "state=0", "--frame", CHUNK,
                "--model-output", "output")
    assert wrong.returncode == 1 and b"the model expects 8000 Hz" in wrong.stderr
    cli = run("explain-signal", path, wav, "-o", out, "--bind", "sr=16000", "--bind", "state=0", "--frame", CHUNK,
              "--model-output", "output", "--target", "all")
    assert cli.returncode == 0, cli.stderr
    record = json.loads((out / "explanations.jsonl").read_text())
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    state = np.zeros((2, 1, 128), np.float32)
    expected = [session.run(["output"], {"input": row[None], "sr": np.array(16000, np.int64), "state": state})[0].item()
                for row in framed]
    np.testing.assert_allclose(record["scores"], expected, atol=1e-5)
    assert record["explained_frames"] == list(range(6)) and record["sample_rate"] == 16000
    written = np.load(out / "clip.relevance.npy")
    assert np.all(np.isfinite(written)) and np.abs(written).sum() > 0
