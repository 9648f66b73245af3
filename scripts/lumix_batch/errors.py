"""The three ways something goes wrong in a batch, each ending in one line for the user."""


class ClientError(Exception):
    """Fatal for the whole run (bad input, bad workflow, no server at all): reported as one line."""


class ServerFailure(Exception):
    """The server misbehaved (down, 5xx, a garbled or cut-off body, a closed websocket, silence):
    the job goes back to the queue and the server is retried later with backoff."""


class JobFailure(Exception):
    """The server ran the job and it failed (a node raised): retried, then recorded as failed."""


class Rejected(Exception):
    """The server refused the workflow (a missing model file or node): that server is of no use."""


class Cancelled(Exception):
    """The run is stopping (Ctrl-C, a fatal error elsewhere, the overall timeout)."""
