"""What ``dicom.walk`` uses of the ``cython`` module, for running it interpreted without Cython.

Cython (a build requirement, not a runtime one) provides the same names when it is installed;
there the decorators are no-ops too. Types appear only in annotations, which are not evaluated.
"""

import builtins
from collections.abc import Callable
from typing import Any

compiled = False
# C types: named as arguments of ``declare`` and ``cast``; interpreted, they are Python ints
int = uint = longlong = ulonglong = Py_ssize_t = bint = builtins.int  # noqa: A001


def _same(function: Callable) -> Callable:
    return function


cfunc = ccall = inline = final = _same


def locals(**types: Any) -> Callable[[Callable], Callable]:  # noqa: A001  (Cython's name)
    return _same


def declare(kind: Any, value: Any = None) -> Any:
    return value


def cast(kind: Any, value: Any) -> Any:
    return value
