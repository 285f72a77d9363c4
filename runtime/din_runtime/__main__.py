"""`python -m din_runtime` runs the din-runtime command line."""

from .cli import main

main(prog_name="din-runtime")
