"""The errors the tooling reports to an operator as one line (exit status 2), not a traceback.

OperatorError
├── ControlError       a running stack refused a request, or could not be reached
└── OperationFailed    a restart or scale could not be completed
"""

from __future__ import annotations

__all__ = ["OperatorError"]


class OperatorError(Exception):
    """Something the operator can act on; the message says what and how."""
