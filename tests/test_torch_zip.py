"""emosup reads torch checkpoints itself: what torch.load gives, nothing executed, no torch needed."""
import io
import os
import pickle
import subprocess
import sys
import zipfile

import jax
import numpy as np
import pytest
import torch
from helpers import write_speechbrain_hparams
from speechbrain.lobes.models.ECAPA_TDNN import ECAPA_TDNN

from emosup import checkpoint
from emosup.convert.speechbrain_ecapa import convert_state, load_speechbrain_ecapa
from emosup.convert.torch_state import load_torch_state
from emosup.convert.torch_zip import load_torch_file
from emosup.errors import ConversionError

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _dtypes():
    g = torch.Generator().manual_seed(0)
    f = torch.randn(3, 5, generator=g)
    f[0, :4] = torch.tensor([float("nan"), float("inf"), -0.0, 1e-40])  # bit-exact, subnormal
    return {
        "f64": torch.randn(4, generator=g, dtype=torch.float64),
        "f32": f,
        "f16": torch.randn(2, 3, generator=g).half(),
        "bf16": torch.randn(2, 3, generator=g).bfloat16(),
        "i64": torch.arange(-3, 9).reshape(3, 4) * 10**12,
        "i32": torch.arange(-5, 5, dtype=torch.int32),
        "i16": torch.arange(-5, 5, dtype=torch.int16),
        "i8": torch.arange(-5, 5, dtype=torch.int8),
        "u8": torch.arange(250, 256, dtype=torch.uint8),
        "u16": torch.arange(65530, 65536, dtype=torch.int32).to(torch.uint16),  # a dtype record
        "bool": torch.tensor([True, False, True]),
        "c64": torch.randn(3, generator=g, dtype=torch.complex64),
    }


def _views():
    g = torch.Generator().manual_seed(1)
    base = torch.randn(4, 6, generator=g)
    return {
        "base": base,
        "transposed": base.t(),  # non-contiguous
        "offset": base[1:, 2:],  # storage offset 8, strides (6, 1)
        "strided": base[::2, 1::3],
        "row": base.view(24)[5:9],  # shares base's storage
        "scalar_view": base[3, 5],  # 0-d at offset 23
        "broadcast": torch.arange(3.0).expand(2, 3),  # stride 0
        "channels_last": torch.randn(2, 3, 4, 5, generator=g).to(memory_format=torch.channels_last),
    }


def _small():
    return {
        "zero_d": torch.tensor(3.5),
        "zero_d_int": torch.tensor(7),
        "empty": torch.zeros(0, 3),
        "parameter": torch.nn.Parameter(torch.ones(2, 2)),
        "dtype": torch.float16,
        "plain": [1, 2.5, "x", None, True, (3, "y"), {"k": [b"raw"]}],
    }


def _speechbrain_like():
    """What SpeechBrain's .ckpt files hold: a module's state_dict (an OrderedDict carrying
    _metadata), a normalizer's dict of counts and tensors, an optimizer's nested state."""
    torch.manual_seed(2)
    module = torch.nn.Sequential(torch.nn.Conv1d(3, 4, 2), torch.nn.BatchNorm1d(4))
    opt = torch.optim.Adam(module.parameters())
    module(torch.randn(2, 3, 5)).sum().backward()
    opt.step()
    return {
        "embedding_model": module.state_dict(),
        "mean_var_norm_emb": {"count": 5, "glob_mean": torch.randn(4), "glob_std": torch.rand(4),
                              "spk_dict_mean": {}, "spk_dict_std": {}, "spk_dict_count": {}},
        "optimizer": opt.state_dict(),
    }


STATES = {"dtypes": _dtypes, "views": _views, "small": _small, "speechbrain": _speechbrain_like}
FORMATS = {
    "zip": {},
    "zip_protocol4": {"pickle_protocol": 4},
    "legacy": {"_use_new_zipfile_serialization": False},
}


def as_reader_output(obj):
    """torch.load's result in the reader's terms: numpy arrays (bfloat16 as float32), torch
    dtypes as their names, containers as they are."""
    if isinstance(obj, torch.Tensor):
        t = obj.detach()
        return (t.float() if t.dtype == torch.bfloat16 else t).numpy()
    if isinstance(obj, torch.dtype):
        return str(obj)
    if isinstance(obj, dict):
        return type(obj)((k, as_reader_output(v)) for k, v in obj.items())
    if isinstance(obj, (list, tuple)):
        return type(obj)(as_reader_output(v) for v in obj)
    return obj


def assert_same(got, want, where="object"):
    assert type(got) is type(want), f"{where}: {type(got)} != {type(want)}"
    if isinstance(want, np.ndarray):
        assert (got.dtype, got.shape) == (want.dtype, want.shape), where
        assert np.ascontiguousarray(got).tobytes() == np.ascontiguousarray(want).tobytes(), where
    elif isinstance(want, dict):
        assert list(got) == list(want), where
        for k in want:
            assert_same(got[k], want[k], f"{where}[{k!r}]")
    elif isinstance(want, (list, tuple)):
        assert len(got) == len(want), where
        for i, (a, b) in enumerate(zip(got, want)):
            assert_same(a, b, f"{where}[{i}]")
    else:
        assert got == want, where


