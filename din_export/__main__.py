"""`python -m din_export` runs the din-export command line; torchrun starts it this way (`-m din_export`)."""

from .cli import main

main(prog_name="din-export")
