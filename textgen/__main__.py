"""`python -m textgen` runs the command-line interface."""

from textgen.cli import entry

entry()
