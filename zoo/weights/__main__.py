"""``python -m zoo.weights <command> ...``: one argparse subparser per command.

A command lives in its own module of this package and provides ``register(subparsers)``, which adds its
subparser and sets ``func`` (``args -> exit status``) as a default; add its module name to ``COMMANDS``.
"""
import argparse
import importlib
import sys
from typing import List, Optional

COMMANDS = ('export', 'convert', 'onnx')


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog='python -m zoo.weights', description=__doc__.split('\n\n')[0])
    subparsers = parser.add_subparsers(dest='command', required=True, metavar='COMMAND')
    for name in COMMANDS:
        importlib.import_module(f'zoo.weights.{name}').register(subparsers)
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except (TypeError, ValueError) as e:  # the argument and file checks raise these, naming what is wrong
        parser.exit(2, f'python -m zoo.weights {args.command}: error: {e}\n')


if __name__ == '__main__':
    sys.exit(main())
