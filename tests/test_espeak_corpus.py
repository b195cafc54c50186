"""emosup.data.corpora.espeak with a stand-in `espeak-ng` on PATH (CI has no espeak-ng): the
command lines carry each speaker's voice and each emotion's prosody, the WAVs are 16 kHz, the
manifest names every file once with its speaker, emotion and split."""
import csv
import os
import re
import stat
import sys

import numpy as np
import soundfile as sf

from emosup.data.corpora import espeak

FAKE = """#!{python}
import sys, numpy as np, soundfile as sf
args = sys.argv[1:]
open({log!r}, "a").write(repr(args) + "\\n")
sf.write(args[args.index("-w") + 1], (0.3 * np.sin(np.arange(22050) * 0.05)).astype(np.float32), 22050)
"""


def test_espeak_corpus_with_a_stand_in_synthesiser(tmp_path, monkeypatch):
    bin_dir, log = tmp_path / "bin", tmp_path / "calls.txt"
    bin_dir.mkdir()
    exe = bin_dir / "espeak-ng"
    exe.write_text(FAKE.format(python=sys.executable, log=str(log)))
    exe.chmod(exe.stat().st_mode | stat.S_IEXEC)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    manifest = espeak.generate(tmp_path / "corpus", speakers=4, per_emotion=2, seed=0)
    rows = list(csv.DictReader(open(manifest)))
    assert len(rows) == 4 * 4 * 2 and len({r["path"] for r in rows}) == len(rows)
    assert [r["split"] for r in rows[::8]] == ["train", "train", "dev", "test"]
    for r in rows:
        x, sr = sf.read(tmp_path / "corpus" / r["path"])
        assert sr == 16000 and abs(len(x) - 16000) <= 1 and r["emotion"] in espeak.EMOTIONS
        assert r["path"].startswith(f"wav/{r['speaker']}/{r['speaker']}_{r['emotion']}_")
    calls = [eval(line) for line in log.read_text().splitlines()]
    assert len(calls) == len(rows)
    # One voice per speaker, four voices in all; per emotion the prosody moves as documented.
    voices = {}
    by = {}
    for r, args in zip(rows, calls):
        voices.setdefault(r["speaker"], set()).add(args[args.index("-v") + 1])
        p, width, rate, vol = (float(v) for v in re.findall(r'="([-+0-9.]+)(?:%|dB)"', args[-1]))
        by.setdefault(r["emotion"], []).append((p, width, rate, vol))
    assert all(len(v) == 1 for v in voices.values()) and len(set.union(*voices.values())) == 4
    mean = {e: np.mean(v, axis=0) for e, v in by.items()}
    assert mean["sad"][0] < mean["neutral"][0] < mean["happy"][0]  # pitch
    assert mean["sad"][2] < mean["neutral"][2] < mean["happy"][2]  # rate
    assert mean["sad"][3] < mean["neutral"][3] < mean["angry"][3]  # volume

    def without_out(c):  # the raw file lives in a fresh temporary folder each run
        return [a for i, a in enumerate(c) if i == 0 or c[i - 1] != "-w"]

    # The same seed makes the same corpus.
    again = espeak.generate(tmp_path / "again", speakers=4, per_emotion=2, seed=0)
    assert open(again).read() == open(manifest).read()
    calls2 = [eval(line) for line in log.read_text().splitlines()][len(rows):]
    assert [without_out(c) for c in calls2] == [without_out(c) for c in calls]