@pytest.mark.filterwarnings("ignore:Detected pickle protocol 4")  # torch.load on protocol 4
@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("name", STATES)
def test_reads_what_torch_load_reads(tmp_path, name, fmt):
    path = tmp_path / "state.ckpt"
    state = STATES[name]()
    if fmt == "legacy":
        state.pop("u16", None)  # torch.load itself cannot read uint16 from the legacy stream
    torch.save(state, path, **FORMATS[fmt])
    if fmt != "legacy":
        assert zipfile.is_zipfile(path)
    # torch's own restricted unpickler stops at protocol 4's FRAME opcode; this file is ours
    want = torch.load(path, weights_only=fmt != "zip_protocol4")
    assert_same(load_torch_file(path), as_reader_output(want))


def _swap(raw, itemsize):
    return np.frombuffer(raw, f"u{itemsize}").byteswap().tobytes() if itemsize > 1 else raw


def test_big_endian_archive(tmp_path):
    """A file written on a big-endian machine: byteorder "big", every element byte-swapped."""
    state = {k: v for k, v in _dtypes().items() if k != "u16"}
    torch.save(state, tmp_path / "little.pt")
    # torch numbers the storages in the order it meets them: here one per entry
    swap = {str(i): (t.element_size() // 2 if t.is_complex() else t.element_size())
            for i, t in enumerate(state.values())}
    with zipfile.ZipFile(tmp_path / "little.pt") as src, \
            zipfile.ZipFile(tmp_path / "big.pt", "w") as dst:
        for info in src.infolist():
            data, (folder, _, leaf) = src.read(info), info.filename.rpartition("/")
            if leaf == "byteorder":
                data = b"big"
            elif folder.endswith("/data"):
                data = _swap(data, swap[leaf])
            dst.writestr(info.filename, data)
    want = as_reader_output(torch.load(tmp_path / "little.pt", weights_only=True))
    assert_same(load_torch_file(tmp_path / "big.pt"), want)
    assert_same(load_torch_file(tmp_path / "big.pt"), load_torch_file(tmp_path / "little.pt"))


def test_load_torch_state_flat_dicts(tmp_path):
    torch.save(_views(), tmp_path / "m.bin")
    state = load_torch_state(tmp_path / "m.bin")
    assert list(state) == list(_views()) and state["offset"].flags.c_contiguous
    np.testing.assert_array_equal(state["offset"], _views()["offset"].numpy())
    torch.save({"w": torch.ones(2), "n": 3}, tmp_path / "mixed.pt")
    with pytest.raises(ConversionError, match="expected a flat mapping of names to tensors, but 'n' holds an? int"):
        load_torch_state(tmp_path / "mixed.pt")


class _Payload:
    """Pickles as a call of `func(arg)`: what a hostile checkpoint carries."""

    def __init__(self, func, arg):
        self.func, self.arg = func, arg

    def __reduce__(self):
        return (self.func, (self.arg,))


def _assert_one_line_refusal(path, qualname):
    with pytest.raises(ConversionError) as info:
        load_torch_file(path)
    msg = str(info.value)
    assert "\n" not in msg
    assert msg.startswith(f"{path}: refused: the pickle asks for {qualname}, which is not a tensor "
                          "or a plain container (allowed: collections.OrderedDict, ")
    return msg


def _plain_unpickle(path, fmt):
    """What an unrestricted unpickler does with the file's object pickle (storages as None)."""
    with open(path, "rb") as f:
        if fmt == "legacy":
            for _ in range(3):  # magic number, protocol, system information
                pickle.load(f)
            raw = f.read()
        else:
            with zipfile.ZipFile(f) as z:
                raw = z.read(next(n for n in z.namelist() if n.endswith("/data.pkl")))
    unpickler = pickle.Unpickler(io.BytesIO(raw))
    unpickler.persistent_load = lambda pid: None
    try:
        unpickler.load()
    except Exception:  # torch's functions fail on the None storages: after the payload ran
        pass


@pytest.mark.parametrize("fmt", FORMATS)
def test_code_payload_is_refused_and_never_runs(tmp_path, fmt):
    pwned = tmp_path / "PWNED"
    state = {"bias": _Payload(os.system, f"touch {pwned}"), **_views()}
    torch.save(state, tmp_path / "evil.ckpt", **FORMATS[fmt])  # records the call, does not run it
    _assert_one_line_refusal(tmp_path / "evil.ckpt", f"{os.system.__module__}.system")
    with pytest.raises(ConversionError, match=f"refused: the pickle asks for {os.system.__module__}.system"):
        load_torch_state(tmp_path / "evil.ckpt")
    assert not pwned.exists()
    _plain_unpickle(tmp_path / "evil.ckpt", fmt)  # the payload is live: a plain unpickler runs it
    assert pwned.exists()


@pytest.mark.parametrize("protocol", [2, 4])
def test_hand_written_archive_with_eval_is_refused(tmp_path, protocol):
    pwned = tmp_path / "PWNED"
    payload = pickle.dumps(_Payload(eval, f"open({str(pwned)!r}, 'w').close()"), protocol=protocol)
    with zipfile.ZipFile(tmp_path / "evil.pt", "w") as z:
        z.writestr("archive/data.pkl", payload)
        z.writestr("archive/byteorder", "little")
        z.writestr("archive/version", "3\n")
    # protocol 2 spells the module as Python 2 did
    _assert_one_line_refusal(tmp_path / "evil.pt", "__builtin__.eval" if protocol == 2 else "builtins.eval")
    assert not pwned.exists()


def test_pickled_module_is_refused_naming_its_class(tmp_path):
    torch.save(torch.nn.Linear(2, 3), tmp_path / "model.pt")  # a whole model, not a state_dict
    _assert_one_line_refusal(tmp_path / "model.pt", "torch.nn.modules.linear.Linear")


def test_damaged_files_are_named(tmp_path):
    torch.save({"w": torch.arange(6.0).reshape(2, 3)}, tmp_path / "good.pt")
    with zipfile.ZipFile(tmp_path / "good.pt") as src, \
            zipfile.ZipFile(tmp_path / "short.pt", "w") as dst:
        for info in src.infolist():
            data = src.read(info)
            dst.writestr(info.filename, data[:8] if info.filename.endswith("/data/0") else data)
    with pytest.raises(ConversionError, match=r"short.pt: storage '0' holds 8 bytes, 6 float32 "
                                              r"elements need 24$"):
        load_torch_file(tmp_path / "short.pt")
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint at all")
    with pytest.raises(ConversionError, match=r"junk.pt: not a torch checkpoint \(starts with b'not "):
        load_torch_file(tmp_path / "junk.pt")
    data = (tmp_path / "good.pt").read_bytes()
    (tmp_path / "cut.pt").write_bytes(data[: len(data) // 2])
    with pytest.raises(ConversionError, match="cut.pt: "):
        load_torch_file(tmp_path / "cut.pt")
    with pytest.raises(FileNotFoundError, match="nope.pt"):
        load_torch_file(tmp_path / "nope.pt")


CHANNELS = [16, 16, 16, 16, 48]

# `python -m emosup.convert` with every import of torch failing, as on a machine without it.
NO_TORCH = """
import importlib.abc, runpy, sys

class NoTorch(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name == "torch" or name.startswith("torch."):
            raise ImportError(f"no module named {name!r} (blocked by the test)")

sys.meta_path.insert(0, NoTorch())
sys.argv[0] = "emosup.convert"
try:
    runpy.run_module("emosup.convert", run_name="__main__", alter_sys=True)
finally:
    loaded = sorted(m for m in sys.modules if m == "torch" or m.startswith("torch."))
    print("torch modules loaded:", loaded)
"""


def test_speechbrain_conversion_without_torch(tmp_path):
    torch.manual_seed(0)
    sb = ECAPA_TDNN(8, channels=CHANNELS, attention_channels=8, se_channels=8, lin_neurons=8)
    src = tmp_path / "sb"
    src.mkdir()
    torch.save(sb.state_dict(), src / "embedding_model.ckpt")
    write_speechbrain_hparams(src, n_mels=8, channels=CHANNELS, attention_channels=8, se_channels=8,
                              lin_neurons=8, groups=[1, 1, 1, 1, 1])
    out = tmp_path / "out"
    proc = subprocess.run([sys.executable, "-c", NO_TORCH, "speechbrain", str(src), str(out)],
                          cwd=REPO, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "torch modules loaded: []" in proc.stdout and f"converted {src}" in proc.stdout

    config, variables = checkpoint.load_encoder_variables(out)
    model_config, _ = load_speechbrain_ecapa(src)
    assert config["ecapa"] == model_config["ecapa"]
    # the reference: the same conversion of the arrays torch itself hands out
    want = convert_state({k: v.numpy() for k, v in sb.state_dict().items()}, config["ecapa"])
    got_leaves = jax.tree_util.tree_leaves_with_path(variables)
    want_leaves = jax.tree_util.tree_leaves_with_path(want)
    assert [p for p, _ in got_leaves] == [p for p, _ in want_leaves]
    for (path, a), (_, b) in zip(got_leaves, want_leaves):
        assert a.dtype == b.dtype and a.shape == b.shape, path
        np.testing.assert_array_equal(a, b, err_msg=str(path))
    np.testing.assert_array_equal(variables["params"]["blocks_0"]["conv"]["conv"]["kernel"],
                                  sb.state_dict()["blocks.0.conv.conv.weight"].numpy().transpose(2, 1, 0))
