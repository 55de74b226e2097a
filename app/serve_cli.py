"""Sub-commands of python -m app other than multi-run."""


def add_commands(sub):
    """Add the serve / users / token sub-commands to an argparse sub-parser set."""
