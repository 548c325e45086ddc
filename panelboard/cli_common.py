"""What every command shares: the virtual-key options and the error a user must fix. Both the
CLI and its command modules (batch, governance) import it, so neither imports the other."""

from __future__ import annotations

import argparse
import os
import sys

KEY_ENV = "PANELBOARD_KEY"


class CliError(Exception):
    """Something the user must fix: the message says what (and how), printed without a traceback."""


def add_key_options(p: argparse.ArgumentParser, what: str) -> None:
    p.add_argument("--key-file", metavar="FILE", help=f"read the virtual key {what} from this file (or set ${KEY_ENV})")
    p.add_argument("--key", help=f"the virtual key {what}, on the command line: visible in `ps` to every user of the machine; "
                                 f"prefer ${KEY_ENV} or --key-file")


def resolve_key(a: argparse.Namespace) -> str | None:
    """--key-file, else --key (with a warning: argv is public), else $PANELBOARD_KEY."""
    if getattr(a, "key_file", None):
        try:
            with open(a.key_file) as f:
                key = f.read().strip()
        except OSError as e:
            raise CliError(f"cannot read the key file {a.key_file}: {e.strerror}\nhint: a file holding the key on one line") from None
        if not key:
            raise CliError(f"the key file {a.key_file} is empty\nhint: a file holding the key on one line")
        return key
    if getattr(a, "key", None):
        print(f"warning: --key puts the key in the process list (`ps`) for every user of this machine; "
              f"set ${KEY_ENV} or use --key-file instead", file=sys.stderr)
        return a.key
    return os.environ.get(KEY_ENV) or None
