"""The built-in synthetic emotional speech corpus (seeded, deterministic, written as WAV files).

Why: the pipeline, the clustering study and the tests need speech whose structure mirrors the
paper's premise (speaker identity dominates an utterance's global structure; emotion shifts it
*within* a speaker) without downloading a corpus. Every choice in this package is ours.

* `voices`: the splits, the speakers (voice, channel, emotional style) and the emotion profiles;
* `speech`: the source-filter signal model that speaks one utterance;
* `generator`: `SyntheticConfig` and `generate`, which writes (or finds cached) the WAV files,
  `manifest.csv` and `corpus.json`.
"""
