"""Turns a downloaded corpus folder into a CSV manifest.

Usage::

    python -m emosup.prepare CORPUS ROOT --out=manifest.csv [--option=value ...]
    python -m emosup.prepare --list
    python -m emosup.prepare CORPUS --help        # the options CORPUS accepts

CORPUS is one of `registry.CORPORA`; its reader is `emosup.data.corpora.<CORPUS>.read(root,
**options)`, imported only when asked for (readers import neither TensorFlow nor JAX, so this
is quick).
Every keyword option of the reader is a flag: ``--seed=3``, ``--all_classes`` (a bare flag is
True; ``--noall_classes`` / ``--all_classes=false`` is False), ``--fractions=0.8,0.1,0.1``;
dashes may stand for underscores. Values are converted by the type of the option's default
(bool, int, float, str, or a comma-separated tuple; ``none`` gives None where the default is
None). An option the corpus does not have stops with the list of those it does.

The manifest holds absolute audio paths (`manifest.write_manifest`); a summary (counts per
split, class and speaker, and every skipped file with the reason) goes to stdout. Exit status:
0 done, 1 the corpus could not be read (`CorpusError`, message names file and line) or gave no
usable utterance, 2 a usage error.
"""
from __future__ import annotations

import sys
from typing import Any, Dict, List, Optional, Sequence, Tuple

from emosup.data.corpora import registry

USAGE = ("usage: python -m emosup.prepare CORPUS ROOT --out=manifest.csv [--option=value ...]\n"
         "       python -m emosup.prepare --list\n"
         "       python -m emosup.prepare CORPUS --help")
_TRUE = ("1", "true", "yes", "on")
_FALSE = ("0", "false", "no", "off")


class UsageError(Exception):
    """A command line that cannot be run; the message says what to change."""


def _kind(default: Any) -> str:
    if isinstance(default, bool):
        return "bool"
    if isinstance(default, (tuple, list)):
        inner = _kind(default[0]) if default else "float"
        return f"{inner},..."
    if default is None:
        return "value or none"
    return type(default).__name__


def describe_options(corpus: str, options: Dict[str, Any]) -> str:
    if not options:
        return f"{corpus} takes no options"
    lines = [f"options of {corpus}:"]
    for k, v in options.items():
        shown = ",".join(map(str, v)) if isinstance(v, (tuple, list)) else v
        lines.append(f"  --{k}  ({_kind(v)}, default {shown})")
    return "\n".join(lines)


def _scalar(text: str, like: Any, flag: str) -> Any:
    """`text` converted to the type of `like` (None: int, float, else str)."""
    if isinstance(like, bool):
        t = text.strip().lower()
        if t in _TRUE:
            return True
        if t in _FALSE:
            return False
        raise UsageError(f"--{flag}: expected true or false, got {text!r}")
    if isinstance(like, int):
        try:
            return int(text)
        except ValueError:
            raise UsageError(f"--{flag}: expected an integer, got {text!r}") from None
    if isinstance(like, float):
        try:
            return float(text)
        except ValueError:
            raise UsageError(f"--{flag}: expected a number, got {text!r}") from None
    if like is None:
        if text.strip().lower() in ("", "none"):
            return None
        for cast in (int, float):
            try:
                return cast(text)
            except ValueError:
                pass
        return text
    return text


def convert(text: Optional[str], default: Any, flag: str) -> Any:
    """A flag's value (`None` for a bare `--flag`) converted by the type of its default."""
    if text is None:
        if isinstance(default, bool):
            return True
        raise UsageError(f"--{flag} needs a value: --{flag}=VALUE")
    if isinstance(default, (tuple, list)):
        like = default[0] if default else 0.0
        parts = [p for p in text.split(",") if p.strip()]
        return tuple(_scalar(p, like, flag) for p in parts)
    return _scalar(text, default, flag)


def parse_args(argv: Sequence[str]) -> Tuple[List[str], Dict[str, Optional[str]]]:
    """Positional arguments, and flags as name → raw value (None for a bare flag)."""
    positional: List[str] = []
    flags: Dict[str, Optional[str]] = {}
    only_positional = False
    for arg in argv:
        if only_positional or not arg.startswith("-") or arg == "-":
            positional.append(arg)
        elif arg == "--":
            only_positional = True
        else:
            body = arg.lstrip("-")
            name, eq, value = body.partition("=")
            name = name.replace("-", "_")
            if not name:
                raise UsageError(f"cannot read the argument {arg!r}")
            if name in flags:
                raise UsageError(f"--{name} is given twice")
            flags[name] = value if eq else None
    return positional, flags


def reader_options(corpus: str, options: Dict[str, Any],
                   flags: Dict[str, Optional[str]]) -> Dict[str, Any]:
    """Flags (minus `out`) mapped onto the reader's keyword options."""
    chosen: Dict[str, Any] = {}
    for name, raw in flags.items():
        if name in options:
            chosen[name] = convert(raw, options[name], name)
        elif name.startswith("no") and raw is None and isinstance(options.get(name[2:]), bool):
            chosen[name[2:]] = False  # absl style --noflag
        else:
            raise UsageError(f"{corpus} has no option --{name}\n"
                             + describe_options(corpus, options))
    return chosen


def run(corpus: str, root: str, out: str, options: Dict[str, Any]) -> int:
    """Reads the corpus, writes the manifest, prints the summary; returns the exit status."""
    from emosup.data import manifest as manifest_lib
    from emosup.data.corpora import common

    read = registry.reader_for(corpus)
    try:
        prepared = read(root, **options)
    except common.CorpusError as e:
        print(f"emosup.prepare: cannot read {corpus} at {root}: {e}", file=sys.stderr)
        return 1
    except ValueError as e:  # the reader refused an option value (e.g. sessions clash)
        print(f"emosup.prepare: invalid {corpus} options: {e}", file=sys.stderr)
        return 2
    print(common.summary(prepared))
    if not prepared.utterances:
        print(f"emosup.prepare: no usable utterances in {root}; nothing written",
              file=sys.stderr)
        return 1
    path = manifest_lib.write_manifest(prepared.utterances, out)
    print(f"wrote {len(prepared.utterances)} rows to {path}")
    return 0


def main(argv: Sequence[str]) -> int:
    """The command line without the program name; returns the exit status."""
    try:
        positional, flags = parse_args(argv)
        if "list" in flags:
            print("\n".join(registry.CORPORA))
            return 0
        wants_help = "help" in flags or "h" in flags
        if not positional:
            if wants_help:
                print(USAGE)
                print(f"corpora: {', '.join(registry.CORPORA)}")
                return 0
            raise UsageError("missing CORPUS and ROOT")
        corpus = positional[0]
        options = registry.options_of(registry.reader_for(corpus))
        if wants_help:
            print(USAGE)
            print(describe_options(corpus, options))
            return 0
        if len(positional) != 2:
            raise UsageError(f"expected CORPUS ROOT, got {len(positional)} positional "
                             f"argument(s): {' '.join(positional)}")
        out = flags.pop("out", None)
        if not out:
            raise UsageError("--out=manifest.csv is required")
        chosen = reader_options(corpus, options, flags)
        return run(corpus, positional[1], out, chosen)
    except (UsageError, registry.UnknownCorpusError) as e:
        print(f"emosup.prepare: {e}\n{USAGE}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
