"""The errors a user can fix, and how the command-line entry points report them.

Every error raised for a user's mistake — a bad manifest, an unreadable audio file, a broken
checkpoint or converted folder, a corpus folder in the wrong layout, a config value out of
range, a workdir made with another config — derives from `UserError`. The entry points
(`python -m emosup.<cmd>`) print such an error as one line,

    emosup.<cmd>: error: <what, where, how to fix>

and exit with status 2, without a traceback; `--verbose` shows the traceback. Anything else
is a bug and keeps its traceback.
"""
import contextlib
import sys


class UserError(ValueError):
    """A mistake the user can fix; the message says what, where and how."""


class ConfigError(UserError):
    """A config value that cannot work (raised before any work starts)."""


class ConversionError(UserError):
    """A weight file or its conversion is unusable; the message names every problem."""

    def __init__(self, message, missing=(), unused=(), mismatched=()):
        super().__init__(message)
        self.missing = list(missing)
        self.unused = list(unused)
        self.mismatched = list(mismatched)


@contextlib.contextmanager
def config_errors():
    """Turns the ValueErrors of a config validation into ConfigErrors (the validators check
    config values only, so every ValueError they raise is a config mistake)."""
    try:
        yield
    except UserError:
        raise
    except ValueError as e:
        raise ConfigError(str(e)) from e


def one_line(e):
    """The message of `e` on one line (continuation lines joined with '; ')."""
    lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
    return "; ".join(lines) or type(e).__name__


def report(command, e, file=None):
    print(f"emosup.{command}: error: {one_line(e)}", file=file or sys.stderr)


EXIT_USER_ERROR = 2


def _config_override_message(e):
    """ml_collections reports an unknown override field as AttributeError(KeyError("'lrr'\\n
    Did you mean ...")): the inner message, readable."""
    inner = e
    while inner.args and isinstance(inner.args[0], BaseException):
        inner = inner.args[0]
    text = inner.args[0] if isinstance(inner, KeyError) and inner.args else str(inner)
    lines = [ln.strip() for ln in str(text).splitlines() if ln.strip()]
    if any(ln.startswith("Traceback (most recent call last)") for ln in lines):
        # A config file's get_config raised: absl quotes the whole traceback; keep its last line.
        head, last = lines[0].split(":", 1)[0], lines[-1]
        return f"{head}: {last.split(': ', 1)[-1] if 'Error: ' in last else last}"
    if lines and isinstance(e, (AttributeError, KeyError)):
        return f"unknown config field {lines[0]}" + (f" ({' '.join(lines[1:])})" if lines[1:] else "")
    return "; ".join(lines) or type(e).__name__


def _config_doc(argv):
    """The docstring of the --config file named in argv (its arguments), read without running it."""
    import ast

    for i, a in enumerate(argv):
        path = a.split("=", 1)[1] if a.startswith("--config=") else (
            argv[i + 1] if a == "--config" and i + 1 < len(argv) else None)
        if path:
            path = path.split(":", 1)[0]
            try:
                with open(path, encoding="utf-8") as f:
                    return path, ast.get_docstring(ast.parse(f.read()))
            except (OSError, SyntaxError):
                return path, None
    return None, None


def run_cli(command, main):
    """`absl.app.run(main)` for `python -m emosup.<command>`, reporting UserErrors (and bad
    flags or config overrides) as one line with exit status 2; `--verbose` re-raises them.
    `--help` also prints the docstring of the --config file given, which lists its arguments."""
    from absl import app, flags

    flags.DEFINE_boolean("verbose", False, "Show the traceback of errors in the input (config, manifest, "
                         "audio, checkpoint, corpus) instead of one line.")

    def parse(argv):
        verbose = "--verbose" in argv
        if any(a in ("--help", "-h", "--helpshort", "--helpfull", "-?") for a in argv[1:]):
            path, doc = _config_doc(argv[1:])
            if doc:
                print(f"{path}:\n{doc}\n")
        try:
            return flags.FLAGS(argv)
        except flags.Error as e:
            if verbose:
                raise
            print(f"emosup.{command}: error: {_config_override_message(e)}\n"
                  "Pass --helpshort or --helpfull to see help on flags.", file=sys.stderr)
        except (AttributeError, KeyError, TypeError, ValueError) as e:  # --config.x=... overrides
            if verbose:
                raise
            print(f"emosup.{command}: error: {_config_override_message(e)}", file=sys.stderr)
        sys.exit(EXIT_USER_ERROR)

    def wrapped(argv):
        try:
            status = main(argv)
        except UserError as e:
            if flags.FLAGS.verbose:
                raise
            report(command, e)
            sys.exit(EXIT_USER_ERROR)
        if isinstance(status, int):
            sys.exit(status)

    app.run(wrapped, flags_parser=parse)
