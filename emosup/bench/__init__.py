"""Speed of emosup's pieces side by side with their references (`python -m emosup.bench`): one
module per row group (`fbank`, `kmeans`, `ecapa`, `embed`, `w2v2`, `pipeline`), the shared
timing and table code in `common`, SpeechBrain reference models in `reference`."""
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
