"""The version of slotrun: one number for the package, the API, the dashboard and the CLI.

Bump it at each release, and whenever the state under .slotrun/ changes format (a new
migration in app/migrations.py counts); say what changed for users in CHANGELOG.md.
"""

__version__ = "0.2.0"
