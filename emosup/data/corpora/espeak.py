"""A second synthetic corpus, spoken by espeak-ng: other voices, sentences and prosody than the
built-in corpus, to check that a result does not hold only on the speech emosup was built around.

  python -m emosup.data.corpora.espeak OUT_DIR [--speakers 24] [--per_emotion 8] [--seed 0]

Needs the `espeak-ng` program (Debian/Ubuntu: `apt-get install espeak-ng`). Writes
OUT_DIR/wav/<speaker>/<speaker>_<emotion>_<i>.wav (16 kHz mono PCM) and OUT_DIR/manifest.csv
(path, speaker, emotion, split) for `--config=configs/demo.py:manifest=OUT_DIR/manifest.csv`.

A speaker is an espeak-ng voice variant and English accent with its own pitch, speed and word
gap. An emotion is an SSML prosody setting relative to that speaker (pitch level and range,
rate, volume) with per-utterance jitter, so emotions overlap: neutral (as the speaker is),
happy (higher, wider, faster), sad (lower, flatter, slower, softer), angry (a little higher,
wide, fast, loud). Each utterance reads a sentence drawn from SENTENCES, so the words do not
predict the emotion. Splits by speaker: half `train`, a quarter `dev`, a quarter `test`.
Everything is drawn from `numpy.random.default_rng([seed, speaker, emotion, i])`.
"""
import argparse
import csv
import os
import pathlib
import shutil
import subprocess
import sys
import tempfile

import numpy as np
import soundfile as sf

EMOTIONS = ("neutral", "happy", "sad", "angry")
# Emotion prosody relative to the speaker: pitch %, range %, rate %, volume dB (our choices).
PROSODY = {"neutral": (0, 0, 0, 0.0), "happy": (18, 60, 12, 2.0), "sad": (-12, -45, -22, -6.0),
           "angry": (8, 45, 10, 6.0)}
JITTER = (6, 20, 6, 2.0)  # std of the per-utterance jitter of each of the four
VARIANTS = ("m1", "m2", "m3", "m4", "m5", "m6", "m7", "f1", "f2", "f3", "f4", "f5",
            "klatt", "klatt2", "klatt3", "Annie", "Michael", "croak")
ACCENTS = ("en", "en-us", "en-gb-x-rp", "en-gb-scotland", "en-029")
SENTENCES = (
    "The train to the coast leaves at half past nine.",
    "Please put the blue folder on the second shelf.",
    "We counted forty seven boats in the harbour this morning.",
    "The meeting has been moved to the room next to the library.",
    "My brother painted the fence over the weekend.",
    "There is a small bakery at the end of this street.",
    "The report needs two more tables before Friday.",
    "She left her umbrella on the bus again.",
    "The garden looks different after all that rain.",
    "They will deliver the new chairs on Tuesday.",
    "I found the old photographs in a box upstairs.",
    "The river is wider here than near the bridge.",
    "Our neighbours are moving to another city.",
    "He wrote the numbers down on the back of the ticket.",
    "The shop closes early on the first day of the month.",
    "You can see the mountains from the top floor.",
    "The letter arrived three days after it was sent.",
    "We have to change trains at the next station.",
    "The kitchen window faces the park.",
    "That song was playing on the radio all summer.",
    "The test results will be ready in the afternoon.",
    "A cat was sleeping on the roof of the car.",
    "The museum is free on Sunday mornings.",
    "I think the keys are in the drawer by the door.",
)


def _run(cmd):
    r = subprocess.run(cmd, capture_output=True, text=True)
    if r.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd[:4])} ... failed: {r.stderr.strip()[:300]}")


def _speak(text, voice, pitch, speed, gap, prosody, out_wav, tmp):
    p, r, s, v = prosody
    ssml = (f'<speak><prosody pitch="{p:+.0f}%" range="{r:+.0f}%" rate="{s:+.0f}%" '
            f'volume="{v:+.1f}dB">{text}</prosody></speak>')
    raw = os.path.join(tmp, "raw.wav")
    _run(["espeak-ng", "-m", "-v", voice, "-p", str(pitch), "-s", str(speed), "-g", str(gap), "-w", raw, ssml])
    x, sr = sf.read(raw, dtype="float32")
    import librosa

    y = librosa.resample(x, orig_sr=sr, target_sr=16000, res_type="soxr_hq")
    peak = float(np.abs(y).max()) or 1.0
    sf.write(out_wav, (y / max(peak, 1.0)).astype(np.float32), 16000, subtype="PCM_16")


def generate(out_dir, speakers=24, per_emotion=8, seed=0):
    if shutil.which("espeak-ng") is None:
        raise RuntimeError("espeak-ng is not installed (Debian/Ubuntu: apt-get install espeak-ng)")
    out = pathlib.Path(out_dir).absolute()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for s in range(speakers):
            rng = np.random.default_rng([seed, s])
            voice = f"{ACCENTS[s % len(ACCENTS)]}+{VARIANTS[(s * 7) % len(VARIANTS)]}"
            pitch, speed, gap = int(rng.integers(25, 75)), int(rng.integers(140, 200)), int(rng.integers(0, 3))
            name = f"es{s:02d}"
            split = "train" if s % 4 in (0, 1) else "dev" if s % 4 == 2 else "test"
            (out / "wav" / name).mkdir(parents=True, exist_ok=True)
            for e, emo in enumerate(EMOTIONS):
                for i in range(per_emotion):
                    r = np.random.default_rng([seed, s, e, i])
                    prosody = tuple(b + j * r.normal() for b, j in zip(PROSODY[emo], JITTER))
                    text = SENTENCES[int(r.integers(len(SENTENCES)))]
                    rel = f"wav/{name}/{name}_{emo}_{i}.wav"
                    _speak(text, voice, pitch, speed, gap, prosody, out / rel, tmp)
                    rows.append((rel, name, emo, split))
            print(f"espeak corpus: speaker {s + 1}/{speakers} ({voice})", file=sys.stderr, flush=True)
    with open(out / "manifest.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["path", "speaker", "emotion", "split"])
        w.writerows(rows)
    return out / "manifest.csv"


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("out_dir")
    ap.add_argument("--speakers", type=int, default=24)
    ap.add_argument("--per_emotion", type=int, default=8)
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args(argv)
    try:
        path = generate(a.out_dir, a.speakers, a.per_emotion, a.seed)
    except RuntimeError as e:
        print(f"emosup.data.corpora.espeak: error: {e}", file=sys.stderr)
        return 1
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
