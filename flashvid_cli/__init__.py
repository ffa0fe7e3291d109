"""vidq: ask questions about videos with a vision-language model, fast.

    from flashvid_cli import ask
    result = ask("clip.mp4", "what happens last?", method="flashvid", keep=0.1)
"""

from .api import AskConfig, AskResult, Report, VideoQA, ask, load_and_decode

__version__ = "0.1.0"
__all__ = ["AskConfig", "AskResult", "Report", "VideoQA", "ask", "load_and_decode"]
