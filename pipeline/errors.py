"""The one exception type a user can cause.

Library code raises `UserError` with a message that names the file, row, column
or key and says what to do; only the command line turns it into `error: ...` and
exit status 2.
"""


class UserError(Exception):
    """A problem with the user's input (flags, data, checkpoints), not a bug."""
