"""Warm up before a deploy, or fill the cache from a prompt list, with every setting of app.py.

    python prewarm.py --check          load, warm, make one image; exit 0, or 1 with the reason
    python prewarm.py --prompts FILE   fill the cache (disk, and Redis when set) from a prompt
                                       list; exit 1 if any line failed

A prompt file has one prompt a line, optionally `prompt|seed` or `prompt|seed|WxH`
(an empty seed keeps the default); blank lines and lines starting with # are
skipped. The serving process warms itself up (pipeline/warmup.py): warm-up must
happen in the process that serves. The work is in runtime/prewarming.py.
"""

from __future__ import annotations

import sys

from runtime.prewarming import main

if __name__ == "__main__":
    sys.exit(main())
