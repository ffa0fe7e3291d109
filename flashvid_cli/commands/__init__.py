"""One module per ``vidq`` command, each registering itself on ``shell.app``; shared ``options`` and ``shell``."""
