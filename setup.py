"""emosup: speech emotion recognition from unlabelled speech, in JAX/Flax."""
from setuptools import find_packages, setup

setup(
    name="emosup",
    version="0.1.0",
    description=(
        "Intra-speaker contrastive pretraining for speech emotion recognition "
        "(JAX/Flax ECAPA-TDNN, clustering study, SER fine-tuning)."
    ),
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    python_requires=">=3.11",
    packages=find_packages(include=["emosup", "emosup.*"]),
    install_requires=[
        "jax>=0.8",
        "flax>=0.10",
        "optax>=0.2.4",
        "orbax-checkpoint>=0.11",
        "ml-collections>=1.0",
        "absl-py",
        "numpy",
        "scipy",
        "librosa>=0.10",
        "soundfile",
        "scikit-learn",
        "threadpoolctl",  # thread limits for scikit-learn's OpenMP work (installed with scikit-learn)
        "tensorflow-cpu>=2.16",
        "tensorflow-datasets",
        "pyyaml",
        "safetensors",  # reading HF .safetensors checkpoints without torch
        "tensorboard",  # TensorBoard summaries (tf.summary needs it)
        "tqdm",
        "matplotlib",
    ],
    extras_require={
        # Reference implementations the tests compare against. torch is pinned to
        # the CPU build that pip finds locally; see launch/setup.sh for the
        # torchaudio fix speechbrain needs beside it.
        "test": [
            "pytest",
            "pytest-xdist",  # the suite runs in 2 worker processes (-n 2): it is mostly single-threaded
            "torch==2.13.0",
            "speechbrain",
            "transformers",
        ],
    },
)
