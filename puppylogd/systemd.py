"""Talk to systemd's service manager: readiness, status, watchdog, stop and reload notices.

A thin wrapper over :mod:`sdnotify`. Without ``NOTIFY_SOCKET`` (not started by systemd, or
``Type=`` is not ``notify``) every method is a silent no-op, so callers never need to check.
Sending never raises: a failed notification is logged at debug level and otherwise ignored,
because losing a status line must not take the daemon down.
"""

from __future__ import annotations

import os
import socket
import time
import warnings

import sdnotify
import structlog

from puppylogd.logs import mask_dsn

log = structlog.stdlib.get_logger(__name__)

# A datagram send to the notify socket only blocks when systemd's queue is full; bound it so a
# stuck manager cannot stall the event loop for long.
_SEND_TIMEOUT_S = 1.0


def _socket_address(raw: str | None) -> str | None:
    """Return the connectable address for a ``NOTIFY_SOCKET`` value, or None if unusable."""
    # sd_notify accepts only absolute paths and abstract names ("@name"); anything else
    # (e.g. vsock addresses from newer systemd) is not for us.
    if not raw or len(raw) < 2 or raw[0] not in "/@":
        return None
    return raw


class Systemd:
    """Send sd_notify(3) messages to systemd; a no-op when no notify socket is configured.

    Prefer the process-wide instance from :func:`get_systemd`. Construction removes
    ``NOTIFY_SOCKET`` from the environment (like ``sd_notify(unset_environment=1)``) so child
    processes such as the embedded PostgreSQL server cannot send READY=1 on our behalf;
    create the instance before starting children.
    """

    def __init__(self) -> None:
        """Connect to ``$NOTIFY_SOCKET`` if set; remember the address for reconnects."""
        self._address = _socket_address(os.environ.get("NOTIFY_SOCKET"))
        self._notifier: sdnotify.SystemdNotifier | None = None
        if self._address is not None:
            # sdnotify reads NOTIFY_SOCKET itself and maps a leading "@" to the abstract
            # namespace, so it must be constructed before the variable is removed. When the
            # connect fails it drops its socket without closing it; silence that warning.
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", ResourceWarning)
                self._notifier = sdnotify.SystemdNotifier(debug=False)
            # From now on sdnotify re-raises send errors instead of swallowing them, so a
            # failure can trigger one reconnect and be logged here.
            self._notifier.debug = True
            if self._notifier.socket is None:
                log.debug("systemd notify socket not connectable", address=self._address)
            else:
                self._notifier.socket.settimeout(_SEND_TIMEOUT_S)
        os.environ.pop("NOTIFY_SOCKET", None)

    @property
    def available(self) -> bool:
        """Return whether notifications go anywhere (``NOTIFY_SOCKET`` was usable)."""
        return self._address is not None

    def notify(self, state: str) -> bool:
        """Send one raw notification such as ``"READY=1"``; return whether it was sent."""
        if self._address is None or self._notifier is None:
            return False
        # sdnotify encodes with latin-1; systemd expects UTF-8. Round-tripping through
        # latin-1 makes sdnotify emit exactly the UTF-8 bytes.
        payload = state.encode("utf-8", "replace").decode("latin-1")
        for attempt in (1, 2):
            try:
                if self._notifier.socket is None:
                    self._reconnect()
                self._notifier.notify(payload)
                return True
            except Exception as exc:
                # A datagram peer that went away (e.g. systemd re-created the socket)
                # refuses sends on the old connection; one fresh connect fixes that.
                if attempt == 2:
                    log.debug("systemd notification failed", state=state[:64], error=str(exc))
                else:
                    self._drop_socket()
        return False

    def close(self) -> None:
        """Close the notify socket; later notifications reconnect on demand."""
        self._drop_socket()

    def _drop_socket(self) -> None:
        if self._notifier is not None and self._notifier.socket is not None:
            self._notifier.socket.close()
            self._notifier.socket = None

    def _reconnect(self) -> None:
        assert self._address is not None and self._notifier is not None
        address = self._address
        if address.startswith("@"):
            address = "\0" + address[1:]
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
        try:
            sock.settimeout(_SEND_TIMEOUT_S)
            sock.connect(address)
        except OSError:
            sock.close()
            raise
        self._notifier.socket = sock

    def ready(self, status: str | None = None) -> None:
        """Tell systemd that start-up finished (and optionally set the status line)."""
        self.notify("READY=1" if status is None else f"READY=1\nSTATUS={_one_line(status)}")

    def status(self, text: str) -> None:
        """Set the status line shown by ``systemctl status`` (one line, passwords masked)."""
        self.notify(f"STATUS={_one_line(text)}")

    def watchdog_ping(self) -> None:
        """Reset the watchdog timer; call at least every ``watchdog_period() / 2`` seconds."""
        self.notify("WATCHDOG=1")

    def stopping(self) -> None:
        """Tell systemd that an orderly shutdown has begun."""
        self.notify("STOPPING=1")

    def reloading(self) -> None:
        """Tell systemd that a configuration reload has begun; call :meth:`ready` after."""
        # MONOTONIC_USEC is required by Type=notify-reload (systemd >= 253) and harmless
        # for Type=notify, so the unit can switch types without code changes.
        usec = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        self.notify(f"RELOADING=1\nMONOTONIC_USEC={usec}")

    def extend_timeout(self, seconds: float) -> None:
        """Ask for ``seconds`` more before a start or stop timeout hits."""
        self.notify(f"EXTEND_TIMEOUT_USEC={max(0, int(seconds * 1_000_000))}")

    def watchdog_period(self) -> float | None:
        """Return the watchdog timeout in seconds, or None if it is not enabled for us.

        Follows sd_watchdog_enabled(3): ``WATCHDOG_USEC`` must be a positive integer, and if
        ``WATCHDOG_PID`` is set it must name this process (children inherit the variables).
        """
        raw_usec = os.environ.get("WATCHDOG_USEC")
        if raw_usec is None:
            return None
        try:
            usec = int(raw_usec)
        except ValueError:
            return None
        if usec <= 0:
            return None
        raw_pid = os.environ.get("WATCHDOG_PID")
        if raw_pid is not None:
            try:
                pid = int(raw_pid)
            except ValueError:
                return None
            if pid != os.getpid():
                return None
        return usec / 1_000_000


def _one_line(text: str) -> str:
    # A newline would start a new KEY=VALUE assignment in the notification; the status is
    # world-readable (`systemctl status`), so DSN passwords are masked here too.
    return mask_dsn(" ".join(text.splitlines()))


_SYSTEMD: Systemd | None = None


def get_systemd() -> Systemd:
    """Return the process-wide :class:`Systemd`, creating it on first use."""
    global _SYSTEMD
    if _SYSTEMD is None:
        _SYSTEMD = Systemd()
    return _SYSTEMD
