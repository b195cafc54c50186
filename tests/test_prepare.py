"""`python -m emosup.prepare`: generic flag → reader option mapping, errors and exit codes,
the written manifest, and (one subprocess) the module entry point importing no TF/JAX."""
import os
import subprocess
import sys
import types

import pytest

from emosup import prepare
from emosup.data import manifest as manifest_lib
from emosup.data.corpora import crema_d, iemocap, registry

import test_corpus_crema_d
import test_corpus_iemocap


@pytest.fixture(scope="module")
def crema(tmp_path_factory):
    return test_corpus_crema_d.make_repo(tmp_path_factory.mktemp("cremad") / "CREMA-D")


@pytest.fixture(scope="module")
def iemo(tmp_path_factory):
    return test_corpus_iemocap.make_release(tmp_path_factory.mktemp("iemo") / "IEMOCAP")


def test_list(capsys):
    assert prepare.main(["--list"]) == 0
    assert capsys.readouterr().out.split() == list(registry.CORPORA)
    assert registry.CORPORA == ("msp_podcast", "iemocap", "crema_d", "ravdess", "esd", "voxceleb")


def test_writes_manifest_and_summary(crema, tmp_path, capsys):
    out = tmp_path / "sub" / "cremad.csv"
    assert prepare.main(["crema_d", str(crema), f"--out={out}"]) == 0
    text = capsys.readouterr().out
    want = crema_d.read(crema)
    back = manifest_lib.read_manifest(out, allowed_splits=None)
    assert back.utterances == want.utterances
    assert all(os.path.isabs(line.split(",")[0])
               for line in out.read_text().splitlines()[1:])
    assert text.startswith("22 utterances, 10 speakers\n")
    assert f"skipped 7 files:\n  {crema / 'AudioWAV' / '1002_DFA_CAL_XX.wav'}: name is not" in text
    assert text.rstrip().endswith(f"wrote 22 rows to {out}")


def test_flags_map_onto_reader_options(crema, iemo, tmp_path):
    out = tmp_path / "a.csv"
    argv = ["crema_d", str(crema), "--seed=3", "--nocheck_silence", "--fractions=0.5,0.25,0.25",
            f"--out={out}"]
    assert prepare.main(argv) == 0
    want = crema_d.read(crema, seed=3, check_silence=False, fractions=(0.5, 0.25, 0.25))
    assert manifest_lib.read_manifest(out, allowed_splits=None).utterances == want.utterances
    assert "1076" in {u.speaker for u in want.utterances}  # the silent file is in
    out2 = tmp_path / "b.csv"
    assert prepare.main(["iemocap", str(iemo), f"--out={out2}", "--all-classes",
                         "--test_session=1", "--dev_session=3", "--check_silence=false"]) == 0
    want = iemocap.read(iemo, all_classes=True, test_session=1, dev_session=3)
    assert manifest_lib.read_manifest(out2).utterances == want.utterances


def test_generic_mapping_for_other_readers(monkeypatch, tmp_path, capsys):
    """ravdess/esd/voxceleb are written elsewhere; any reader's keyword options become flags."""
    seen = {}

    def read(root, *, song: bool = False, languages: str = "english", official_split=True,
             seed: int = 0, ratio: float = 0.5, dev=None):
        seen.update(root=root, song=song, languages=languages, official_split=official_split,
                    seed=seed, ratio=ratio, dev=dev)
        from emosup.data.corpora import common
        return common.Prepared([], [("/x.wav", "silent (all samples zero)")])

    monkeypatch.setitem(sys.modules, "emosup.data.corpora.ravdess",
                        types.SimpleNamespace(read=read))
    rc = prepare.main(["ravdess", "/r", "--out=" + str(tmp_path / "r.csv"), "--song",
                       "--languages=english,mandarin", "--noofficial_split", "--seed=4",
                       "--ratio=0.25", "--dev=none"])
    assert seen == dict(root="/r", song=True, languages="english,mandarin",
                        official_split=False, seed=4, ratio=0.25, dev=None)
    # No usable rows: nothing is written, status 1.
    assert rc == 1 and not (tmp_path / "r.csv").exists()
    err = capsys.readouterr().err
    assert err == "emosup.prepare: no usable utterances in /r; nothing written\n"
    assert prepare.convert("7", None, "dev") == 7 and prepare.convert("a", None, "dev") == "a"
    assert prepare.main(["ravdess", "--help"]) == 0
    assert capsys.readouterr().out.endswith(
        "options of ravdess:\n  --song  (bool, default False)\n"
        "  --languages  (str, default english)\n  --official_split  (bool, default True)\n"
        "  --seed  (int, default 0)\n  --ratio  (float, default 0.5)\n"
        "  --dev  (value or none, default None)\n")


