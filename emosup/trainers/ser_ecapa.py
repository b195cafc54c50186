"""The ECAPA-TDNN in SER fine-tuning (`run`, through `ser.fit`): a SerHead on the utterance
embedding; the loss is the SER loss alone; dev and test utterances are embedded whole
(`embed_paths`); the best variables are exported with the head for `emosup.predict`."""
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
from flax.training import train_state

from emosup import audio, checkpoint, errors, metrics
from emosup.models.encoders import Encoder, build_encoder, ecapa_model_config, embed_paths, shortest_input
from emosup.models.heads import SerHead
from emosup.trainers import loop, ser


class FinetuneState(train_state.TrainState):
    batch_stats: dict


def init_encoder(config):
    """(model_config, variables) of `config.init`, or of a fresh `config.model.preset` (None)."""
    if config.init:
        return checkpoint.load_encoder_variables(config.init)
    return dict(ecapa_model_config(config.model.preset), source="scratch"), None


def evaluate(encoder, head, head_params, rows, classes, target, batch_per_device=8):
    """Scores rows (full utterances) → dict of metrics, confusion matrix, probabilities."""
    emb, _, valid = embed_paths(encoder, [u.path for u in rows], batch_per_device=batch_per_device,
                                progress="evaluate")
    logits, dims = head.apply({"params": head_params}, jnp.asarray(np.nan_to_num(emb)))
    out = ser.scores(logits, dims, valid, rows, classes)
    if logits is not None:
        out["probabilities"] = np.asarray(jax.nn.softmax(logits, -1))[valid]
    return out


class EcapaSer:
    """The ECAPA-TDNN of `config.init` (or a fresh `config.model.preset`) and its SerHead."""

    what, log_name = "fine-tuning", "finetune"
    results_extra = {}

    def __init__(self, config):
        with errors.config_errors():
            ser.validate(config)
        self.config = config

    def build(self, corpus, classes, n_classes, n_dims, crop, key, skip_log):
        del corpus, skip_log
        config = self.config
        self.classes, self.target, self.n_classes, self.n_dims = classes, config.ser.target, n_classes, n_dims
        self.model_config, init_vars = init_encoder(config)
        # What was actually loaded (the weights' fingerprint), not only the path the config names.
        loaded = (checkpoint.describe_encoder(config.init, self.model_config, init_vars) if config.init else
                  {"source": "scratch", "preset": config.model.preset})
        self.start = {"init": config.init or "scratch", "init_encoder": loaded}
        self.encoder = build_encoder(self.model_config, kinds=("ecapa",))
        self.head = SerHead(num_classes=n_classes, num_dims=n_dims, hidden=config.ser.head_hidden)
        k_enc, k_head = jax.random.split(jax.random.fold_in(key, 1))
        if init_vars is None:
            init_vars = self.encoder.init(k_enc, jnp.zeros((1, 1 + crop // audio.HOP, 80)), None, train=False)
        self.params = {"encoder": init_vars["params"],
                       "ser_head": self.head.init(k_head, jnp.zeros((1, self.encoder.lin_neurons)))["params"]}
        self.stats = {"encoder": init_vars.get("batch_stats", {})}
        self.eval_encoder = Encoder(model_config=self.model_config, variables=None,
                                    name=self.model_config.get("source"))

    def initial_state(self):
        tx = ser.optimizer(self.config, {"encoder": "encoder", "ser_head": "ser_head"},
                           encoder="encoder", head="ser_head")
        return FinetuneState.create(apply_fn=self.head.apply, params=self.params, tx=tx, batch_stats=self.stats)

    def train_step(self, class_w, mesh):
        """`(step, state, batch) → (state, metrics)`: before `ser.freeze_steps` the encoder runs
        in inference mode (running statistics, no gradient), then it trains."""
        encoder, head = self.encoder, self.head

        def make_step(frozen):
            def loss_fn(params, batch_stats, batch):
                feats, n_valid = audio.utterance_features(batch["audio"], batch["lengths"])
                v = {"params": params["encoder"], "batch_stats": batch_stats["encoder"]}
                if frozen:
                    emb, new = jax.lax.stop_gradient(encoder.apply(v, feats, n_valid, train=False)), batch_stats
                else:
                    emb, upd = encoder.apply(v, feats, n_valid, train=True, mutable=["batch_stats"])
                    new = {"encoder": upd["batch_stats"]}
                logits, dims = head.apply({"params": params["ser_head"]}, emb)
                return ser.ser_loss(logits, dims, batch, class_w), new

            def step(state, batch):
                (loss, new), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params, state.batch_stats,
                                                                               batch)
                return state.apply_gradients(grads=grads, batch_stats=new), {"loss": loss}

            return loop.jit_step(step, mesh)

        steps, freeze = {True: make_step(True), False: make_step(False)}, int(self.config.ser.freeze_steps)
        return lambda step, state, batch: steps[step < freeze](state, batch)

    def shortest_input(self):
        return shortest_input(self.encoder)

    def pair_batches(self, common):
        return None

    def host_variables(self, state):
        return jax.device_get({"params": state.params, "batch_stats": state.batch_stats})

    def evaluate(self, host, rows):
        self.eval_encoder.variables = {"params": host["params"]["encoder"],
                                       "batch_stats": host["batch_stats"]["encoder"]}
        return evaluate(self.eval_encoder, self.head, host["params"]["ser_head"], rows, self.classes, self.target)

    def export(self, workdir, best, test, calibration):
        """confusion.png, and the best variables with model.json (encoder + head) for predict."""
        config = self.config
        if self.n_classes:
            metrics.plot_confusion_matrix(np.array(test["confusion"]), self.classes, workdir / "confusion.png",
                                          title=f"test, init={pathlib.Path(config.init).name or 'scratch'}")
        ser_config = dict(self.model_config, ser={"classes": self.classes if self.n_classes else [],
                                                  "dimensions": list(ser.DIMENSIONS) if self.n_dims else [],
                                                  "head_hidden": config.ser.head_hidden,
                                                  "temperature": calibration["temperature"],
                                                  "calibration": calibration})
        if not (workdir / "variables").exists():
            checkpoint.export_encoder(workdir, ser_config,
                                      {"params": best["params"], "batch_stats": best["batch_stats"]})


def run(config, workdir, corpus=None):
    """SER fine-tuning of the ECAPA-TDNN of `config.init` (or a fresh `config.model.preset`):
    ser.fit with this encoder; returns the results.json dict."""
    return ser.fit(EcapaSer(config), config, workdir, corpus)
