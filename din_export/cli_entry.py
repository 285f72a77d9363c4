"""`python -m din_export.cli_entry` runs the CLI; torchrun starts it this way (`-m din_export.cli_entry`)."""

from .cli import main

if __name__ == "__main__":
    main()
