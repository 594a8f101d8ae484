"""The base of every error a user must act on: a bad config, corpus, tokenizer, URI or command line, or a
version whose files fail their manifest. Its message is one line, and a retry fails the same way, so the
flow never retries one (``retryable`` in flows/staged.py) and the command line prints it as it is.

Each subclass also keeps its standard base (``class ConfigError(UserError, ValueError)``): code that
catches ``ValueError`` or ``FileNotFoundError`` still catches it.
"""


class UserError(Exception):
    """A mistake in what the user gave (or a tampered version): one line, never retried."""