@pytest.mark.parametrize("argv,status,message", [
    (["crema_d", "{crema}", "--out={out}", "--bogus=1"], 2,
     "crema_d has no option --bogus\noptions of crema_d:\n  --seed  (int, default 0)\n"
     "  --fractions  (float,..., default 0.7,0.1,0.2)\n  --check_silence  (bool, default True)"),
    (["crema_d", "{crema}", "--out={out}", "--seed=x"], 2, "--seed: expected an integer, got 'x'"),
    (["crema_d", "{crema}", "--out={out}", "--seed"], 2, "--seed needs a value: --seed=VALUE"),
    (["crema_d", "{crema}", "--out={out}", "--check_silence=maybe"], 2,
     "--check_silence: expected true or false, got 'maybe'"),
    (["crema_d", "{crema}"], 2, "--out=manifest.csv is required"),
    (["crema_d"], 2, "expected CORPUS ROOT, got 1 positional argument(s): crema_d"),
    ([], 2, "missing CORPUS and ROOT"),
    (["timit", "{crema}", "--out={out}"], 2,
     "unknown corpus 'timit'; one of: msp_podcast, iemocap, crema_d, ravdess, esd, voxceleb"),
    (["iemocap", "{crema}", "--out={out}", "--dev_session=5"], 2,
     "invalid iemocap options: dev_session and test_session are both 5"),
    (["iemocap", "{crema}", "--out={out}"], 1,
     "cannot read iemocap at {crema}: {crema}: no Session1..Session5 folders; is this "
     "IEMOCAP_full_release?"),
])
def test_errors_and_exit_status(crema, tmp_path, capsys, argv, status, message):
    out = tmp_path / "m.csv"
    fill = lambda s: s.replace("{crema}", str(crema)).replace("{out}", str(out))  # noqa: E731
    assert prepare.main([fill(a) for a in argv]) == status
    err = capsys.readouterr().err
    assert err.startswith(f"emosup.prepare: {fill(message)}\n")
    assert not out.exists()


def test_missing_reader_module(monkeypatch, capsys):
    monkeypatch.setattr(registry, "CORPORA", registry.CORPORA + ("nosuch",))
    assert prepare.main(["nosuch", "/r", "--out=/tmp/x.csv"]) == 2
    assert capsys.readouterr().err.startswith(
        "emosup.prepare: the nosuch reader (emosup.data.corpora.nosuch) is not available in "
        "this installation\n")


def test_module_entry_point_imports_no_tf_or_jax(crema, tmp_path):
    out = tmp_path / "m.csv"
    code = (
        "import runpy, sys\n"
        f"sys.argv = ['prepare', 'crema_d', {str(crema)!r}, '--out={out}']\n"
        "try:\n    runpy.run_module('emosup.prepare', run_name='__main__', alter_sys=True)\n"
        "except SystemExit as e:\n    rc = e.code\n"
        "heavy = sorted(m for m in ('jax', 'flax', 'tensorflow', 'torch') if m in sys.modules)\n"
        "print('HEAVY', heavy)\nsys.exit(rc)\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                       cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    assert r.returncode == 0, r.stderr
    assert "HEAVY []" in r.stdout
    assert len(manifest_lib.read_manifest(out)) == 22
