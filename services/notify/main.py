"""Runs the notify service: `python -m hms_services.notify.main --help`.

Notifications are kept in `<data-dir>/notify.sqlite3`; one is recorded for every case event
notify subscribes to (hms_services.notify.events).
"""

from __future__ import annotations

from pathlib import Path

from hms_services.notify.events import NOTIFIED_EVENTS, EventNotifier
from hms_services.notify.service import NotifyService
from hms_services.notify.store import NotificationStore
from mesh import Runtime, run_service


def _servicers(runtime: Runtime) -> list[object]:
    data_dir = Path(runtime.args.data_dir)
    data_dir.mkdir(parents=True, exist_ok=True)
    store = NotificationStore(data_dir / "notify.sqlite3")
    runtime.on_stop(store.close)
    notifier = EventNotifier(store)
    for event_type in NOTIFIED_EVENTS:
        runtime.subscribe(event_type, notifier)
    return [NotifyService(store)]


def main() -> None:
    run_service("notify", _servicers)


if __name__ == "__main__":
    main()
