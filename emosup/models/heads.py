"""Small heads on top of an utterance embedding [B, D]."""
import flax.linen as nn


class ProjectionHead(nn.Module):
    """Contrastive projection (SimCLR-style Dense → ReLU → Dense): [B, D] → [B, features].

    The contrastive loss acts on the projection, so the embedding below it keeps what the
    loss would otherwise squeeze out (Chen et al. 2020, SimCLR §4.2).
    """

    hidden: int = 256
    features: int = 128

    @nn.compact
    def __call__(self, x):
        x = nn.relu(nn.Dense(self.hidden, name="dense_0")(x))
        return nn.Dense(self.features, name="dense_1")(x)


class SerHead(nn.Module):
    """Emotion head on an utterance embedding [B, D].

    Returns (logits [B, num_classes] or None, dimensions [B, num_dims] or None): a
    categorical classifier and/or an arousal/valence/dominance regressor, on a shared
    optional hidden layer (hidden=0: linear heads).
    """

    num_classes: int = 0
    num_dims: int = 0
    hidden: int = 0

    @nn.compact
    def __call__(self, x):
        if self.hidden:
            x = nn.relu(nn.Dense(self.hidden, name="hidden")(x))
        logits = nn.Dense(self.num_classes, name="classifier")(x) if self.num_classes else None
        dims = nn.Dense(self.num_dims, name="regressor")(x) if self.num_dims else None
        return logits, dims
