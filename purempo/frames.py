"""Pictures of gymnax episodes for a person to watch: an RGB frame per state, saved as a GIF or a PNG strip.

`frame(name, state)` draws one unbatched `envs.GymnaxState` as uint8 `[H, W, 3]` with plain numpy (a state
gives the same picture each time): a MinAtar game from its observation channels (one colour per channel on a dark
background, each cell `SCALE` pixels square), CartPole, Acrobot and MountainCar from gymnax's own state (cart and
pole on a track; two links and the height to reach; the car on the hill y = sin(3x) and the flag).
"""

from __future__ import annotations

import functools
import os
from typing import BinaryIO, Sequence

import numpy as np

from purempo import envs

SCALE = 16  # pixels per MinAtar cell
BACKGROUND = np.array([16, 16, 24], np.uint8)
# A distinct colour per MinAtar channel (Seaquest has the most, 10); a cell shows its last non-zero channel.
PALETTE = np.array([[230, 25, 75], [60, 180, 75], [255, 225, 25], [0, 130, 200], [245, 130, 48], [145, 30, 180],
                    [70, 240, 240], [240, 50, 230], [210, 245, 60], [250, 190, 212]], np.uint8)
_INK = np.array([235, 235, 235], np.uint8)  # cart, first link, flag
_ACCENT = np.array([230, 160, 60], np.uint8)  # pole, second link, car
_GROUND = np.array([90, 110, 90], np.uint8)  # track, goal height, hill


@functools.lru_cache(maxsize=None)
def _observation_shape(name: str):
    """MinAtar env `name`'s observation shape `(10, 10, C)`, as gymnax gives it."""
    return envs.GymnaxEnv(name).observation_shape


def frame(name: str, state) -> np.ndarray:
    """uint8 `[H, W, 3]` picture of one (unbatched) `GymnaxEnv` state of env `name`."""
    if name.endswith("-MinAtar") and name in envs.gymnax_names():
        return minatar(np.asarray(state.obs).reshape(_observation_shape(name)))
    if name not in _CLASSIC:
        raise ValueError(f"no picture for env {name!r}; frames draws the gymnax envs {', '.join(envs.gymnax_names())}")
    draw, fields = _CLASSIC[name]
    return draw(*(float(np.asarray(getattr(state.env_state, field))) for field in fields))


def minatar(obs: np.ndarray) -> np.ndarray:
    """uint8 `[10·SCALE, 10·SCALE, 3]` of a MinAtar observation `[10, 10, C]`: background where every channel is 0,
    else the `PALETTE` colour of the cell's last non-zero channel."""
    active = obs > 0
    last = obs.shape[-1] - 1 - np.argmax(active[..., ::-1], axis=-1)
    cells = np.where(active.any(-1)[..., None], PALETTE[last % len(PALETTE)], BACKGROUND)
    return np.repeat(np.repeat(cells, SCALE, axis=0), SCALE, axis=1).astype(np.uint8)


class _Canvas:
    """An image `[H, W, 3]` over the world box [x0, x1] × [y0, y1] (y up) that shapes are painted on in world units."""

    def __init__(self, height: int, width: int, x0: float, x1: float, y0: float, y1: float):
        self.image = np.empty((height, width, 3), np.uint8)
        self.image[:] = BACKGROUND
        cols, rows = np.arange(width) + 0.5, np.arange(height) + 0.5
        self.x = x0 + cols[None, :] / width * (x1 - x0)  # world coordinates of each pixel centre, [1, W] and [H, 1]
        self.y = y1 - rows[:, None] / height * (y1 - y0)

    def paint(self, mask: np.ndarray, colour) -> None:
        self.image[np.broadcast_to(mask, self.image.shape[:2])] = colour

    def rectangle(self, cx: float, cy: float, half_w: float, half_h: float, colour) -> None:
        self.paint((np.abs(self.x - cx) <= half_w) & (np.abs(self.y - cy) <= half_h), colour)

    def segment(self, a, b, width: float, colour) -> None:
        """The pixels within `width / 2` of the segment from `a` to `b` (world points (x, y))."""
        (ax, ay), (bx, by) = a, b
        dx, dy = bx - ax, by - ay
        t = np.clip(((self.x - ax) * dx + (self.y - ay) * dy) / max(dx * dx + dy * dy, 1e-12), 0.0, 1.0)
        self.paint(np.hypot(self.x - ax - t * dx, self.y - ay - t * dy) <= width / 2, colour)

    def disc(self, cx: float, cy: float, radius: float, colour) -> None:
        self.paint(np.hypot(self.x - cx, self.y - cy) <= radius, colour)


