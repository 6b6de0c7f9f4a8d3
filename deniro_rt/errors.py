"""One exception type for every user-facing mistake: the CLIs print its message and exit 2."""


class DeniroError(Exception):
    """A problem with the user's input or setup; the message names the problem and the fix."""


class ArtifactError(DeniroError):
    """An exported artifact folder is missing, corrupted or does not match this runtime."""


EXIT_USAGE = 2
