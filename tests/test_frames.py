"""Pictures of gymnax episodes: frame shapes, MinAtar cells drawn where the observation has objects, the cart drawn
where it is, and GIF and PNG files written once, never over an existing file."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

from purempo import envs, frames


def _states(name, actions, seed=0):
    """The states of one episode of `name` from `reset(PRNGKey(seed))` under `actions`, first state included."""
    env = envs.make(name)
    state, step, states = env.reset(jax.random.PRNGKey(seed)), jax.jit(env.step), []
    for action in actions:
        states.append(state)
        state = step(state, jnp.int32(action))
    return env, states + [state]


def _objects(image):
    return (image != frames.BACKGROUND).any(-1)


def test_frames_are_rgb_images():
    for name, shape in (("CartPole-v1", None), ("Acrobot-v1", None), ("MountainCar-v0", None),
                        ("Breakout-MinAtar", (10 * frames.SCALE, 10 * frames.SCALE, 3))):
        _, (state,) = _states(name, [])
        image = frames.frame(name, state)
        assert image.dtype == np.uint8 and image.ndim == 3 and image.shape[-1] == 3 and _objects(image).any()
        assert shape is None or image.shape == shape
    with pytest.raises(ValueError, match="no picture"):
        frames.frame("ant", state)


@pytest.mark.parametrize("name", ["Breakout-MinAtar", "Asterix-MinAtar"])
def test_minatar_cells_are_coloured_exactly_where_the_observation_has_objects(name):
    """Each 16×16 block is the background where gymnax's observation (its own `get_obs`) has no channel set, and
    otherwise the colour of a set channel; channels have distinct colours, none the background's."""
    env, states = _states(name, [t % 3 for t in range(12)])
    colours = {tuple(c) for c in frames.PALETTE}
    assert len(colours) == len(frames.PALETTE) and tuple(frames.BACKGROUND) not in colours
    for state in states[::4]:
        grid = np.asarray(env.gymnax_env.get_obs(state.env_state)) > 0  # [10, 10, C]
        image = frames.frame(name, state)
        scaled = np.kron(grid.any(-1), np.ones((frames.SCALE, frames.SCALE), bool))
        np.testing.assert_array_equal(_objects(image), scaled)
        assert grid.sum() > 0
        for row, col in zip(*np.nonzero(grid.any(-1))):
            block = image[row * frames.SCALE:(row + 1) * frames.SCALE, col * frames.SCALE:(col + 1) * frames.SCALE]
            assert (block == block[0, 0]).all()
            channel = [tuple(frames.PALETTE[c]) for c in np.nonzero(grid[row, col])[0]]
            assert tuple(block[0, 0]) in channel


def test_cartpole_frames_differ_where_the_cart_is():
    """Two upright poles on carts at x = -1 and x = 1: the pictures differ only in the columns of the carts and
    poles, and the cart at x = 1 is to the right."""
    _, (state,) = _states("CartPole-v1", [])
    pictures = [frames.frame("CartPole-v1", state.replace(env_state=state.env_state.replace(x=jnp.float32(x),
                                                                                           theta=jnp.float32(0.0))))
                for x in (-1.0, 1.0)]
    changed = (pictures[0] != pictures[1]).any(-1)
    assert changed.any()
    # the cart and pole: neither background nor the track's colour, which stays where it is
    ink = [_objects(p) & ~(p == frames._GROUND).all(-1) for p in pictures]
    drawn_columns = np.nonzero((ink[0] | ink[1]).any(0))[0]
    assert set(np.nonzero(changed.any(0))[0]) <= set(drawn_columns)
    centres = [np.nonzero(mask.any(0))[0].mean() for mask in ink]
    assert centres[1] - centres[0] > pictures[0].shape[1] / 4


def _distinct(count, shape=(20, 30, 3)):
    return [np.random.default_rng(i).integers(0, 256, shape, dtype=np.uint8) for i in range(count)]


def test_save_gif_writes_every_frame_looping_and_refuses_to_overwrite(tmp_path):
    pictures = _distinct(5)
    path = tmp_path / "episode.gif"
    frames.save_gif(pictures, path, fps=10)
    with Image.open(path) as gif:
        assert gif.format == "GIF" and gif.n_frames == 5 and gif.info["loop"] == 0
        assert gif.info["duration"] == 100 and gif.size == (30, 20)
    before = path.read_bytes()
    with pytest.raises(FileExistsError, match="exists"):
        frames.save_gif(pictures[:2], path)
    assert path.read_bytes() == before


def test_save_strip_tiles_every_nth_frame_and_refuses_to_overwrite(tmp_path):
    pictures = _distinct(12)
    path = tmp_path / "strip.png"
    frames.save_strip(pictures, path, every=5, columns=2)
    with Image.open(path) as png:
        assert png.format == "PNG"
        sheet = np.asarray(png.convert("RGB"))

    def found(picture):
        height, width = picture.shape[:2]
        return any(np.array_equal(sheet[i:i + height, j:j + width], picture)
                   for i in range(sheet.shape[0] - height + 1) for j in range(sheet.shape[1] - width + 1))

    assert all(found(pictures[step]) for step in (0, 5, 10)) and not found(pictures[1])
    assert 2 * 30 <= sheet.shape[1] < 3 * 30 and 2 * 20 <= sheet.shape[0] < 3 * 20 + 60  # 3 tiles: 2 columns, 2 rows
    before = path.read_bytes()
    with pytest.raises(FileExistsError, match="exists"):
        frames.save_strip(pictures, path)
    assert path.read_bytes() == before