def _cartpole(x: float, theta: float) -> np.ndarray:
    """The track [-2.4, 2.4] (its ends marked), the cart at `x` and the 1 m pole tilted `theta` from upright."""
    canvas = _Canvas(200, 360, -2.6, 2.6, -0.4, 1.4)
    canvas.rectangle(0.0, -0.02, 2.6, 0.01, _GROUND)
    for end in (-2.4, 2.4):
        canvas.rectangle(end, 0.0, 0.015, 0.1, _GROUND)
    canvas.rectangle(x, 0.1, 0.25, 0.1, _INK)
    canvas.segment((x, 0.2), (x + np.sin(theta), 0.2 + np.cos(theta)), 0.06, _ACCENT)
    return canvas.image


def _acrobot(angle1: float, angle2: float) -> np.ndarray:
    """Two 1 m links hanging from the centre at `angle1` and `angle1 + angle2` from straight down, and the line
    (height 1 above the pivot) the tip must pass to end the episode."""
    canvas = _Canvas(240, 240, -2.2, 2.2, -2.2, 2.2)
    canvas.rectangle(0.0, 1.0, 2.2, 0.01, _GROUND)
    elbow = (np.sin(angle1), -np.cos(angle1))
    tip = (elbow[0] + np.sin(angle1 + angle2), elbow[1] - np.cos(angle1 + angle2))
    canvas.segment((0.0, 0.0), elbow, 0.1, _INK)
    canvas.segment(elbow, tip, 0.1, _ACCENT)
    canvas.disc(0.0, 0.0, 0.07, PALETTE[3])
    canvas.disc(*elbow, 0.07, PALETTE[3])
    return canvas.image


def _hill(x):
    """MountainCar's height sin(3x), drawn ×0.45 as Gym does, so that the picture is wider than tall."""
    return 0.45 * np.sin(3 * x)


def _mountain_car(position: float) -> np.ndarray:
    """The hill y = sin(3x) over [-1.2, 0.6], filled below, the flag at the goal 0.5, and the car at `position`."""
    canvas = _Canvas(200, 300, -1.2, 0.6, -0.55, 0.65)
    canvas.paint(canvas.y <= _hill(canvas.x), _GROUND)
    canvas.segment((0.5, _hill(0.5)), (0.5, _hill(0.5) + 0.15), 0.012, _INK)
    canvas.disc(position, _hill(position) + 0.04, 0.04, _ACCENT)
    return canvas.image


# Each classic control env's drawing and the fields of gymnax's state it takes.
_CLASSIC = {"CartPole-v1": (_cartpole, ("x", "theta")), "Acrobot-v1": (_acrobot, ("joint_angle1", "joint_angle2")),
            "MountainCar-v0": (_mountain_car, ("position",))}


def _exclusive(path) -> BinaryIO:
    """`path` opened for writing, new: a one-line FileExistsError if it exists (callers pick fresh names)."""
    if os.path.exists(path):
        raise FileExistsError(f"{os.fspath(path)} exists; pictures never overwrite a file, pick a fresh name")
    return open(path, "xb")


def save_gif(frames: Sequence[np.ndarray], path, fps: float = 15) -> None:
    """An animated GIF at `path` of `frames` (uint8 `[H, W, 3]` each), `fps` frames a second, looping forever.
    GIF merges consecutive identical frames into one shown longer; the timing is unchanged."""
    from PIL import Image

    images = [Image.fromarray(np.asarray(f, np.uint8)) for f in frames]
    with _exclusive(path) as out:
        images[0].save(out, format="GIF", save_all=True, append_images=images[1:], duration=round(1000 / fps),
                       loop=0)


def save_strip(frames: Sequence[np.ndarray], path, every: int = 10, columns: int = 8) -> None:
    """A PNG at `path`: every `every`-th of `frames` (from the first) in rows of `columns`, each under its step."""
    from PIL import Image, ImageDraw

    picked = list(range(0, len(frames), every))
    height, width = np.asarray(frames[0]).shape[:2]
    label, gap = 14, 4
    rows, cols = -(-len(picked) // columns), min(columns, len(picked))
    sheet = Image.new("RGB", (cols * (width + gap) + gap, rows * (height + label + gap) + gap), (0, 0, 0))
    draw = ImageDraw.Draw(sheet)
    for n, step in enumerate(picked):
        left, top = gap + (n % columns) * (width + gap), gap + (n // columns) * (height + label + gap)
        draw.text((left, top), f"step {step}", fill=(220, 220, 220))
        sheet.paste(Image.fromarray(np.asarray(frames[step], np.uint8)), (left, top + label))
    with _exclusive(path) as out:
        sheet.save(out, format="PNG")
