"""The one error type users see: a clear line saying what went wrong and how to fix it."""


class FirstEpochError(Exception):
    """Bad input or a fault the user can fix. The CLI prints it on one line and exits with 2.

    One line whatever it quotes: control characters in the message (a newline in a file's metadata, say) are
    shown escaped, as `repr` would."""

    def __str__(self) -> str:
        text = super().__str__()
        if text.isprintable():
            return text
        return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)
