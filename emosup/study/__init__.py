"""The clustering study: do speaker embeddings cluster by emotion within each speaker?

``run`` (embed a split, cluster, score), ``agreement`` (cluster/label agreement metrics),
``report`` (tables, Markdown, pictures); ``python -m emosup.study`` is the command.
"""
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # before anything imports TensorFlow
