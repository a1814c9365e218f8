"""How long to wait before replacing a worker that stopped unasked."""

from __future__ import annotations

__all__ = ["RestartPause"]


class RestartPause:
    """Seconds to wait before replacing a worker that stopped unasked.

    The pause doubles from :attr:`FIRST` up to :attr:`LONGEST` while workers
    keep stopping soon after they start (Redis down for a while), and is back
    to :attr:`FIRST` once a worker has run :attr:`HEALTHY` seconds: a stop
    after a healthy run is a new incident, not the last one going on.
    """

    #: Seconds of the first pause, and of the first after a healthy run.
    FIRST = 1.0
    #: Seconds of the longest pause: the doubling stops here.
    LONGEST = 30.0
    #: Seconds a worker must have run for its stop to count as a new incident.
    HEALTHY = 60.0

    def __init__(self) -> None:
        self._next = self.FIRST

    def after_run(self, seconds: float) -> float:
        """The pause after a worker that ran ``seconds`` stopped unasked."""
        if seconds >= self.HEALTHY:
            self._next = self.FIRST
        pause = self._next
        self._next = min(pause * 2, self.LONGEST)
        return pause
