"""Errors the CLI prints as one line, without a traceback: the user's to fix, or a stage that finished
with failures it has recorded."""


class UserError(Exception):
    """Bad input (file, line, field, flag); the message names where and what. Exit status 2."""


class StageFailed(Exception):
    """A stage ran to the end but some of its work failed (recorded in the store, retried by a rerun); the
    message is a one-line summary. Exit status 1, so scripts and job runners see the failure."""
