"""The one base class of user mistakes: what the scripts print as one line instead of a traceback."""


class UserError(ValueError):
    """A mistake the user can fix (a flag, a file, a folder); the message names it and the fix.

    Every module's own error (DatasetError, ExpansionError, ...) derives from this, so a script
    catches one class (distdiff.cli.user_errors) and anything else stays a bug with its traceback.
    """
