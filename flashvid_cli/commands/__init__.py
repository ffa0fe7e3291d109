"""One module per ``vidq`` command that outgrew ``cli.py``; each registers itself on ``cli.app``."""
