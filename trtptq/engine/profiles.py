"""Optimization profiles: the user's, checked against the network and completed, and the calibration engines'."""

from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np

from trtptq.core.errors import TrtptqError
from trtptq.core.shapes import Profile
from trtptq.data import InputSpec

logger = logging.getLogger(__name__)


def profiles_used(network, given_profiles: Sequence[Profile]) -> list[Profile]:
    """The user's profiles, checked against the network; dynamic inputs left out get 1 in every dynamic dim.

    That fixes them at one shape (batch 1), which the user rarely wants: a warning says so and how to choose.
    """
    inputs = {network.get_input(i).name: tuple(network.get_input(i).shape) for i in range(network.num_inputs)}
    dynamic = {n: s for n, s in inputs.items() if any(d < 0 for d in s)}
    profiles = []
    for given in given_profiles or ([{}] if dynamic else []):
        unknown = set(given) - set(inputs)
        if unknown:
            raise TrtptqError(f"--shapes names {', '.join(sorted(unknown))}, but the network's inputs are "
                              f"{', '.join(inputs)}.")
        profile = dict(given)
        for name, dims in dynamic.items():
            if name not in profile:
                one = tuple(1 if d < 0 else d for d in dims)
                profile[name] = (one, one, one)
                example = "/".join("x".join(str(d if d >= 0 else (n if k == 0 else 128)) for k, d in enumerate(dims))
                                   for n in (1, 8, 32))
                logger.warning(
                    "input %s has dynamic dimensions (%s) and no --shapes entry: the engine's profile is min = opt = max = "
                    "%s, so it runs at that shape only. Pass the shapes it will run at as --shapes %s:MIN/OPT/MAX, "
                    "e.g. --shapes %s:%s.",
                    name, "x".join(map(str, dims)), "x".join(map(str, one)), name, name, example)
        for name, shapes in profile.items():
            for shape in shapes:
                if len(shape) != len(inputs[name]) or any(d >= 0 and d != s for d, s in zip(inputs[name], shape)):
                    raise TrtptqError(f"--shapes {name}: {'x'.join(map(str, shape))} does not fit the input's "
                                      f"shape {inputs[name]} (-1 = dynamic).")
        profiles.append(profile)
    return profiles


def add_profiles(builder, config, profiles: Sequence[Profile]) -> None:
    for profile in profiles:
        p = builder.create_optimization_profile()
        for name, (lo, opt, hi) in profile.items():
            p.set_shape(name, lo, opt, hi)
        config.add_optimization_profile(p)


def calibration_profile(specs: Sequence[InputSpec], feed: dict[str, np.ndarray]) -> Profile:
    """An optimization profile for the dynamic inputs: batch 1 up to `feed`'s batch, other dims as in `feed`."""
    profile = {}
    for spec in specs:
        static = [isinstance(d, int) and d > 0 for d in spec.shape]
        if all(static):
            continue
        shape = tuple(feed[spec.name].shape)
        low = shape if static[0] else (1, *shape[1:])
        profile[spec.name] = (low, shape, shape)
    return profile
