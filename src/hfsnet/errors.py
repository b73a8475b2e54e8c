"""The base of every error a user can fix by changing their input."""


class HfsnetError(ValueError):
    """Bad input (a flag, file or dataset). The message names it and says what was expected;
    the CLI prints it as one line and exits with status 2."""
