"""A small Result type: an operation's value (``Ok``) or its error (``Err``).

Builders return a ``Result`` instead of raising, so a caller can collect or
report spec problems without try/except around every step; ``unwrap()`` turns
it back into the usual raise-on-error style.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from typing import Generic, NoReturn, TypeVar

from hermetic.core.errors import HermeticError

__all__ = ["Err", "Ok", "Result", "capture"]

T = TypeVar("T")


class Result(ABC, Generic[T]):
    """Either :class:`Ok` (holding a value) or :class:`Err` (holding an exception)."""

    __slots__ = ()

    @abstractmethod
    def is_ok(self) -> bool:
        """True for :class:`Ok`."""

    def is_err(self) -> bool:
        """True for :class:`Err`."""
        return not self.is_ok()

    @abstractmethod
    def unwrap(self) -> T:
        """The value; on :class:`Err`, raises the carried exception itself."""

    @abstractmethod
    def unwrap_err(self) -> BaseException:
        """The carried exception; on :class:`Ok`, raises :class:`HermeticError`."""

    @abstractmethod
    def unwrap_or(self, default: T) -> T:
        """The value, or ``default`` on :class:`Err`."""


@dataclass(frozen=True)
class Ok(Result[T]):
    """A successful result."""

    value: T

    def __repr__(self) -> str:
        return f"Ok({self.value!r})"

    def is_ok(self) -> bool:
        return True

    def unwrap(self) -> T:
        return self.value

    def unwrap_err(self) -> NoReturn:
        raise HermeticError(f"unwrap_err() on Ok({self.value!r})")

    def unwrap_or(self, default: T) -> T:
        return self.value


@dataclass(frozen=True)
class Err(Result[T]):
    """A failed result carrying the exception that describes the failure."""

    error: BaseException

    def __repr__(self) -> str:
        return f"Err({self.error!r})"

    def is_ok(self) -> bool:
        return False

    def unwrap(self) -> NoReturn:
        raise self.error

    def unwrap_err(self) -> BaseException:
        return self.error

    def unwrap_or(self, default: T) -> T:
        return default


def capture(fn: Callable[[], T]) -> Result[T]:
    """Run ``fn`` and wrap its outcome.

    Only :class:`HermeticError` becomes :class:`Err`; anything else is a bug
    or an interrupt, not an expected failure, so it propagates.
    """
    try:
        return Ok(fn())
    except HermeticError as exc:
        return Err(exc)
