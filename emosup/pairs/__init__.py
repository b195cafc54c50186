"""Intra-speaker pairs for contrastive pretraining.

``packing`` lays speakers out for the devices, ``kernels`` and ``kmeans`` cluster them
(batched, sharded per-speaker k-means and the per-speaker silhouette), ``table`` defines a
pair table, ``build`` makes one from embeddings, ``service`` makes them from an encoder,
rebuilds them during training and keeps them in checkpoints.
"""
