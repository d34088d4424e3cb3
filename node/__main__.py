"""``qvdc-node``: configuration -> NodeSettings -> ``uvloop.run(app.main(settings))``.

Only reading the configuration lives here (``node.config_file``: a ``--config`` TOML
file, ``QVDC_NODE_*`` variables and flags); every default and range is owned by
:class:`node.settings.NodeSettings`, so the CLI and programmatic users get the same
validation. A bad setting exits with status 2 and one line naming it.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

import uvloop

from node import app, config_file
from qvdc.kits import eventlog


def main(argv: Sequence[str] | None = None) -> int:
    """Console-script entry point; returns the exit status."""
    try:
        config = config_file.load(argv)
    except config_file.ConfigError as exc:
        print(f"qvdc-node: {exc}", file=sys.stderr)
        return 2
    eventlog.configure(config.log)
    return uvloop.run(app.main(config.settings))


if __name__ == "__main__":
    sys.exit(main())
