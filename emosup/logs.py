"""Log set-up for the command-line entry points: emosup's INFO lines, libraries' warnings."""
import logging as std_logging

from absl import logging

# Orbax logs every save/restore step at INFO, and JAX says at INFO that it found no TPU on
# every machine without one; keep their warnings and errors only.
_QUIET = ("/orbax/", "/tensorstore/", "/jax/_src/xla_bridge.py")


class _QuietLibraries(std_logging.Filter):
    def filter(self, record):
        return record.levelno >= std_logging.WARNING or not any(s in record.pathname for s in _QUIET)


def setup():
    logging.set_verbosity(logging.INFO)
    std_logging.getLogger("absl").setLevel(std_logging.INFO)
    handler = logging.get_absl_handler()
    if not any(isinstance(f, _QuietLibraries) for f in handler.filters):
        handler.addFilter(_QuietLibraries())


def quiet_other_processes():
    """Only process 0 of a multi-host job logs progress; the others keep warnings and errors."""
    import jax

    if jax.process_index() > 0:
        logging.set_verbosity(logging.WARNING)
        std_logging.getLogger("absl").setLevel(std_logging.WARNING)


class Summaries:
    """TensorBoard event files in WORKDIR/tensorboard (`tensorboard --logdir WORKDIR`), written
    by process 0 only; `scalars(step, {name: value})` skips values that are not numbers."""

    def __init__(self, workdir):
        import pathlib

        import jax

        self.tb = None
        if jax.process_index() == 0:
            from emosup.data import pipeline

            tf = pipeline._tf()
            self.tb = tf.summary.create_file_writer(str(pathlib.Path(workdir) / "tensorboard"))

    def scalars(self, step, scalars):
        if self.tb is None:
            return
        import numbers

        import tensorflow as tf

        with self.tb.as_default():
            for k, v in scalars.items():
                if isinstance(v, numbers.Number) or (hasattr(v, "shape") and v.shape == ()):
                    tf.summary.scalar(k, float(v), step=step)
        self.tb.flush()
