"""One module per ``metricattack`` subcommand.

Each module defines ``register(subparsers)`` which adds its parser and sets
``func`` to a callable ``(argparse.Namespace) -> int``. :mod:`metricattack.cli`
discovers the modules here, so adding a command means adding one file.
"""
