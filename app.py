"""Serve Z-Image-Turbo: the Gradio UI and the HTTP API on one port.

    python app.py [--model ...] [--port 7860] [--cache-dir DIR] [--redis-url URL] ...

Run `python app.py --help` for the settings; each flag is also an environment
variable `ZIMAGE_<NAME>` (flags win). The work is in runtime/ (settings, wiring,
serving); see docs/ARCHITECTURE.md.
"""

from __future__ import annotations

import sys

from runtime.serving import main

if __name__ == "__main__":
    sys.exit(main())
