"""Video decoding: sampled RGB frames that really exist, with true timestamps, in a worker that can be killed.

    decode(path, frames=N | fps=F) -> DecodedVideo(frames uint8 [T, H, W, 3], indices, timestamps, ...)

Decoding knows nothing of models: this package imports only itself and the error types. Its modules, from the
entry down:

    api        `decode`, `DecodeWorker` and its pool: a decode in this process or in a long-lived worker
    worker     the worker process: serves requests from a pipe, exits when its parent is gone
    job        one decode: map the frames, choose the frames and the decoder, decode, describe
    request    `Request`, `DecodedVideo`, the memory check, `DECODERS` and `SEEKS`
    sinks      where frames go as they arrive: `ArraySink`, `ResizingSink` (to the model's input size)
    sampling   which frames: the uniform and the frames-per-second rules
    exact      the exact decode, each group of pictures once (frames equal to a plain sequential decode)
    keyframe   `seek="keyframe"`: samples snapped to the nearest keyframe, only keyframe packets decoded
    decord     decord's get_batch, only where the frame map shows it can be trusted, and checked
    tail       the frame map's end verified by decoding the last group of pictures
    reader     one open file: a decode pass that starts exactly at any keyframe
    frame_map  `FrameMap` and `DecodeCounter`; the map built from the packets
    rgb        frames to RGB in display orientation
    container  opening a file, choosing the stream, a one-line reason for a file that is not a video
"""

from .api import DecodeWorker, decode, plan, run_in_worker
from .container import open_video
from .request import DECODERS, SEEKS, DecodedVideo, Request, VideoTooLarge
from .sampling import fps_indices, uniform_indices
from .sinks import FrameResize, ResizingSink

__all__ = ["DECODERS", "SEEKS", "DecodeWorker", "DecodedVideo", "FrameResize", "Request", "ResizingSink",
           "VideoTooLarge", "decode", "fps_indices", "open_video", "plan", "run_in_worker", "uniform_indices"]
