"""The exceptions of deniro: every user-facing mistake; the CLIs print its message and exit 2.

They are the conventional Python types too, so an application that catches what numpy and
transformers raise for bad arguments catches ours: a bad value is a `ValueError`, a wrong type a
`TypeError` (`DeniroTypeError`), and `except DeniroError` catches both.
"""

from __future__ import annotations


class DeniroError(ValueError):
    """A problem with the user's input or setup; the message names the problem and the fix."""


class DeniroTypeError(DeniroError, TypeError):
    """An argument of the wrong type (e.g. a number where a string was expected)."""


class TextError(DeniroError):
    """One of the texts is unusable (empty, no [MASK], too long, not valid Unicode); `index` is its place in
    the list the caller passed, so a CLI can name the line it came from."""

    def __init__(self, message: str, index: int):
        super().__init__(message)
        self.index = index

    def __reduce__(self):  # pickled whole (a Ray worker's error crosses processes); args holds only the message
        return type(self), (str(self), self.index)

    def naming(self, option: str) -> TextError:
        """The error as a surface that spells the runtime's options its own way shows it (TooLongError)."""
        return self


class TooLongError(TextError):
    """A text longer than the model's positions. The fix is the runtime's truncation=True, which the command
    line spells --truncation and an HTTP body "truncation": true: naming(option) gives the error in those words."""

    def __init__(self, problem: str, index: int, option: str = "truncation=True"):
        super().__init__(f"{problem}; shorten it, or pass {option} to keep a window around the masks", index)
        self.problem, self.option = problem, option

    def __reduce__(self):
        return type(self), (self.problem, self.index, self.option)

    def naming(self, option: str) -> TooLongError:
        return TooLongError(self.problem, self.index, option)


class CudaUnavailable(DeniroError):
    """ONNX Runtime lists CUDA, but a session does not start on it (a CUDA or cuDNN library missing, no GPU):
    device='cuda' fails with it, device='auto' runs on the CPU."""


class ArtifactError(DeniroError):
    """An exported artifact folder is missing, corrupted or does not match this runtime."""


EXIT_USAGE = 2
