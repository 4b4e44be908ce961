"""The command-line tools; installed as the package `fixmatch_scripts` (see pyproject.toml, libml/commands.py)."""
