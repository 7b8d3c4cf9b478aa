"""The exception hierarchy. Each surface maps these to messages in one place
(the CLI in `commands/__init__.py`, the server in `server/app.py`).

    ModelManagerError                 anything we raise on purpose; message says what to fix
    ├── UsageError                    bad arguments or settings            CLI exit 2 / HTTP 400
    │   └── PathError                 path missing / not a dir / unreadable CLI exit 2 / HTTP 400
    ├── ValidationError               input understood but not acceptable  CLI exit 1 / HTTP 400
    │   └── DuplicateSymbolError      one symbol in several groups         CLI exit 1 / HTTP 400
    ├── NotFoundError                 unknown model / symbol               CLI exit 2 / HTTP 404
    ├── ConflictError                 name taken, already initialized      CLI exit 1 / HTTP 409
    ├── UnprocessableError            group has errors, payload blocked    CLI exit 1 / HTTP 422
    │   └── DamagedDataError          stored bytes fail their hash check   CLI exit 1 / HTTP 422
    ├── AuthError                     wrong password / bad token           CLI exit 1 / HTTP 401
    │   └── ForbiddenError            authenticated but not allowed        CLI exit 1 / HTTP 403
    ├── ThrottledError                too many failures; .retry_after      CLI exit 1 / HTTP 429
    └── ArtifactError                 an artifact file cannot be used (becomes a group issue)
        └── UnsafePickleError         the pickle references a global outside the allow-list
"""
from __future__ import annotations


class ModelManagerError(Exception):
    """Base class: `str(exc)` is a one-line message that says what to fix."""

    exit_code = 1
    status_code = 400


class UsageError(ModelManagerError):
    exit_code = 2
    status_code = 400


class PathError(UsageError):
    pass


class ValidationError(ModelManagerError):
    exit_code = 1
    status_code = 400


class DuplicateSymbolError(ValidationError):
    def __init__(self, duplicates: dict[str, list[str]]):
        self.duplicates = duplicates
        parts = [f"symbol {sym} is in several groups ({', '.join(groups)})" for sym, groups in sorted(duplicates.items())]
        super().__init__("; ".join(parts) + ": keep one group per symbol in a model directory")


class NotFoundError(ModelManagerError):
    exit_code = 2
    status_code = 404


class ConflictError(ModelManagerError):
    status_code = 409


class UnprocessableError(ModelManagerError):
    status_code = 422


class DamagedDataError(UnprocessableError):
    """Bytes we stored (a version's payload) no longer match their hash: never served."""


class AuthError(ModelManagerError):
    status_code = 401


class ForbiddenError(AuthError):
    status_code = 403


class ThrottledError(ModelManagerError):
    status_code = 429

    def __init__(self, message: str, retry_after: int):
        super().__init__(message)
        self.retry_after = retry_after


class ArtifactError(ModelManagerError):
    """An artifact cannot be used. `code` is the issue code shown to users."""

    def __init__(self, message: str, code: str = "unreadable"):
        super().__init__(message)
        self.code = code


class UnsafePickleError(ArtifactError):
    def __init__(self, global_name: str):
        self.global_name = global_name
        super().__init__(
            f"refused to unpickle: it references {global_name}, which is not on the allow-list "
            "(only xgboost, numpy, pandas and datetime types are loaded)",
            code="unsafe_pickle",
        )
