"""The one error type of slotrun, rendered as JSON, a page, or a CLI line."""


class SlotrunError(Exception):
    """A problem the user can fix; the message names what would have been valid."""

    status = 400

    def __init__(self, message, status=None):
        super().__init__(message)
        self.message = message
        if status is not None:
            self.status = status

    def __str__(self):
        return self.message


class NotFound(SlotrunError):
    """Something named by id or path does not exist (or may not be seen)."""

    status = 404


class Conflict(SlotrunError):
    """The request is valid but the current state forbids it."""

    status = 409


class Forbidden(SlotrunError):
    """The caller is known but may not do this."""

    status = 403


class Unauthorized(SlotrunError):
    """The caller is not known."""

    status = 401


class StoreUnavailable(SlotrunError):
    """The state database cannot be written now (locked by another process, disk full, read-only)."""

    status = 503


class WorkspaceLocked(SlotrunError):
    """Another engine already runs on this workspace."""

    status = 409
