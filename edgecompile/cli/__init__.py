"""The ``edgecompile`` command line: thin wrappers over the Python API of the same names.

Each command parses its options, calls one library function and prints the result; every
:class:`~edgecompile.errors.EdgecompileError` is caught once, in :func:`main`.

Layout (no module imports back up the tree):
  options.py   the shared options, their help texts, the board options (-> BoardAccess),
               print_json: a leaf, the only module of this package commands import
  app.py       the top-level group: adds every command, and main() (the console script)
  zoo.py       models, inspect, export          targets.py   targets
  build.py     build                            run.py       run (here or on a board)
  deploy.py    deploy                           bench.py     bench
  profile.py   profile                          report.py    report
  tune.py      tune                             records.py   records list|show|export|import
  device.py    device setup|emulate|status|stop
"""

from __future__ import annotations

from edgecompile.cli.app import cli, main

__all__ = ["cli", "main"]
