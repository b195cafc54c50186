"""Log set-up for the command-line entry points: emosup's INFO lines, libraries' warnings."""
import logging as std_logging

from absl import logging

# Orbax logs every save/restore step at INFO; keep its warnings and errors only.
_QUIET = ("/orbax/", "/tensorstore/")


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
