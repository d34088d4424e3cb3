"""``qvdc``: run one QvDC controller replica."""

from __future__ import annotations

import sys
from collections.abc import Sequence

import uvloop

from qvdc import app, config_file, runtime
from qvdc.kits import eventlog


def main(
    argv: Sequence[str] | None = None, *, factory: app.ControllerFactory = app.Controller
) -> None:
    """Read the configuration (``--config`` file, ``QVDC_*`` variables, flags: see
    ``qvdc.config_file``), run one replica built by ``factory`` and exit with its code
    (``qvdc.app``: 0 stopped, 1 failed, 3 forced; 2 here for an invalid configuration,
    with one line naming the setting and where it came from, no traceback)."""
    try:
        config = config_file.load(argv)
    except config_file.ConfigError as exc:
        print(f"qvdc: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    eventlog.configure(config.log)
    runtime.tune_process()
    raise SystemExit(uvloop.run(app.main(config.settings, factory=factory)))


if __name__ == "__main__":
    main()
