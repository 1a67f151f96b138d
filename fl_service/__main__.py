"""python -m fl_service {global_aggregator|local_aggregator|client} --config FILE"""

from __future__ import annotations

import argparse
import faulthandler
import logging
import logging.handlers
import os
import signal
import sys
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING

from fl_service.config import GA, LA, ROLES, ConfigError, help_text, load_config

if TYPE_CHECKING:
    from fl_service.roles.service import Service

EXIT_CONFIG = 2
LOG_MAX_BYTES = 10 * 1024 * 1024  # --log-file rotates at this size ...
LOG_BACKUPS = 3  # ... keeping this many old files (<log>.1 is the newest)
LOG_FORMAT = "%(asctime)s %(name)s %(levelname)s %(message)s"


class RotatingOutput(logging.handlers.RotatingFileHandler):
    """The service's log file, rotated by size; the process's stdout and stderr (prints,
    warnings, faulthandler dumps, a crash's traceback) follow it into each new file, so one
    file and its backups hold everything and nothing grows without bound."""

    def __init__(self, path: str) -> None:
        super().__init__(path, maxBytes=LOG_MAX_BYTES, backupCount=LOG_BACKUPS)
        self._redirect()

    def doRollover(self) -> None:  # noqa: N802 (logging's naming)
        super().doRollover()
        self._redirect()

    def _redirect(self) -> None:
        sys.stdout.flush()
        sys.stderr.flush()
        for fd in (1, 2):
            os.dup2(self.stream.fileno(), fd)


def _parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m fl_service",
        description="Hierarchical FL services: global aggregator, local aggregator, client.",
        epilog=help_text(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("role", choices=ROLES)
    parser.add_argument("--config", help="YAML config file (keys below)")
    parser.add_argument("--log-level", default="INFO")
    parser.add_argument("--log-file", help=f"log here, rotated at {LOG_MAX_BYTES >> 20} MiB with "
                        f"{LOG_BACKUPS} old files, stdout and stderr too (default: stderr)")
    return parser.parse_args(argv)


def _build(role: str, cfg: dict) -> Service:
    # Imported here so a config error is reported before torch and Flower load.
    if role == GA:
        from fl_service.roles.global_aggregator import GlobalAggregator

        return GlobalAggregator(cfg)
    if role == LA:
        from fl_service.roles.local_aggregator import LocalAggregator

        return LocalAggregator(cfg)
    if cfg["virtual_clients"]:
        from fl_service.roles.pool import Pool

        return Pool(cfg)
    from fl_service.roles.client import Client

    return Client(cfg)


def main(argv: list[str] | None = None) -> int:
    args = _parse_args(sys.argv[1:] if argv is None else argv)
    # What the service writes (state, checkpoints, results, its log) is for its own user only:
    # folders 0700, files 0600.
    os.umask(0o077)
    handlers = [RotatingOutput(args.log_file)] if args.log_file else None
    logging.basicConfig(level=args.log_level.upper(), format=LOG_FORMAT, handlers=handlers)
    try:
        cfg = load_config(args.role, args.config)
        service = _build(args.role, cfg)
    except ConfigError as exc:
        print(f"fl_service: config error: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    except ValueError as exc:  # the task loader and device picker name the key first
        print(f"fl_service: config error: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    # An explicit handler, because as PID 1 in a container the default SIGTERM action is ignored.
    # Exiting at once is safe: checkpoints and results are only ever replaced atomically.
    signal.signal(signal.SIGTERM, lambda *_: os._exit(0))
    faulthandler.register(signal.SIGUSR1)  # `kill -USR1 <pid>` dumps every thread's stack
    reload = _reloader(service)
    if reload is not None:
        # SIGHUP re-reads the config; the reload runs off the signal handler's stack.
        signal.signal(signal.SIGHUP, lambda *_: threading.Thread(
            target=_reload, args=(reload,), daemon=True).start())
    try:
        service.start_http()
    except OSError as exc:
        print(f"fl_service: cannot serve on {cfg['bind_host']}:{cfg['port']}: {exc}",
              file=sys.stderr)
        return 1
    service.run()  # serves until SIGTERM: roles stay up in state `finished`, like a pod
    return 0


def _reloader(service: Service) -> Callable[[], object] | None:
    """What SIGHUP runs: a pool's reload (every virtual client), a child's parent reload, or
    nothing (the GA)."""
    if hasattr(service, "reload"):
        return service.reload
    if hasattr(service, "parent"):
        return service.parent.reload
    return None


def _reload(reload: Callable[[], object]) -> None:
    try:
        reload()
    except (ConfigError, ValueError) as exc:
        logging.getLogger("fl_service").error("reload failed: %s", exc)


if __name__ == "__main__":
    sys.exit(main())
